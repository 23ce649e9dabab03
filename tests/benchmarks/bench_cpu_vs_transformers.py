"""CPU tokens/s of tokenleap (plain and with n-gram speculation) against transformers' `generate`, same model
(SmolLM2-135M-Instruct), same chat prompts, batch 1, greedy, 64 new tokens, in one process. Not part of CI's run:

    python -m pytest tests/benchmarks/bench_cpu_vs_transformers.py --benchmark-only -s

tokenleap runs each weight format of BENCH_CPU_FORMATS (default ``float32,bfloat16,int8,int4``): float32 (the
default engine: torch reference ops), bfloat16 (``dtype="bfloat16"``: the CPU fast path), int8 / int4
(``quantization=...``: weight-only packed linears, bfloat16 activations). transformers runs float32, and
bfloat16 too when a format other than float32 is asked for (its default attention, SDPA). Every configuration
answers each prompt in turn before the next prompt (a round: every prompt once; BENCH_CPU_ROUNDS, default 2), so
that a change of load on a busy machine slows all of them alike; the table gives each one's tokens/s per round
and its ratio to transformers float32 and bfloat16 in the same round.

BENCH_CPU_PROMPTS (default 6), BENCH_CPU_TOKENS (default 64) shrink the run; BENCH_CPU_K (default 3) is the n-gram
drafts per step (the packed int8 / int4 kernels take rows in fours: 1 + 3 rows cost about 1.5 one-row steps,
1 + 5 rows three); BENCH_CPU_THREADS (default 2) the intra-op threads of both.
"""

from __future__ import annotations

import os
import time
from functools import partial

import pytest
import torch
from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import code_editing_prompts, summarization_prompts

NEW_TOKENS = int(os.environ.get("BENCH_CPU_TOKENS", "64"))
_N = int(os.environ.get("BENCH_CPU_PROMPTS", "6"))
ROUNDS = int(os.environ.get("BENCH_CPU_ROUNDS", "2"))
THREADS = int(os.environ.get("BENCH_CPU_THREADS", "2"))
FORMATS = os.environ.get("BENCH_CPU_FORMATS", "float32,bfloat16,int8,int4").split(",")
_PROMPTS = code_editing_prompts()[: (_N + 1) // 2] + summarization_prompts()[: _N // 2]
CHATS = [[{"role": "user", "content": p}] for p in _PROMPTS]
NGRAM = {"method": "ngram", "num_speculative_tokens": int(os.environ.get("BENCH_CPU_K", "3")),
         "prompt_lookup_min": 1, "prompt_lookup_max": 3}
# format -> LLM keyword arguments
ENGINE_ARGS = {"float32": {"dtype": "float32"}, "bfloat16": {"dtype": "bfloat16"},
               "int8": {"quantization": "int8"}, "int4": {"quantization": "int4"}}


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(before)


def _engines(path, fmt: str) -> tuple[LLM, LLM]:
    """(plain, n-gram) LLMs of one weight format, the second on the first's weights."""
    from tokenleap.engine import setup

    plain = LLM(model=str(path), device="cpu", max_num_seqs=1, disable_log_stats=True, **ENGINE_ARGS[fmt])
    eng = plain.engine
    loaded = setup.LoadedModel(eng.model, eng.arch, eng.tokenizer, eng.runner.kv_caches[0][0].dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setup, "load_model", lambda *a, **k: loaded)
        spec = LLM(model=str(path), device="cpu", max_num_seqs=1, disable_log_stats=True, speculative_config=NGRAM,
                   **ENGINE_ARGS[fmt])
    return plain, spec


def _hf_models(path, dtypes: list[str]):
    from tokenleap.model.loader import load_checkpoint
    from transformers import LlamaConfig, LlamaForCausalLM

    ckpt = load_checkpoint(str(path), "float32")
    out = {}
    for name in dtypes:
        model = LlamaForCausalLM(LlamaConfig(**ckpt.hf_config))
        model.load_state_dict(ckpt.weights, strict=False)
        out[name] = model.to(getattr(torch, name)).eval()
    return out, ckpt.tokenizer


def _ours(llm: LLM, chat, tokens: int = NEW_TOKENS) -> tuple[int, float]:  # (tokens, seconds) of one answer
    sp = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    t0 = time.perf_counter()
    n = len(llm.chat([chat], sp, use_tqdm=False)[0].outputs[0].token_ids)
    return n, time.perf_counter() - t0


def _transformers(model, tok, chat, tokens: int = NEW_TOKENS) -> tuple[int, float]:
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids["input_ids"], max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return out.shape[1] - ids["input_ids"].shape[1], time.perf_counter() - t0


def test_cpu_vs_transformers(benchmark, smollm2_path, threads):
    runs = {}  # name -> (chat, tokens=NEW_TOKENS) -> (tokens, seconds)
    for fmt in FORMATS:
        plain, spec = _engines(smollm2_path, fmt)
        runs[f"tokenleap {fmt}"] = partial(_ours, plain)
        runs[f"tokenleap {fmt} ngram k={NGRAM['num_speculative_tokens']}"] = partial(_ours, spec)
    hf_dtypes = ["float32"] + (["bfloat16"] if set(FORMATS) - {"float32"} else [])
    hf, tok = _hf_models(smollm2_path, hf_dtypes)
    for name, model in hf.items():
        runs[f"transformers {name}"] = partial(_transformers, model, tok)
    for run in runs.values():  # warm-up: one short answer each
        run(CHATS[0], 8)

    def rounds() -> dict[str, list[float]]:
        """tokens/s per configuration and round; within a round, every configuration answers a prompt before
        the next prompt, so that a change of load hits all of them alike."""
        got: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(ROUNDS):
            tokens, seconds = dict.fromkeys(runs, 0), dict.fromkeys(runs, 0.0)
            for chat in CHATS:
                for name, run in runs.items():
                    n, dt = run(chat)
                    tokens[name] += n
                    seconds[name] += dt
            for name in runs:
                got[name].append(tokens[name] / seconds[name])
        return got

    got = benchmark.pedantic(rounds, rounds=1, iterations=1)
    benchmark.extra_info.update(got)
    bases = {name: label for name, label in (("transformers float32", "tf fp32"), ("transformers bfloat16", "tf bf16"))
             if name in got}
    print(f"\nCPU batch-1 greedy, {len(CHATS)} prompts, {NEW_TOKENS} new tokens, threads={threads}, {ROUNDS} rounds "
          f"(configurations interleaved prompt by prompt); tokens/s per round, and the ratio to transformers in the "
          f"same round:")
    for name, tps in got.items():
        per_round = " / ".join(f"{v:.1f}" for v in tps)
        ratios = "; ".join(f"{' / '.join(f'{v / b:.2f}' for v, b in zip(tps, got[base]))}x {label}"
                           for base, label in bases.items())
        print(f"  {name:32s} {per_round:>14s} tokens/s  ({ratios})")
