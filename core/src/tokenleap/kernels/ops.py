"""The small per-layer ops of a decoder, as one bundle: torch references or their Triton versions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerOps:
    rms_norm: Callable  # (x, weight, eps) -> normed
    fused_add_rms_norm: Callable  # (x, residual, weight, eps) -> (normed, x + residual)
    rope_and_write_kv: Callable  # (positions, q, k, v, cos_sin_cache, k_cache, v_cache, slots) -> q_rot
    silu_and_mul: Callable  # [T, 2 * I] -> [T, I]


def layer_ops(backend: str) -> LayerOps:
    """``"triton"`` (CUDA; fewer, fused kernels) or ``"torch"`` (references, any device)."""
    if backend == "triton":
        from tokenleap.kernels import triton_fused as t

        return LayerOps(t.rms_norm, t.fused_add_rms_norm, t.rope_and_write_kv, t.silu_and_mul)
    from tokenleap.kernels import fused_ref as r

    return LayerOps(r.rms_norm_ref, r.fused_add_rms_norm_ref, r.rope_and_write_kv_ref, r.silu_and_mul_ref)
