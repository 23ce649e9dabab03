"""Tensor parallelism on CPU (gloo): the tokens at TP = 2 and 4 are those of TP = 1 (greedy and seeded sampling,
with and without n-gram speculation, under continuous batching, chunked prefill and preemption), for Llama
(KV heads split, and replicated at TP = 4), Qwen2 (q/k/v bias, tied embeddings) and Mistral (sliding window);
a dead worker ends the engine with an error naming it within seconds; no worker outlives its LLM."""

from __future__ import annotations

import gc
import importlib.util
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from tokenleap import LLM, SamplingParams
from tokenleap.distributed.launcher import TensorParallelWorkerError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
LENGTHS = [3, 9, 20, 41, 70, 12, 33, 5]
MAX_TOKENS = [24, 40, 16, 32, 24, 40, 12, 30]
# 16 blocks of 16 tokens for 8 requests needing ~40 blocks in all: preemption; a 48-token budget: chunked prefill
ENGINE = dict(num_gpu_blocks_override=16, block_size=16, max_num_batched_tokens=48, disable_log_stats=True)


def _prompts() -> list[dict]:
    rng = random.Random(0)
    out = []
    for n in LENGTHS:
        motif = [rng.randrange(3, 300) for _ in range(5)]  # repeated: n-gram lookup finds drafts
        out.append({"prompt_token_ids": [rng.randrange(3, 300) if i % 3 else motif[i % 5] for i in range(n)]})
    return out


PROMPTS = _prompts()
# even requests greedy, odd ones seeded sampling; two return logprobs
PARAMS = [
    SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) if i % 2 == 0
    else SamplingParams(temperature=0.8, top_p=0.9, seed=100 + i, max_tokens=m, ignore_eos=True)
    for i, m in enumerate(MAX_TOKENS)
]
PARAMS[2] = PARAMS[2].model_copy(update={"logprobs": 2})
PARAMS[3] = PARAMS[3].model_copy(update={"logprobs": 2})


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process from /proc, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def _is_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker: one per interpreter once anything is spawned (ProcessAsyncLLM tests in
    the same session), ending with the interpreter; not a process an engine leaves behind."""
    try:
        return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def children() -> list[int]:
    """Live (not zombie) descendants of this process, multiprocessing's resource tracker aside."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[0] != "Z" \
                and not _is_resource_tracker(int(entry.name)):
            parent_of[int(entry.name)] = st[1]
    found, frontier = [], {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier}
        found += sorted(frontier)
    return found


def run(folder, tp: int, spec: dict | None) -> dict:
    """Generate PROMPTS at this TP size, then delete the LLM; what came out, and the processes left."""
    llm = LLM(model=str(folder), tensor_parallel_size=tp, speculative_config=spec, **ENGINE)
    workers = [p.pid for p in llm.engine.tensor_parallel.procs] if tp > 1 else []
    outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    result = {
        "tokens": [o.outputs[0].token_ids for o in outs],
        "logprobs": [o.outputs[0].logprobs for o in outs],
        "preemptions": llm.engine.counters.num_preemptions,
        "drafts": llm.engine.counters.spec.num_draft_tokens,
        "accepted": llm.engine.counters.spec.num_accepted_tokens,
        "workers": workers,
    }
    del llm, outs
    gc.collect()
    result["left"] = children()
    return result


@pytest.fixture(scope="module")
def runs(tiny_checkpoint):
    """run() per (model, tp, spec), each once: the LLM is gone before the next one starts."""
    folders = {
        "llama": tiny_checkpoint("llama"),  # 4 heads, 2 KV heads: TP 2 splits them, TP 4 replicates them
        "qwen2": tiny_checkpoint("qwen2"),  # q/k/v bias, tied embeddings
        "mistral": tiny_checkpoint("mistral", sliding_window=24),
    }
    cache: dict = {}

    def get(model: str, tp: int, spec: dict | None) -> dict:
        key = (model, tp, spec is not None)
        if key not in cache:
            cache[key] = run(folders[model], tp, spec)
        return cache[key]

    return get


