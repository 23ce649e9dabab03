"""CPU tokens/s of tokenleap (plain and with n-gram speculation) against transformers' `generate`, same model
(SmolLM2-135M-Instruct, fp32), same chat prompts, batch 1, greedy, 64 new tokens, in one process. Not part of
CI's run:

    python -m pytest tests/benchmarks/bench_cpu_vs_transformers.py --benchmark-only -s

BENCH_CPU_PROMPTS (default 6) and BENCH_CPU_TOKENS (default 64) shrink the run on a busy machine. Each benchmark
records tokens/s in extra_info; the last one prints the ratios.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import code_editing_prompts, summarization_prompts

NEW_TOKENS = int(os.environ.get("BENCH_CPU_TOKENS", "64"))
_N = int(os.environ.get("BENCH_CPU_PROMPTS", "6"))
_PROMPTS = code_editing_prompts()[: (_N + 1) // 2] + summarization_prompts()[: _N // 2]
CHATS = [[{"role": "user", "content": p}] for p in _PROMPTS]
NGRAM = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return LLM(model=str(smollm2_path), device="cpu", dtype="float32", max_num_seqs=1, disable_log_stats=True)


@pytest.fixture(scope="module")
def hf_model(llm):
    from tokenleap.model.hub import resolve_model
    from tokenleap.model.loader import load_checkpoint
    from transformers import LlamaConfig, LlamaForCausalLM

    ckpt = load_checkpoint(str(resolve_model(llm.config.model)), "float32")
    model = LlamaForCausalLM(LlamaConfig(**ckpt.hf_config))
    model.load_state_dict(ckpt.weights, strict=False)
    return model.eval(), ckpt.tokenizer


@pytest.fixture(scope="module")
def llm_ngram(smollm2_path, llm):
    from tokenleap.engine import setup

    eng = llm.engine  # share the loaded weights
    loaded = setup.LoadedModel(eng.model, eng.arch, eng.tokenizer, next(eng.model.parameters()).dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setup, "load_model", lambda *a, **k: loaded)
        return LLM(model=str(smollm2_path), device="cpu", dtype="float32", max_num_seqs=1, speculative_config=NGRAM)


def _ours(llm) -> float:
    sp = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    t0, tokens = time.perf_counter(), 0
    for chat in CHATS:
        tokens += len(llm.chat([chat], sp, use_tqdm=False)[0].outputs[0].token_ids)
    return tokens / (time.perf_counter() - t0)


def _transformers(model, tok) -> float:
    t0, tokens = time.perf_counter(), 0
    with torch.no_grad():
        for chat in CHATS:
            ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            out = model.generate(ids["input_ids"], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 do_sample=False)
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / (time.perf_counter() - t0)


def test_tokenleap_cpu(benchmark, llm):
    tps = benchmark.pedantic(_ours, args=(llm,), rounds=2, warmup_rounds=1)
    RESULTS["tokenleap"] = tps
    benchmark.extra_info["tokens_per_s"] = tps


def test_tokenleap_cpu_ngram(benchmark, llm_ngram):
    tps = benchmark.pedantic(_ours, args=(llm_ngram,), rounds=2, warmup_rounds=1)
    RESULTS["tokenleap ngram"] = tps
    benchmark.extra_info["tokens_per_s"] = tps


def test_transformers_cpu(benchmark, hf_model):
    tps = benchmark.pedantic(_transformers, args=hf_model, rounds=2, warmup_rounds=1)
    RESULTS["transformers"] = tps
    benchmark.extra_info["tokens_per_s"] = tps
    ours = ", ".join(f"{k} {v:.1f} tokens/s ({v / tps:.2f}x)" for k, v in RESULTS.items() if k != "transformers")
    print(f"\nCPU batch-1 greedy, {len(CHATS)} prompts, {NEW_TOKENS} new tokens, threads={torch.get_num_threads()}: "
          f"transformers {tps:.1f} tokens/s; {ours}")
