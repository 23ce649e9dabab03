"""Linears of the CPU fast path: bfloat16 weights, or weight-only int8 / int4 packed for ATen's CPU kernels.

A packed weight stands where a linear's ``weight`` tensor was (``model/quantize.py`` swaps it in) and
``cpu_linear`` runs either kind. Activations are bfloat16; the kernels accumulate in float32 and round the
result to bfloat16 once.

- int8 (``Int8Weight``): ``torch.ops.aten._weight_int8pack_mm``, ``y = (x @ q.T) * scale``, one scale per row.
- int4 (``Int4Weight``): ``torch.ops.aten._weight_int4pack_mm_for_cpu``, groups of ``INT4_GROUP`` input
  columns, ``w = (q - 8) * scale + zero`` (the kernel's form of ``q * scale + low``: ``zero = low + 8 * scale``).

Scales and zeros are stored in bfloat16 (the kernels take them in the activation dtype), so a packed weight is
its ``quant_ref`` codes with bfloat16-rounded scales: ``dequantize()`` gives exactly those values.

Row invariance: row m of a result has the same bits whatever the other rows are (measured for the bfloat16 oneDNN
matmul and both packed kernels, 1..512 rows, on an AMD EPYC and an Intel Xeon with AMX; ``tests/test_cpu_linear.py``).
On the Xeon only with oneDNN's AMX kernels off: they compute a row in a batch with other bits than alone (6 outputs
of 100 rows of SmolLM2's q/k/v projection differed), which ``import tokenleap`` prevents by capping oneDNN's
instruction set at AVX512_CORE_BF16 (``ONEDNN_MAX_CPU_ISA``, unless set). Steps are run in
pieces of at most ``ROW_CHUNK`` rows, so that a larger step (a long prefill chunk) uses the same kernels, and a
single row of a bfloat16 weight with K > ``ONE_ROW_MAX_K`` runs as two (itself twice): oneDNN's one-row path
sums such rows in another order than its many-row one (SmolLM2's down projection, K = 1536: ~1 output in 7,000
differs in its last bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from tokenleap.kernels.quant_ref import INT4_GROUP, quantize_int4_groups, quantize_int8_rows

ROW_CHUNK = 512  # rows per kernel call: the row counts over which invariance was checked
ONE_ROW_MAX_K = 1024  # longest K whose one-row bfloat16 matmul gives the many-row bits
WEIGHT_FORMATS = ("int8", "int4")


@dataclass(frozen=True)
class Int8Weight:
    q: torch.Tensor  # [N, K] int8
    scale: torch.Tensor  # [N] bfloat16

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def dtype(self) -> torch.dtype:  # the activations it takes and returns
        return self.scale.dtype

    def matmul(self, x: torch.Tensor) -> torch.Tensor:  # x: [M, K] bfloat16 -> [M, N] bfloat16
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale)

    def dequantize(self) -> torch.Tensor:  # [N, K] float32: the weight the kernel multiplies by
        return self.q.float() * self.scale.float()[:, None]


@dataclass(frozen=True)
class Int4Weight:
    packed: torch.Tensor  # [N, K // 2] uint8, the kernel's layout
    scale_zero: torch.Tensor  # [K // group, N, 2] bfloat16: (scale, zero) of each group
    group: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.packed.shape[0], self.packed.shape[1] * 2))

    @property
    def dtype(self) -> torch.dtype:
        return self.scale_zero.dtype

    def matmul(self, x: torch.Tensor) -> torch.Tensor:  # x: [M, K] bfloat16 -> [M, N] bfloat16
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group, self.scale_zero)

    def dequantize(self) -> torch.Tensor:  # [N, K] float32: (q - 8) * scale + zero, as the kernel reads it
        # The kernel's float32 variant times the identity: the packed layout is the kernel's own. Slow; not for
        # the hot path.
        eye = torch.eye(self.shape[1])  # [K, K]
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, self.scale_zero.float()).t()


PackedWeight = Int8Weight | Int4Weight


def int4_packable(shape: tuple[int, int], group: int = INT4_GROUP) -> bool:
    """The CPU int4 kernel takes N a multiple of 16 and K a multiple of the group."""
    n, k = shape
    return n % 16 == 0 and k % group == 0


def pack_int8(w: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> Int8Weight:  # w: [N, K] float
    q, scale = quantize_int8_rows(w)
    return Int8Weight(q.contiguous(), scale.to(dtype))


def pack_int4(w: torch.Tensor, group: int = INT4_GROUP, dtype: torch.dtype = torch.bfloat16) -> Int4Weight:
    # w: [N, K] float with int4_packable(w.shape)
    if not int4_packable(tuple(w.shape), group):
        raise ValueError(f"int4 packing needs N % 16 == 0 and K % {group} == 0; got {tuple(w.shape)}")
    q, scale, low = quantize_int4_groups(w, group)  # [N, K] uint8, [N, G], [N, G]
    zero = low + 8 * scale
    scale_zero = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()  # [G, N, 2]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)  # [N, K // 2] uint8
    return Int4Weight(packed, scale_zero, group)


def pack_weight(w: torch.Tensor, fmt: str) -> PackedWeight | None:
    """``w`` [N, K] in ``fmt`` ("int8" or "int4"), or None where the format's kernel does not take the shape."""
    if fmt == "int8":
        return pack_int8(w)
    if fmt == "int4":
        return pack_int4(w) if int4_packable(tuple(w.shape)) else None
    raise ValueError(f"unknown weight format {fmt!r}; expected one of {WEIGHT_FORMATS}")


def cpu_linear(x: torch.Tensor, weight: torch.Tensor | PackedWeight, bias: torch.Tensor | None = None,
               ) -> torch.Tensor:
    # x: [M, K]; weight: [N, K] tensor or packed; bias: [N] | None -> [M, N] in x.dtype
    if x.shape[0] > ROW_CHUNK:
        return torch.cat([cpu_linear(part, weight, bias) for part in x.split(ROW_CHUNK)])
    if isinstance(weight, torch.Tensor):
        if x.shape[0] == 1 and x.shape[1] > ONE_ROW_MAX_K:
            return F.linear(x.expand(2, -1), weight, bias)[:1]
        return F.linear(x, weight, bias)
    y = weight.matmul(x)
    return y if bias is None else y + bias


def bf16_rows_invariant(k: int = 576, n: int = 960, rows: int = 8) -> bool:
    """Whether this process's bfloat16 ``cpu_linear`` gives each row the same bits alone as among ``rows`` rows (a
    [n, k] weight, SmolLM2's q/k/v projection by default): what lets the CPU path's verify steps reproduce its
    decode steps. False where oneDNN picked its AMX kernels (initialized before ``import tokenleap`` capped it)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(n, k, generator=g).to(torch.bfloat16)
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    together = cpu_linear(x, weight)
    return all(torch.equal(cpu_linear(x[i : i + 1], weight)[0], together[i]) for i in range(rows))
