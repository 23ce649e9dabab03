"""The per-layer ops of the CPU fast path (``layer_ops("cpu")``): bfloat16 activations, few torch ops a layer.

Numerically transformers' Llama in bfloat16 (the ``fused_ref`` roundings); what differs from the torch bundle
is the op count and the linears:

- the linears run ``cpu_linear`` (bfloat16 weights, or packed int8 / int4 ones);
- RoPE rotates the queries and keys of the qkv projection in one go, as two half-width products
  (``rope_halves``: the same bits as ``rotary_embedding_ref``, 9 ops instead of ~17);
- the attention (``cpu_attention``, selected by the step metadata's backend "cpu").
"""

from __future__ import annotations

import torch

from tokenleap.kernels import fused_ref as r
from tokenleap.kernels.attention_ref import write_kv_ref
from tokenleap.kernels.cpu_linear import cpu_linear


def rope_halves(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    # x: [T, N, D]; cos_sin: [T, D] (cos half | sin half) in x.dtype -> [T, N, D]
    # transformers' x * cos + rotate_half(x) * sin, per half: (x1 c - x2 s, x2 c + x1 s), rounded as there.
    half = x.shape[-1] // 2
    cos, sin = cos_sin[:, None, :half], cos_sin[:, None, half:]  # [T, 1, D / 2]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def norm_linear(x, residual, norm_weight, eps, weight, bias):
    """(linear(rms_norm(x + residual)), x + residual or None when residual is None)."""
    if residual is None:
        return cpu_linear(r.rms_norm_ref(x, norm_weight, eps), weight, bias), None
    normed, new_residual = r.fused_add_rms_norm_ref(x, residual, norm_weight, eps)
    return cpu_linear(normed, weight, bias), new_residual


def norm_swiglu(x, residual, norm_weight, eps, weight, bias):
    gate_up, new_residual = norm_linear(x, residual, norm_weight, eps, weight, bias)  # [T, 2 I]
    return r.silu_and_mul_ref(gate_up), new_residual


def norm_qkv_rope(x, residual, norm_weight, eps, weight, bias, positions, cos_sin_cache, k_cache, v_cache, slots,
                  num_heads, num_kv_heads):
    qkv, new_residual = norm_linear(x, residual, norm_weight, eps, weight, bias)  # [T, (H + 2 KVH) * D]
    t = qkv.shape[0]
    d = qkv.shape[1] // (num_heads + 2 * num_kv_heads)
    qk = qkv[:, : (num_heads + num_kv_heads) * d].view(t, num_heads + num_kv_heads, d)  # [T, H + KVH, D]
    v = qkv[:, (num_heads + num_kv_heads) * d :].view(t, num_kv_heads, d)  # [T, KVH, D]
    rotated = rope_halves(qk, cos_sin_cache[positions].to(qkv.dtype))  # [T, H + KVH, D]
    write_kv_ref(rotated[:, num_heads:], v, k_cache, v_cache, slots)
    return rotated[:, :num_heads], new_residual
