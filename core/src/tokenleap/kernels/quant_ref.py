"""Weight-only quantization, the maths: integer codes and their scales from float weights, and back.

Two formats, both per output row of a linear's weight [N, K]:

- int8: one symmetric scale per row, ``w ~= q * scale`` with ``q`` in -127..127 and ``scale = max|w| / 127``.
- int4: asymmetric groups of ``group`` consecutive input columns, ``w ~= q * scale + low`` with ``q`` in 0..15,
  ``low`` the group's minimum and ``scale = (max - min) / 15``: llama.cpp's Q4_1 rule. Weights that are
  themselves dequantized Q4_1 blocks (a Q4_1 GGUF) get their file's codes back: each block's minimum and maximum
  are codes 0 and 15.

Plain torch on float32, rounding half away from zero as llama.cpp does; the packed CPU kernels
(``cpu_linear``) are checked against ``dequantize_*`` here.
"""

from __future__ import annotations

import torch

INT4_GROUP = 32  # columns per int4 group: Q4_1's block


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # w: [N, K] float -> (q [N, K] int8 in -127..127, scale [N] float32)
    w = w.float()
    scale = w.abs().amax(dim=1) / 127.0  # [N]
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale, codes 0
    q = _round_half_away(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # q: [N, K] int8; scale: [N] -> [N, K] float32
    return q.float() * scale.float()[:, None]


def quantize_int4_groups(w: torch.Tensor, group: int = INT4_GROUP,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # w: [N, K] float, K a multiple of group -> (q [N, K] uint8 in 0..15, scale [N, K // group] float32,
    # low [N, K // group] float32)
    n, k = w.shape
    if k % group:
        raise ValueError(f"int4 groups of {group} columns need K divisible by {group}; K = {k}")
    g = w.float().view(n, k // group, group)  # [N, G, group]
    low, high = g.amin(dim=2), g.amax(dim=2)  # [N, G]
    scale = (high - low) / 15.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))  # a constant group: codes 0, w = low
    q = _round_half_away((g - low[..., None]) * inv[..., None]).clamp(0, 15).to(torch.uint8)
    return q.view(n, k), scale, low


def dequantize_int4_groups(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    # q: [N, K] uint8; scale, low: [N, G] -> [N, K] float32
    n, k = q.shape
    group = k // scale.shape[1]
    w = q.float().view(n, -1, group) * scale.float()[..., None] + low.float()[..., None]  # [N, G, group]
    return w.view(n, k)
