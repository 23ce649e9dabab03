"""The CPU fast path end to end on SmolLM2-135M-Instruct: ``dtype="bfloat16"`` and ``quantization="int4"`` /
``"int8"`` on the CPU (layer ops and attention "cpu", kernels/cpu_*.py).

- The engine picks the fast path and the weights are what was asked for (packed linears, int8 LM head).
- Greedy output with n-gram speculation equals plain decoding token for token, at batch 1 and 4, k = 3 and 5,
  and with chunked prefills mixed into verify steps: the fast path's ops are row-invariant by construction.
- The prompt's logits are as close to transformers' float32 ones as transformers' own bfloat16 model is (bf16,
  int4: within 1.5x its mean deviation; int8, which re-quantizes the file's 4-bit weights on another grid: 3x).
"""

from __future__ import annotations

import pytest
import torch
from helpers.spec_prompts import chat_token_ids, code_prompts, summary_prompts
from tokenleap import LLM, SamplingParams
from tokenleap.engine import setup
from tokenleap.kernels.cpu_linear import Int4Weight, Int8Weight
from tokenleap.model.attention import AttentionMetadata

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

GREEDY = SamplingParams(temperature=0.0, max_tokens=32)
FORMATS = {"bf16": None, "int4": "int4", "int8": "int8"}


def ngram(k: int) -> dict:
    return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


@pytest.fixture(scope="module")
def loaded(smollm2_path):
    """``loaded(fmt)``: SmolLM2 loaded once per format for the CPU fast path."""
    cache = {}

    def get(fmt: str) -> setup.LoadedModel:
        if fmt not in cache:
            cache[fmt] = setup.load_weights(smollm2_path, "bfloat16", torch.device("cpu"), 1024, "cpu",
                                            quantization=FORMATS[fmt])
        return cache[fmt]

    yield get
    cache.clear()


@pytest.fixture(scope="module")
def make_llm(loaded, smollm2_path):
    """``make_llm(fmt, **kwargs)``: an LLM on the format's shared weights, dtype bfloat16 on the CPU."""

    def make(fmt: str, **kwargs) -> LLM:
        weights = loaded(fmt)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(setup, "load_model", lambda *a, **k: weights)
            return LLM(model=str(smollm2_path), device="cpu", dtype="bfloat16", quantization=FORMATS[fmt],
                       max_model_len=1024, kv_cache_memory_bytes=96 << 20, disable_log_stats=True, **kwargs)

    return make


@pytest.fixture(scope="module")
def prompts(make_llm):
    tokenizer = make_llm("bf16").get_tokenizer()
    return chat_token_ids(tokenizer, code_prompts()[:4] + summary_prompts()[:4])


def test_fast_path_is_picked(make_llm):
    llm = make_llm("int4")
    engine = llm.engine
    assert engine.backend == "cpu"
    assert engine.runner.kv_caches[0][0].dtype == torch.bfloat16
    layer = engine.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj.weight, Int4Weight)
    assert isinstance(layer.mlp.down_proj.weight, Int4Weight)
    assert isinstance(engine.model.lm_head.weight, Int8Weight)  # tied embedding: its own int8 head
    assert engine.model.embed_tokens.weight.dtype == torch.bfloat16
    assert make_llm("bf16").engine.backend == "cpu"


def token_ids(outs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.mark.parametrize("fmt", ["bf16", "int4"])
def test_ngram_equals_plain(make_llm, prompts, fmt):
    plain = token_ids(make_llm(fmt, max_num_seqs=4).generate(prompts, GREEDY, use_tqdm=False))
    for kwargs in ({"max_num_seqs": 4, "k": 3}, {"max_num_seqs": 1, "k": 5},
                   {"max_num_seqs": 4, "k": 3, "max_num_batched_tokens": 40}):  # chunked prefills beside verifies
        k = kwargs.pop("k")
        llm = make_llm(fmt, speculative_config=ngram(k), **kwargs)
        outs = llm.generate(prompts, GREEDY, use_tqdm=False)
        assert token_ids(outs) == plain, f"{fmt}: ngram k={k} {kwargs} differs from plain decoding"
        assert sum(o.metrics.spec_decode.num_accepted_tokens for o in outs) > 0  # verify steps really ran


def prefill_logits(weights: setup.LoadedModel, ids: list[int]) -> torch.Tensor:  # [T, vocab] float32
    t = len(ids)
    nb = -(-t // 16)
    kv = setup.allocate_kv_caches(weights.arch, nb + 1, 16, torch.bfloat16, torch.device("cpu"))
    meta = AttentionMetadata(
        slot_mapping=torch.arange(16, 16 + t), block_tables=torch.arange(1, nb + 1, dtype=torch.int32)[None],
        query_start_loc=torch.tensor([0, t], dtype=torch.int32), seq_lens=torch.tensor([t], dtype=torch.int32),
        query_lens_host=[t], seq_lens_host=[t], max_query_len=t, max_seq_len=1024, backend="cpu",
    )
    with torch.inference_mode():
        hidden, _ = weights.model(torch.tensor(ids), torch.arange(t), kv, meta)
        return weights.model.compute_logits(hidden)


def test_logits_near_transformers(loaded, smollm2_path, prompts):
    from tokenleap.model.loader import load_checkpoint
    from transformers import LlamaConfig, LlamaForCausalLM

    ckpt = load_checkpoint(str(smollm2_path), "float32")
    hf = LlamaForCausalLM(LlamaConfig(**ckpt.hf_config))
    hf.load_state_dict(ckpt.weights, strict=False)
    ids = prompts[0]["prompt_token_ids"]
    with torch.no_grad():
        want = hf.eval()(torch.tensor([ids])).logits[0].float()  # [T, vocab]
        hf_bf16 = hf.to(torch.bfloat16)(torch.tensor([ids])).logits[0].float()
    floor = (hf_bf16 - want).abs().mean()
    for fmt, bound in (("bf16", 1.5), ("int4", 1.5), ("int8", 3.0)):
        got = prefill_logits(loaded(fmt), ids)
        dev = (got - want).abs().mean()
        assert dev <= bound * floor, f"{fmt}: mean |logit - float32| {dev:.3f} > {bound} x transformers bf16's {floor:.3f}"
        assert (got[-1].argmax() == want[-1].argmax()).item(), fmt
