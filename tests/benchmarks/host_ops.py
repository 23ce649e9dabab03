"""Host cost of the small torch / CUDA calls a graphed step makes (median µs per call, GPU idle).

    python tests/benchmarks/host_ops.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch


def cost(fn, n: int = 2000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return statistics.median(samples) * 1e6


def main() -> None:
    dev = torch.zeros(8192, dtype=torch.uint8, device="cuda")
    pinned = torch.zeros(8192, dtype=torch.uint8, pin_memory=True)
    view = pinned[:4096]
    small_dev = torch.zeros(2, 17, dtype=torch.int64, device="cuda")
    back = torch.zeros(64, dtype=torch.int64, pin_memory=True)
    back_view = back[:17].view(1, 17)
    event = torch.cuda.Event()
    stream = torch.cuda.current_stream()
    arr = pinned.numpy()
    ops = {
        "H2D copy_ (pinned slice, non_blocking)": lambda: dev[:4096].copy_(view, non_blocking=True),
        "H2D copy_ (whole pinned, non_blocking)": lambda: dev.copy_(pinned, non_blocking=True),
        "D2H copy_ (pinned view, non_blocking)": lambda: back_view.copy_(small_dev[:1], non_blocking=True),
        "event.record()": lambda: event.record(),
        "event.record(stream)": lambda: event.record(stream),
        "torch.cuda.current_stream()": lambda: torch.cuda.current_stream(),
        "dev[:4096] (slice)": lambda: dev[:4096],
        "numpy write 16 int64": lambda: arr[:128].view(np.int64).__setitem__(slice(None), 7),
        "tensor.tolist() [1, 17] pinned": lambda: back_view.tolist(),
        "event.synchronize() (done)": lambda: event.synchronize(),
        "event.query() (done)": lambda: event.query(),
    }
    with torch.inference_mode():
        for name, fn in ops.items():
            print(f"{name:<45} {cost(fn):7.2f} us")
    print("outside inference_mode:")
    for name in ("H2D copy_ (pinned slice, non_blocking)", "D2H copy_ (pinned view, non_blocking)"):
        print(f"{name:<45} {cost(ops[name]):7.2f} us")


if __name__ == "__main__":
    main()
