"""What proposers' captured CUDA graphs share: the padded batch-size buckets and the capture itself
(method-agnostic: draft_model's and EAGLE's chains and first forwards, the MLP speculator's stages).

A proposer drafting on the device pays one kernel launch per op per draft step; replaying one captured graph per
padded batch size pays one launch for all of them. Rows are padded up to the next bucket so a few graphs serve
every batch; a batch above the last bucket runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def bucket_for(rows: int, buckets: Sequence[int] = BUCKETS) -> int | None:
    """The smallest bucket holding ``rows`` rows, None above the last one."""
    return next((b for b in buckets if b >= rows), None)


def capture(forward: Callable[[], Any], pool=None, warmup: int = 2) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Run ``forward`` ``warmup`` times on a side stream (Triton compiles, cuBLAS picks its kernels, the caching
    allocator settles), then capture one call of it into a graph that allocates from ``pool`` (pass the
    previous graph's ``graph.pool()`` so the graphs of one head share their memory: they never run at once).
    Returns the graph and what the captured call returned: its output tensors, rewritten by each replay.
    ``forward`` must read its inputs from static tensors the caller fills before each replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = forward()
    return graph, out


class EagerReplay:
    """Where no CUDA graph can be captured (CPU): what ``capture`` gives, made of eager calls. ``replay`` runs
    ``forward`` again and copies its outputs into the tensors the first call returned, as a graph's replay
    rewrites its outputs in place. The static-buffer path of a head is then the same on CPU as on CUDA, graph
    capture aside, and CPU tests exercise it."""

    def __init__(self, forward: Callable[[], Any], out: Any) -> None:
        self.forward, self.out = forward, out

    def replay(self) -> None:
        new = self.forward()
        for dst, src in zip(_tensors(self.out), _tensors(new), strict=True):
            dst.copy_(src)

    def pool(self) -> None:
        return None


def capture_or_eager(forward: Callable[[], Any], device: torch.device, pool=None):
    """``capture`` on CUDA; elsewhere an ``EagerReplay`` of ``forward`` (and its first outputs)."""
    if device.type == "cuda":
        return capture(forward, pool)
    out = forward()
    return EagerReplay(forward, out), out


def _tensors(out: Any) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)
