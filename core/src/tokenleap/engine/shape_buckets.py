"""Row counts of eager steps rounded up to a few buckets, so that the GPU's matrix multiplies see shapes again.

An eager step (a batch mixing prefill chunks, or a prefill of several requests: what the captured graphs do not
cover) runs its linears on cuBLAS with as many rows as the step has tokens. cuBLAS picks a kernel per new shape,
and on an H100 that choice costs the host about 150 us a call (measured: a step admitting 15 requests to
SmolLM2-135M spent 16.3 ms of host time in 120 ``aten::mm`` calls against 1.0 ms of GPU time;
``tests/benchmarks/prefill_batch_time.py``), while a shape seen before is cheap. Padding the step's tokens to
``bucket(n)`` rows (at most 15 more, or 1/8 more past 128) bounds the shapes to about eight per octave (71 from 1
to 8,192 rows).
"""

from __future__ import annotations

SMALL = 16  # up to this many rows, no padding (the few-row linears are Triton kernels, no cuBLAS choice)


def bucket(n: int) -> int:
    """The smallest bucket >= n: n itself up to SMALL, else n rounded up to a multiple of a power of two that is
    an eighth of n's leading power of two (16 at least): 17 -> 32, 100 -> 112, 1000 -> 1024, 5800 -> 6144."""
    if n <= SMALL:
        return n
    step = max(SMALL, (1 << (n.bit_length() - 1)) // 8)
    return -(-n // step) * step
