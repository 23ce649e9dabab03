"""Torch references for the few-row linear kernels in ``triton_linear.py``.

A linear here accumulates in fp32 and rounds once to the activation dtype (bias added before that rounding),
as cuBLAS does; the fused prologues are the ``fused_ref`` ops, with HF's roundings, whose result (in the
activation dtype) is the linear's input.
"""

from __future__ import annotations

import torch

from tokenleap.kernels.fused_ref import fused_add_rms_norm_ref, rms_norm_ref


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # x: [M, K]; weight: [N, K]; bias: [N] | None -> [M, N] in x.dtype
    y = x.float() @ weight.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def add_rms_norm_linear_ref(
    x: torch.Tensor,  # [M, K]
    residual: torch.Tensor | None,  # [M, K] | None
    norm_weight: torch.Tensor,  # [K]
    eps: float,
    weight: torch.Tensor,  # [N, K]
    bias: torch.Tensor | None = None,  # [N]
) -> tuple[torch.Tensor, torch.Tensor | None]:  # (y [M, N], new_residual = x + residual [M, K] | None)
    if residual is None:
        return linear_ref(rms_norm_ref(x, norm_weight, eps), weight, bias), None
    normed, new_residual = fused_add_rms_norm_ref(x, residual, norm_weight, eps)
    return linear_ref(normed, weight, bias), new_residual

