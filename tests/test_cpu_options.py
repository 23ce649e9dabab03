"""Choosing the CPU fast path, and what it builds: the backend choice (kernels/dispatch.py), the config checks of
``quantization``, ``quantize_model_`` on a tiny Qwen2 (tied embeddings, qkv biases), the fast RoPE against the
reference, and a tiny engine whose n-gram output equals its plain output under each format.
"""

from __future__ import annotations

import pytest
import torch
from tokenleap import LLM, SamplingParams
from tokenleap.config import EngineConfig
from tokenleap.engine import setup
from tokenleap.kernels.cpu_linear import Int4Weight, Int8Weight
from tokenleap.kernels.cpu_ops import rope_halves
from tokenleap.kernels.dispatch import attention_backend
from tokenleap.kernels.fused_ref import rotary_embedding_ref
from tokenleap.model.layers import rope_cos_sin_cache, rope_inv_freq
from tokenleap.model.quantize import PackedLinear, dense_weight

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_backend_choice():
    assert attention_backend("cpu", activation_dtype="bfloat16") == "cpu"
    assert attention_backend("cpu", activation_dtype="float32") == "torch"  # the float32 default is unchanged
    assert attention_backend("cpu") == "torch"
    assert attention_backend("cpu", prefer="torch", activation_dtype="bfloat16") == "torch"
    assert attention_backend("cpu", prefer="cpu", activation_dtype="bfloat16") == "cpu"
    with pytest.raises(ValueError, match="bfloat16 activations"):
        attention_backend("cpu", prefer="cpu", activation_dtype="float32")
    with pytest.raises(ValueError, match="device is 'cuda'"):
        attention_backend("cuda", prefer="cpu", activation_dtype="bfloat16")


def test_quantization_config():
    assert EngineConfig(model="m", quantization="int4").model_dtype == "bfloat16"
    assert EngineConfig(model="m", dtype="bfloat16").model_dtype == "bfloat16"
    assert EngineConfig(model="m").model_dtype == "auto"
    with pytest.raises(ValueError, match="dtype must be 'auto' or 'bfloat16'"):
        EngineConfig(model="m", quantization="int8", dtype="float32")
    with pytest.raises(ValueError, match="one CPU process"):
        EngineConfig(model="m", quantization="int8", device="cuda")
    with pytest.raises(ValueError):
        EngineConfig(model="m", quantization="fp8")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rope_halves_is_the_reference(dtype):
    cache = rope_cos_sin_cache(rope_inv_freq(64, 10000.0), 300)  # [300, 64] float32
    positions = torch.tensor([0, 1, 17, 255, 299])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 9, 64, generator=g).to(dtype)
    k = torch.randn(5, 3, 64, generator=g).to(dtype)
    want_q, want_k = rotary_embedding_ref(positions, q, k, cache)
    got = rope_halves(torch.cat([q, k], dim=1), cache[positions].to(dtype))  # [T, 12, 64]
    assert torch.equal(got[:, :9], want_q) and torch.equal(got[:, 9:], want_k)


@pytest.mark.parametrize("fmt,kind", [("int8", Int8Weight), ("int4", Int4Weight)])
def test_quantize_model(tiny_checkpoint, fmt, kind):
    folder = tiny_checkpoint("qwen2")  # tied embeddings, qkv biases
    dense = setup.load_weights(folder, "float32", torch.device("cpu"), 64, "torch").model
    loaded = setup.load_weights(folder, "float32", torch.device("cpu"), 64, "cpu", quantization=fmt)
    model = loaded.model
    assert loaded.dtype == torch.bfloat16
    for layer, ref in zip(model.layers, dense.layers, strict=True):
        for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
            weight, want = layer.get_submodule(name).weight, ref.get_submodule(name).weight  # [N, K]
            assert isinstance(weight, kind), name
            step = (want.amax(1, keepdim=True) - want.amin(1, keepdim=True)) / (15 if fmt == "int4" else 127)
            assert bool(((dense_weight(weight).float() - want).abs() <= step).all()), name  # within a step
        assert layer.self_attn.qkv_proj.bias.dtype == torch.bfloat16
        assert "weight" not in dict(layer.self_attn.qkv_proj.named_parameters())
    assert isinstance(model.lm_head, PackedLinear) and isinstance(model.lm_head.weight, Int8Weight)
    assert model.embed_tokens.weight.dtype == torch.bfloat16 and model.norm.weight.dtype == torch.bfloat16
    assert torch.equal(model.embed_tokens.weight, dense.embed_tokens.weight.bfloat16())


@pytest.mark.parametrize("quantization", [None, "int8", "int4"])
def test_tiny_engine_ngram_equals_plain(tiny_checkpoint, quantization):
    folder = str(tiny_checkpoint("qwen2"))
    prompts = [{"prompt_token_ids": [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7] * 3}, {"prompt_token_ids": list(range(3, 40))}]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outs = {}
    for k in (0, 3):
        llm = LLM(model=folder, device="cpu", dtype="bfloat16", quantization=quantization, max_num_seqs=2,
                  speculative_config={"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 3,
                                      "prompt_lookup_min": 1} if k else None)
        assert llm.engine.backend == "cpu"
        outs[k] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    assert outs[3] == outs[0]
