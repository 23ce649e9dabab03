"""The per-layer ops of a decoder, as one bundle: torch references or their Triton versions.

Besides the small ops, the linears: a plain one, a projection with the RMSNorm in front of it, and the MLP's
gate/up projection with the RMSNorm in front and SiLU-and-mul after it. The torch bundle composes the
reference ops with ``F.linear``. The Triton bundle runs steps of at most ``MAX_ROWS`` tokens (decode and
verify steps of small batches, where a layer is launch- and latency-bound) through the few-row kernels of
``triton_linear`` (for small hidden sizes the RMSNorm, and SiLU-and-mul, fused in), and larger steps through
cuBLAS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch.nn import functional as F


@dataclass(frozen=True)
class LayerOps:
    fused_add_rms_norm: Callable  # (x, residual, weight, eps) -> (normed, x + residual)
    rope_and_write_kv: Callable  # (positions, q, k, v, cos_sin_cache, k_cache, v_cache, slots) -> q_rot
    # (x, residual | None, norm_weight, eps, weight, bias | None) -> (linear(rms_norm(x + residual)), x + residual
    # or None when residual is None)
    norm_linear: Callable
    # (x, residual | None, norm_weight, eps, gate_up weight [2 * I, K], bias | None) -> (silu_and_mul(
    # linear(rms_norm(x + residual))) [T, I], x + residual or None)
    norm_swiglu: Callable
    linear: Callable  # (x [T, K], weight [N, K], bias [N] | None) -> [T, N]


def _composed(rms_norm: Callable, fused_add_rms_norm: Callable, silu_and_mul: Callable, linear: Callable,
              ) -> tuple[Callable, Callable]:
    """norm_linear and norm_swiglu as the given norm, ``linear`` and activation one after the other."""

    def norm_linear(x, residual, norm_weight, eps, weight, bias):
        if residual is None:
            return linear(rms_norm(x, norm_weight, eps), weight, bias), None
        normed, new_residual = fused_add_rms_norm(x, residual, norm_weight, eps)
        return linear(normed, weight, bias), new_residual

    def norm_swiglu(x, residual, norm_weight, eps, weight, bias):
        gate_up, new_residual = norm_linear(x, residual, norm_weight, eps, weight, bias)
        return silu_and_mul(gate_up), new_residual

    return norm_linear, norm_swiglu


def layer_ops(backend: str) -> LayerOps:
    """``"triton"`` (CUDA; fewer, fused kernels) or ``"torch"`` (references, any device)."""
    if backend == "triton":
        return _triton_ops()
    from tokenleap.kernels import fused_ref as r

    norm_linear, norm_swiglu = _composed(r.rms_norm_ref, r.fused_add_rms_norm_ref, r.silu_and_mul_ref, F.linear)
    return LayerOps(r.fused_add_rms_norm_ref, r.rope_and_write_kv_ref, norm_linear, norm_swiglu, F.linear)


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

    norm_linear_unfused, norm_swiglu_unfused = _composed(t.rms_norm, t.fused_add_rms_norm, t.silu_and_mul, linear)

    def fused(x):
        return x.shape[0] <= few.MAX_ROWS and x.shape[1] <= FUSED_NORM_MAX_HIDDEN

    def norm_linear(x, residual, norm_weight, eps, weight, bias):
        if fused(x):
            return few.add_rms_norm_linear(x, residual, norm_weight, eps, weight, bias)
        return norm_linear_unfused(x, residual, norm_weight, eps, weight, bias)

    def norm_swiglu(x, residual, norm_weight, eps, weight, bias):
        if fused(x):
            return few.add_rms_norm_linear(x, residual, norm_weight, eps, weight, bias, swiglu=True)
        return norm_swiglu_unfused(x, residual, norm_weight, eps, weight, bias)

    return LayerOps(t.fused_add_rms_norm, t.rope_and_write_kv, norm_linear, norm_swiglu, linear)