def assert_same(got: dict, want: dict) -> None:
    assert got["tokens"] == want["tokens"]
    for lps, ref in zip(got["logprobs"], want["logprobs"], strict=True):
        if ref is None:
            assert lps is None
            continue
        for a, b in zip(lps, ref, strict=True):
            assert a.keys() == b.keys()
            for t in a:
                assert a[t].rank == b[t].rank
                assert a[t].logprob == pytest.approx(b[t].logprob, abs=1e-4)


@pytest.mark.parametrize("spec", [None, NGRAM], ids=["plain", "ngram"])
@pytest.mark.parametrize("tp", [2, 4])
def test_llama_tp_equals_tp1(runs, tp, spec):
    want, got = runs("llama", 1, spec), runs("llama", tp, spec)
    assert got["preemptions"] > 0 and want["preemptions"] > 0
    if spec is not None:  # verify steps of 1 + k tokens went through the shards, and drafts were accepted
        assert got["drafts"] > 0 and got["accepted"] > 0
    assert_same(got, want)
    assert len(got["workers"]) == tp - 1
    assert got["left"] == []  # the workers exited with the LLM


@pytest.mark.parametrize("model, spec", [("qwen2", NGRAM), ("mistral", None)])
def test_other_architectures_tp2_equal_tp1(runs, model, spec):
    got, want = runs(model, 2, spec), runs(model, 1, spec)
    assert got["preemptions"] > 0
    assert_same(got, want)
    assert got["left"] == []


def assert_killed_worker_ends_the_engine(make_llm, prompts: list, max_tokens: int) -> None:
    """SIGKILL the (one) worker of ``make_llm()`` (built here: this holds its only reference) 0.5 s into generating
    ``prompts`` (``max_tokens`` each, far longer than that): the caller gets the error within 5 s, the engine stays
    failed, and deleting the LLM leaves no process."""
    llm = make_llm()
    (worker,) = llm.engine.tensor_parallel.procs
    killed_at: list[float] = []

    def kill() -> None:
        time.sleep(0.5)
        killed_at.append(time.monotonic())
        os.kill(worker.pid, signal.SIGKILL)

    threading.Thread(target=kill).start()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    with pytest.raises(TensorParallelWorkerError, match=rf"worker rank 1 \(pid {worker.pid}\) exited with code -9"):
        llm.generate(prompts, params, use_tqdm=False)
    assert time.monotonic() - killed_at[0] < 5.0
    with pytest.raises(TensorParallelWorkerError, match="cannot continue"):  # and stays failed
        llm.generate(prompts[:1], params, use_tqdm=False)
    del llm
    gc.collect()
    assert children() == []


def test_killed_worker_raises_within_seconds(tiny_checkpoint):
    folder = str(tiny_checkpoint("llama"))
    assert_killed_worker_ends_the_engine(lambda: LLM(model=folder, tensor_parallel_size=2, **ENGINE),
                                         [{"prompt_token_ids": [5, 6, 7]}], 4000)


