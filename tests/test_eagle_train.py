"""``tokenleap-eagle train`` end to end on a tiny target on CPU: data, TTT training, export, load, draft, resume.

The target is a tiny random Llama with its attention output zeroed, so it decodes like a bigram table (its next
token depends on the current one only): a head trained on its answers must then learn to draft them.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from tokenleap import LLM, SamplingParams
from tokenleap_eagle.checkpoint import load_head
from tokenleap_eagle.cli import main

from tests.helpers.tiny_models import make_tiny_checkpoint

ARGS = ["--device", "cpu", "--num-prompts", "24", "--max-tokens", "24", "--max-prompt-tokens", "24",
        "--gen-batch-size", "24", "--draft-vocab-size", "128", "--batch-size", "8", "--lr", "3e-3",
        "--checkpoint-every", "5", "--no-progress"]


def _bigram_target(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = make_tiny_checkpoint(tmp_path, "llama", num_hidden_layers=4, initializer_range=0.3)
    tensors = load_file(str(folder / "model.safetensors"))
    for name in tensors:
        if name.endswith("o_proj.weight"):
            tensors[name] = torch.zeros_like(tensors[name])
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eagle-train")
    target = _bigram_target(tmp)
    out = tmp / "head"
    cpu0, wall0 = time.process_time(), time.perf_counter()
    assert main(["train", "--target", str(target), "--out", str(out), "--epochs", "6", *ARGS]) == 0
    return target, out, time.process_time() - cpu0, time.perf_counter() - wall0


def test_train_writes_a_loadable_eagle3_head_within_a_minute(trained):
    target, out, cpu_s, wall_s = trained
    assert cpu_s < 60, f"training took {cpu_s:.0f} s of CPU ({wall_s:.0f} s wall)"
    head = load_head(out)
    assert (head.cfg.kind, head.cfg.layout, head.cfg.draft_vocab_size) == ("eagle3", "eagle3", 128)
    assert head.cfg.aux_layer_ids == (2, 2, 1)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["torch_dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_slice("fc.weight").get_dtype() == "BF16"
        assert f.get_slice("d2t").get_dtype() == "I64" and f.get_slice("t2d").get_dtype() == "BOOL"


def test_trained_head_drafts_losslessly_and_beats_a_random_head(trained, tmp_path):
    from tests.helpers.eagle_heads import write_eagle3_head
    from tests.helpers.tiny_models import TINY_VOCAB

    target, out, _, _ = trained
    prompts = [{"prompt_token_ids": [1, 20 + i, 33, 7 + 2 * i]} for i in range(8)]
    params = SamplingParams(max_tokens=24, temperature=0.0)
    plain = [o.outputs[0].token_ids for o in LLM(model=str(target)).generate(prompts, params, use_tqdm=False)]
    rates = {}
    random_head = write_eagle3_head(tmp_path / "random", 64, TINY_VOCAB, 128, seed=9)
    for name, head in (("trained", out), ("random", random_head)):
        llm = LLM(model=str(target), speculative_config={"method": "eagle3", "model": str(head),
                                                         "num_speculative_tokens": 3})
        spec = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        assert spec == plain, name
        counters = llm.engine.counters.spec
        rates[name] = counters.num_accepted_tokens / counters.num_draft_tokens
    # a few CPU steps teach the first draft position (measured 0.22 vs 0.0): training must have helped
    assert rates["trained"] > rates["random"] + 0.1, rates


def test_resume_continues_from_the_checkpoint(trained, tmp_path):
    import shutil

    target, out, _, _ = trained
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    seq_mtime = (copy / "sequences.json").stat().st_mtime_ns
    assert torch.load(copy / "checkpoint.pt", weights_only=True)["step"] == 6 * 3  # 24 sequences / 8 x 6 epochs
    assert main(["train", "--target", str(target), "--out", str(copy), "--epochs", "7", "--resume", *ARGS]) == 0
    assert torch.load(copy / "checkpoint.pt", weights_only=True)["step"] == 7 * 3
    assert (copy / "sequences.json").stat().st_mtime_ns == seq_mtime  # generation skipped
    assert json.loads((copy / "config.json").read_text())["tokenleap"]["steps"] == 21


def test_bad_arguments_fail_before_work(tmp_path, capsys):
    assert main(["train", "--target", "x", "--out", str(tmp_path), "--epochs", "0"]) == 2
    assert "--epochs=0: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["eagle3", "eagle"])
def test_device_drafting_equals_host_drafting(trained, tmp_path, kind):
    """The head's device drafter (catch-up, first draft and chain inside the verify graph, from the previous step's
    tokens and hidden states; here the graphed path run eagerly on the CPU): plain decoding's tokens, the draft and
    accepted counts per position of host drafting in the same path, and most verify steps launched behind the step
    before them. Prompts of 2-9 tokens (contexts shorter than k + 1 included), lengths cut by max_tokens. eagle3:
    the trained head; eagle: a random EAGLE-1 head."""
    from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter

    from tests.helpers.eagle_heads import write_eagle1_head
    from tests.helpers.padded_path import assert_device_drafting_equals_host, use_padded_path
    from tests.helpers.spec_counts import spec_totals
    from tests.helpers.tiny_models import TINY_VOCAB

    target, out, _, _ = trained
    head = out if kind == "eagle3" else write_eagle1_head(tmp_path / "eagle1", 64, TINY_VOCAB, seed=3)
    prompts = [{"prompt_token_ids": [1, 20 + i, 33, 7 + 2 * i, 40, 41, 42, 43, 44][: 2 + i]} for i in range(8)]
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in (11, 24, 17, 30) * 2]
    plain = [o.outputs[0].token_ids for o in LLM(model=str(target)).generate(prompts, params, use_tqdm=False)]
    spec = {"method": kind, "model": str(head), "num_speculative_tokens": 3}

    def make_llm(device_drafting: bool) -> LLM:
        llm = LLM(model=str(target), speculative_config=spec, max_num_seqs=4, block_size=16,
                  disable_log_stats=True)
        return use_padded_path(llm, 16, device_drafting=device_drafting)

    got, llm = assert_device_drafting_equals_host(make_llm, prompts, params, CatchUpChainDrafter)
    assert got == [list(t) for t in plain]
    if kind == "eagle3":
        assert spec_totals(llm)[1] > 0.1 * spec_totals(llm)[0]
