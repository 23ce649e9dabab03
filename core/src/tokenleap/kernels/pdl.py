"""Programmatic dependent launch (PDL, Hopper and newer): a kernel starts while the one before it finishes.

A decode step of a small model is a chain of ~185 short kernels (SmolLM2: 4-7 us each), and each one used to
start only after the previous one had ended: its launch, and the first round trip to memory for its weights,
added to every link. Launched with PDL, the next kernel's programs are placed on the SMs while the current
kernel runs; they may read what nothing in the step writes (their weights: ``prefetch_rows`` pulls a small
layer's rows into L2), then ``enter`` waits until the kernel before has completed and its writes are visible
(``griddepcontrol.wait``) and lets the kernel after it be launched. Nothing is written before ``enter``, so a
kernel never overwrites what the one before still reads, and each kernel completes only after its
predecessor: the order of the step is unchanged (gains: docs/performance-log.md)."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

# A linear is launched with PDL, and its weights prefetched, only when they are a small part of the 50 MB L2
# (a latency-bound layer). A large layer streams memory at full bandwidth anyway: pulling its rows in early only
# evicts them again (a Llama-3-8B-shaped forward with every layer prefetched: 5.84 -> 7.21 ms), and PDL alone
# still cost it 0.6% (1 token) and 1.7% (1 + 7 tokens).
SMALL_WEIGHT_BYTES = 8 << 20


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` are launched with PDL: CUDA devices of compute capability 9.0 or newer."""
    return device.type == "cuda" and _capable(device.index if device.index is not None else
                                              torch.cuda.current_device())


@triton.jit
def enter(PDL: tl.constexpr):
    # Wait until the kernel before has completed (its writes visible), then let the kernel after be launched.
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def prefetch_lines(row_elems: int, elem_bytes: int) -> int:
    """PREFETCH_LINES for ``prefetch_rows`` (a constexpr): a power of two covering a row's 128-byte lines."""
    return triton.next_power_of_2(-(-row_elems * elem_bytes // 128))


@triton.jit
def prefetch_rows(ptr, rows, stride, ROW_ELEMS: tl.constexpr, PREFETCH_LINES: tl.constexpr):
    # Ask L2 for rows [R] (row indices of the matrix at ptr, row stride ``stride`` elements, ROW_ELEMS elements
    # each): every 128-byte line of each row, one prefetch per (row, line) spread over the threads.
    ELEM: tl.constexpr = ptr.dtype.element_ty.primitive_bitwidth // 8
    LINES: tl.constexpr = (ROW_ELEMS * ELEM + 127) // 128
    line = tl.minimum(tl.arange(0, PREFETCH_LINES), LINES - 1)  # [PREFETCH_LINES] (repeats past the row's end)
    row_bytes = ptr.to(tl.pointer_type(tl.int8)) + rows.to(tl.int64)[:, None] * stride * ELEM  # [R, 1]
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [row_bytes + line[None, :] * 128],
                              dtype=tl.int32, is_pure=False, pack=1)
