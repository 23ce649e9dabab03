"""CPU tokens/s of tokenleap against transformers' `generate`, same model (SmolLM2-135M-Instruct, fp32),
same chat prompts, batch 1, greedy, 64 new tokens. Not part of CI's run:

    python -m pytest tests/benchmarks/bench_cpu_vs_transformers.py --benchmark-only -s

Each benchmark records tokens/s in extra_info; the final line printed compares them.
"""

from __future__ import annotations

import time

import pytest
import torch
from tokenleap import LLM, SamplingParams
from tokenleap.bench.prompts import code_editing_prompts, summarization_prompts

NEW_TOKENS = 64
CHATS = [[{"role": "user", "content": p}] for p in code_editing_prompts()[:3] + summarization_prompts()[:3]]
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


def test_transformers_cpu(benchmark, hf_model):
    tps = benchmark.pedantic(_transformers, args=hf_model, rounds=2, warmup_rounds=1)
    RESULTS["transformers"] = tps
    benchmark.extra_info["tokens_per_s"] = tps
    if "tokenleap" in RESULTS:
        print(f"\nCPU batch-1 greedy, {NEW_TOKENS} new tokens: tokenleap {RESULTS['tokenleap']:.1f} tokens/s, "
              f"transformers {tps:.1f} tokens/s ({RESULTS['tokenleap'] / tps:.2f}x), threads={torch.get_num_threads()}")