def test_worker_that_fails_to_start_fails_the_llm(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("TOKENLEAP_TP_STARTUP_TIMEOUT_S", "not-a-number")  # (read at import: only the worker fails)
    t0 = time.monotonic()
    with pytest.raises(TensorParallelWorkerError, match=r"worker rank 1 \(pid \d+\) exited with code 1"):
        LLM(model=str(tiny_checkpoint("llama")), tensor_parallel_size=2, disable_log_stats=True)
    assert time.monotonic() - t0 < 120  # not the 600 s start-up timeout
    gc.collect()
    assert children() == []


KILLED_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from tokenleap import LLM
    llm = LLM(model=sys.argv[1], tensor_parallel_size=2, disable_log_stats=True, num_gpu_blocks_override=16)
    print(llm.engine.tensor_parallel.procs[0].pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no finalizer runs
""")


def test_no_orphan_worker_after_the_program_is_killed(tiny_checkpoint, tmp_path):
    """(A program that exits normally with its LLM alive stops its workers from the atexit finalizer:
    test_two_process_example_over_env_rendezvous's rank 0 does, and its worker exits with 0.)"""
    script = tmp_path / "tp_killed.py"
    script.write_text(KILLED_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tiny_checkpoint("llama"))], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    worker = int(proc.stdout.split()[-1])
    deadline = time.monotonic() + 10  # the worker's parent-watch thread notices within a second
    while (st := _stat(worker)) is not None and st[0] != "Z":
        assert time.monotonic() < deadline, f"worker {worker} outlived its killed engine"
        time.sleep(0.1)


SMOLLM2_NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
SMOLLM2_ENGINE = dict(num_gpu_blocks_override=14, max_model_len=200, max_num_batched_tokens=48, max_num_seqs=4)


@pytest.mark.slow
def test_smollm2_tp3_equals_tp1(smollm2_llm, smollm2_llm_factory, smollm2_path):
    """SmolLM2-135M-Instruct: 9 heads and 3 KV heads over 3 ranks, greedy and seeded sampling, batched, chunked,
    preempted, with n-gram speculation (its steps without drafts are plain decode steps). One run: each rank
    reads the GGUF (tens of seconds on 2 cores); plain decoding at TP 3 is the same test with spec=None."""
    spec = SMOLLM2_NGRAM
    tok = smollm2_llm.get_tokenizer()
    questions = ["Name a fruit.", "Repeat after me: the cat sat on the mat, the cat sat on the mat.",
                 "Write one sentence about cats.", "List the numbers from 1 to 10."]
    prompts = [{"prompt_token_ids": list(tok.apply_chat_template([{"role": "user", "content": q}],
                                                                 add_generation_prompt=True, tokenize=True,
                                                                 return_dict=False))} for q in questions]
    params = [SamplingParams(temperature=0, max_tokens=32, ignore_eos=True),
              SamplingParams(temperature=0.7, top_p=0.95, seed=11, max_tokens=32, ignore_eos=True)] * 2
    ref = smollm2_llm_factory(speculative_config=spec, **SMOLLM2_ENGINE)
    want = [o.outputs[0].token_ids for o in ref.generate(prompts, params, use_tqdm=False)]
    llm = LLM(model=str(smollm2_path), tensor_parallel_size=3, speculative_config=spec, disable_log_stats=True,
              **SMOLLM2_ENGINE)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert llm.engine.counters.num_preemptions > 0
    assert llm.engine.counters.spec.num_accepted_tokens > 0
    assert got == want
    del llm
    gc.collect()
    assert children() == []


# ---- bad settings fail before any process starts


def test_heads_not_divisible_fails_before_any_process(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"tensor_parallel_size=3 must divide the model's num_attention_heads=4"):
        LLM(model=str(tiny_checkpoint("llama")), tensor_parallel_size=3, disable_log_stats=True)
    assert children() == []


def test_kv_heads_and_mlp_not_divisible_say_which():
    import dataclasses

    from tokenleap.distributed.sharding import check_divisible
    from tokenleap.model.arch import ModelArchConfig

    arch = ModelArchConfig(model_type="llama", vocab_size=320, hidden_size=96, intermediate_size=192,
                           num_hidden_layers=1, num_attention_heads=6, num_key_value_heads=3, head_dim=16,
                           rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=64,
                           tie_word_embeddings=False, attention_bias=False)
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 and the model's num_key_value_heads=3: one must "
                                         r"divide the other"):
        check_divisible(arch, 2)
    check_divisible(arch, 3)  # 2 heads and 1 KV head per rank
    check_divisible(dataclasses.replace(arch, num_key_value_heads=1), 6)  # one KV head, replicated 6 times
    with pytest.raises(ValueError, match=r"tensor_parallel_size=3 must divide the model's intermediate_size=200"):
        check_divisible(dataclasses.replace(arch, intermediate_size=200), 3)


@pytest.mark.parametrize("draft_tp", [2, 3])
def test_draft_tp_must_be_one_or_the_targets(tiny_checkpoint, draft_tp):
    import pydantic

    spec = {**NGRAM, "draft_tensor_parallel_size": draft_tp}
    with pytest.raises(pydantic.ValidationError, match=rf"draft_tensor_parallel_size={draft_tp} must be 1 or the "
                                                       r"target's tensor_parallel_size=4"):
        LLM(model=str(tiny_checkpoint("llama")), tensor_parallel_size=4, speculative_config=spec)
    assert children() == []


def test_more_ranks_than_gpus_fails_before_any_process(tiny_checkpoint, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 needs 2 GPUs; 1 visible"):
        LLM(model=str(tiny_checkpoint("llama")), tensor_parallel_size=2, device="cuda", attention_backend="torch")
    assert children() == []


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "4", "RANK": "0"}, r"tensor_parallel_size=2 but the environment says WORLD_SIZE=4"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, r"this process has RANK=1: only rank 0 creates the LLM"),
])
def test_external_launch_checks_the_rendezvous_variables(tiny_checkpoint, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        LLM(model=str(tiny_checkpoint("llama")), tensor_parallel_size=2, disable_log_stats=True)
    assert children() == []


def test_two_process_example_over_env_rendezvous(tiny_checkpoint):
    """examples/tensor_parallel_two_hosts.py run twice (RANK 0 and 1), as on two hosts: rank 0's tokens are
    those of one process alone. Rank 0 ends with its LLM alive: its atexit finalizer stops the worker, which
    then exits with 0."""
    import socket

    folder = str(tiny_checkpoint("llama"))
    script = Path(__file__).parents[1] / "examples" / "tensor_parallel_two_hosts.py"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def start(rank: int, world: int) -> subprocess.Popen:
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        return subprocess.Popen([sys.executable, str(script), folder], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    ranks = [start(0, 2), start(1, 2)]
    outs = [p.communicate(timeout=300) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], [o[1][-2000:] for o in outs]
    spec = importlib.util.spec_from_file_location("tp_example", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    alone = LLM(model=folder, disable_log_stats=True).generate([example.PROMPT], example.PARAMS, use_tqdm=False)
    assert f"token ids: {alone[0].outputs[0].token_ids}" in outs[0][0].splitlines()


def test_second_tp_engine_in_one_process_fails_before_any_process(tiny_checkpoint, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # as while another TP LLM is alive
    with pytest.raises(RuntimeError, match=r"one tensor-parallel engine per process at a time"):
        LLM(model=str(tiny_checkpoint("llama")), tensor_parallel_size=2, disable_log_stats=True)
    assert children() == []


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_a_rank_reads_only_its_slices_of_safetensors(tiny_checkpoint, model):
    """load_checkpoint(select=...) hands safetensors' lazy slices to shard_weights: the same tensors as slicing
    the whole checkpoint, for every rank of TP 2 and 4 (qwen2: q/k/v biases, tied embeddings)."""
    import torch
    from tokenleap.distributed.sharding import shard_weights
    from tokenleap.model.loader import load_checkpoint

    folder = tiny_checkpoint(model)
    whole = load_checkpoint(folder, with_tokenizer=False)
    for tp in (2, 4):
        for rank in range(tp):
            part = load_checkpoint(folder, with_tokenizer=False,
                                   select=lambda w, arch, r=rank, n=tp: shard_weights(w, arch, r, n)).weights
            want = shard_weights(whole.weights, whole.arch, rank, tp)
            assert part.keys() == want.keys()
            for name, t in want.items():
                assert part[name].dtype == t.dtype and torch.equal(part[name], t), (tp, rank, name)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_each_ranks_query_heads_use_only_its_kv_heads(tp):
    """KV heads split over the ranks (tp <= 2) or replicated (tp > 2): every query head a rank holds reads a KV
    head that rank holds (grouped-query attention: query head h uses KV head h // (heads / kv_heads))."""
    from tokenleap.distributed.sharding import kv_head_range, shard_arch
    from tokenleap.model.arch import ModelArchConfig

    arch = ModelArchConfig(model_type="llama", vocab_size=100, hidden_size=128, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                           rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=64,
                           tie_word_embeddings=True, attention_bias=False)
    shard = shard_arch(arch, tp)
    assert shard.vocab_size * tp >= 100 > (shard.vocab_size - 1) * tp
    held = []
    for rank in range(tp):
        lo, hi = kv_head_range(arch, rank, tp)
        assert hi - lo == shard.num_key_value_heads == max(1, 2 // tp)
        for h in range(rank * shard.num_attention_heads, (rank + 1) * shard.num_attention_heads):
            kv = h // (8 // 2)
            assert lo <= kv < hi
            # the shard's own grouping maps its local query head to the same KV head
            assert lo + (h - rank * shard.num_attention_heads) // (shard.num_attention_heads
                                                                   // shard.num_key_value_heads) == kv
        held += range(lo, hi)
    assert sorted(set(held)) == [0, 1]
