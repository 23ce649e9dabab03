"""The per-layer ops of a decoder, as one bundle: torch references, their Triton versions, or the CPU fast path.

Besides the final norm, the linears: a plain one; the attention's input projection with the RMSNorm in front
and RoPE plus the KV-cache write after it; the MLP's gate/up projection with the RMSNorm in front and
SiLU-and-mul after it. The torch bundle composes the reference ops with ``F.linear``. The Triton bundle runs
steps of at most ``MAX_ROWS`` tokens (decode and verify steps of small batches, where a layer is launch- and
latency-bound) through the few-row kernels of ``triton_linear``, for small hidden sizes with the norm and what
follows the projection fused into the one kernel; larger steps through the Triton norm / RoPE kernels and
cuBLAS. The CPU bundle (``cpu_ops``) is the torch one in bfloat16 with fewer ops and packed-weight linears.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.nn import functional as F


@dataclass(frozen=True)
class LayerOps:
    fused_add_rms_norm: Callable  # (x, residual, weight, eps) -> (normed, x + residual)
    # (x, residual | None, norm_weight, eps, qkv weight, qkv bias | None, positions, cos_sin_cache, k_cache, v_cache,
    # slots, num_heads, num_kv_heads) -> (q_rot [T, H, D], x + residual or None): the attention's input
    # projection, RoPE and KV-cache write
    norm_qkv_rope: Callable
    # (x, residual | None, norm_weight, eps, gate_up weight [2 * I, K], bias | None) -> (silu_and_mul(
    # linear(rms_norm(x + residual))) [T, I], x + residual or None)
    norm_swiglu: Callable
    linear: Callable  # (x [T, K], weight [N, K], bias [N] | None) -> [T, N]


def _norm_linear(rms_norm: Callable, fused_add_rms_norm: Callable, linear: Callable) -> Callable:
    """(x, residual | None, norm_weight, eps, weight, bias | None) -> (linear(rms_norm(x + residual)), x + residual
    or None when residual is None), as the given norm then ``linear``."""

    def norm_linear(x, residual, norm_weight, eps, weight, bias):
        if residual is None:
            return linear(rms_norm(x, norm_weight, eps), weight, bias), None
        normed, new_residual = fused_add_rms_norm(x, residual, norm_weight, eps)
        return linear(normed, weight, bias), new_residual

    return norm_linear


def _composed(norm_linear: Callable, silu_and_mul: Callable, rope_and_write_kv: Callable,
              ) -> tuple[Callable, Callable]:
    """norm_swiglu and norm_qkv_rope as ``norm_linear`` followed by the activation / by RoPE and the KV write."""

    def norm_swiglu(x, residual, norm_weight, eps, weight, bias):
        gate_up, new_residual = norm_linear(x, residual, norm_weight, eps, weight, bias)
        return silu_and_mul(gate_up), new_residual

    def norm_qkv_rope(x, residual, norm_weight, eps, weight, bias, positions, cos_sin_cache, k_cache, v_cache,
                      slots, num_heads, num_kv_heads):
        qkv, new_residual = norm_linear(x, residual, norm_weight, eps, weight, bias)  # [T, (H + 2 KVH) * D]
        t, head_dim = qkv.shape[0], qkv.shape[1] // (num_heads + 2 * num_kv_heads)
        q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
        q = rope_and_write_kv(positions, q.view(t, num_heads, head_dim), k.view(t, num_kv_heads, head_dim),
                              v.view(t, num_kv_heads, head_dim), cos_sin_cache, k_cache, v_cache, slots)
        return q, new_residual

    return norm_swiglu, norm_qkv_rope


def layer_ops(backend: str) -> LayerOps:
    """``"triton"`` (CUDA; fewer, fused kernels), ``"cpu"`` (CPU, bfloat16 activations, packed weights
    allowed; ``cpu_ops``) or ``"torch"`` (references, any device)."""
    if backend == "triton":
        return _triton_ops()
    if backend == "cpu":
        from tokenleap.kernels import cpu_ops as c
        from tokenleap.kernels import fused_ref as r
        from tokenleap.kernels.cpu_linear import cpu_linear

        return LayerOps(r.fused_add_rms_norm_ref, c.norm_qkv_rope, c.norm_swiglu, cpu_linear)
    from tokenleap.kernels import fused_ref as r

    norm_linear = _norm_linear(r.rms_norm_ref, r.fused_add_rms_norm_ref, F.linear)
    norm_swiglu, norm_qkv_rope = _composed(norm_linear, r.silu_and_mul_ref, r.rope_and_write_kv_ref)
    return LayerOps(r.fused_add_rms_norm_ref, norm_qkv_rope, norm_swiglu, F.linear)


# Fuse the RMSNorm into the few-row linear only for hidden sizes up to this: measured on an H100 (bf16, CUDA
# graphs; tests/benchmarks/bench_linear_gpu.py) the fused kernel saves 0.5-1 us per call at K = 576 (SmolLM2)
# and costs 1-7 us at K = 4096 (Llama-3-8B), where every program re-reading the rows no longer pays.
FUSED_NORM_MAX_HIDDEN = 1024


def _triton_ops() -> LayerOps:
    """Steps of at most MAX_ROWS tokens run the few-row linears (one choice per layer whatever the row count
    up to MAX_ROWS, so a row gets the same bits in a decode step as in a verify step); larger steps run
    cuBLAS. The row count of a step is fixed when a CUDA graph is captured, so the choice is made once per
    captured shape."""
    from tokenleap.kernels import triton_fused as t
    from tokenleap.kernels import triton_linear as few

    def linear(x, weight, bias=None):
        return few.linear_small_m(x, weight, bias) if x.shape[0] <= few.MAX_ROWS else F.linear(x, weight, bias)

    norm_linear_unfused = _norm_linear(t.rms_norm, t.fused_add_rms_norm, linear)

    def fused(x):
        return x.shape[0] <= few.MAX_ROWS and x.shape[1] <= FUSED_NORM_MAX_HIDDEN

    def norm_linear(x, residual, norm_weight, eps, weight, bias):
        if fused(x):
            return few.add_rms_norm_linear(x, residual, norm_weight, eps, weight, bias)
        return norm_linear_unfused(x, residual, norm_weight, eps, weight, bias)

    norm_swiglu_composed, norm_qkv_rope_composed = _composed(norm_linear, t.silu_and_mul, t.rope_and_write_kv)

    def norm_swiglu(x, residual, norm_weight, eps, weight, bias):
        if fused(x):
            return few.add_rms_norm_linear(x, residual, norm_weight, eps, weight, bias, swiglu=True)
        return norm_swiglu_composed(x, residual, norm_weight, eps, weight, bias)

    def norm_qkv_rope(x, residual, norm_weight, eps, weight, bias, positions, cos_sin_cache, k_cache, v_cache,
                      slots, num_heads, num_kv_heads):
        args = (x, residual, norm_weight, eps, weight, bias, positions, cos_sin_cache, k_cache, v_cache, slots,
                num_heads, num_kv_heads)
        if fused(x) and few.rope_epilogue_fits(weight.shape[0] // (num_heads + 2 * num_kv_heads)):
            return few.add_rms_norm_qkv_rope(*args)
        return norm_qkv_rope_composed(*args)

    return LayerOps(t.fused_add_rms_norm, norm_qkv_rope, norm_swiglu, linear)
