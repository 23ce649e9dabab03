"""A proposer's first forward of a step over inputs padded to ``bucket`` requests of ``q`` rows (``padded_inputs``):
on CUDA with the Triton kernels a captured graph per bucket (``q`` is fixed per proposer), elsewhere the same padded
forward run eagerly (the CPU tests' path). Method-agnostic: the proposer passes the forward itself (its model over
the padded rows, returning tensors of ``bucket`` rows) and, optionally, a ``prepare`` that fills buffers of its own
from the uploaded inputs before the replay (EAGLE: the target's hidden rows, whose tensors change from step to
step, gathered into a static buffer the graph reads).

Everything the forward reads lives in one static int64 device buffer per bucket (``FIELDS``: ids, positions,
slots, hidden rows to gather, rows to return, sequence lengths, query start offsets, block tables), filled by one
host-to-device copy from a staging buffer (pinned on CUDA) before the replay; the attention's int32 lengths and
tables are cast inside the forward (and so inside the graph).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tokenleap.model.attention import AttentionMetadata
from tokenleap.speculative.graph_capture import capture
from tokenleap.speculative.padded_inputs import FIELDS, Run, first_inputs, packed, packed_sizes, padded_bucket

# (the bucket's device inputs by name, their attention metadata) -> outputs of ``bucket`` rows each
Forward = Callable[[dict[str, torch.Tensor], AttentionMetadata], tuple[torch.Tensor, ...]]
# (bucket, the bucket's device inputs by name, filled) -> None: the proposer's own buffers filled for the replay
Prepare = Callable[[int, dict[str, torch.Tensor]], None]


class _Bucket:
    """One bucket's static buffers: the device int64 inputs and their named views, host staging of the same size,
    the event after the last copy out of the staging (so that it is not rewritten early), and, once captured, the
    graph and its outputs."""

    def __init__(self, bucket: int, q: int, width: int, device: torch.device) -> None:
        sizes = packed_sizes(bucket, q, width)
        self.buf = torch.zeros(sum(sizes), dtype=torch.int64, device=device)
        self.views = dict(zip(FIELDS, self.buf.split(sizes), strict=True))
        self.views["tables"] = self.views["tables"].view(bucket, width)
        self.bucket, self.q = bucket, q
        self.harmless()
        pin = device.type == "cuda"
        self.host = torch.zeros(self.buf.shape, dtype=torch.int64, pin_memory=pin)
        self.copied = torch.cuda.Event() if pin else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: tuple[torch.Tensor, ...] | None = None  # the graph's outputs

    def harmless(self) -> None:
        """Inputs for warm-up and capture: padded requests only (q queries at positions 0 .. q - 1 over the null
        block), every row writing the null slot and gathering hidden row 0."""
        self.buf.zero_()
        self.views["seq_lens"].fill_(self.q)
        self.views["query_start"].copy_(torch.arange(self.bucket + 1, dtype=torch.int64) * self.q)


class PaddedFirstForward:
    def __init__(self, forward: Forward, block_size: int, max_seq_len: int, backend: str, device: torch.device,
                 width: int, q: int, buckets: Sequence[int]) -> None:
        """``width``: blocks per padded block table (static); ``q``: the longest run that takes this path; a bucket
        of ``b`` requests has ``b * q`` rows; ``buckets``: the padded batch sizes, ascending."""
        self.forward, self.block_size, self.max_seq_len = forward, block_size, max_seq_len
        self.backend, self.device, self.width, self.q = backend, device, width, q
        self.buckets = tuple(buckets)
        self.graphed = device.type == "cuda" and backend == "triton"
        self._buckets: dict[int, _Bucket] = {}
        self._pool = None

    def bucket(self, runs: Sequence[Run]) -> int | None:
        """The padded batch size for these runs, or None when they take the unpadded path."""
        if any(len(r.block_ids) > self.width for r in runs):
            return None
        return padded_bucket(runs, self.q, self.buckets)

    @torch.inference_mode()
    def run(self, runs: Sequence[Run], drafting: Sequence[int], bucket: int, hidden_rows: Sequence[int] | None = None,
            prepare: Prepare | None = None) -> tuple[torch.Tensor, ...]:
        """Runs the forward over the runs padded to ``bucket`` (``first_inputs``); returns its outputs, whose
        first ``len(drafting)`` rows belong to the drafting runs (indices into ``runs``), in order. On CUDA these
        are the graph's output buffers, valid until the next run of this bucket."""
        x = first_inputs(runs, drafting, self.q, bucket, self.block_size, self.width, hidden_rows)
        b = self._bucket(bucket)
        graph = self.graph(bucket) if self.graphed else None
        if b.copied is not None:
            b.copied.synchronize()  # the last copy out of the staging buffer is done (long since, in practice)
        b.host.numpy()[:] = packed(x)
        b.buf.copy_(b.host, non_blocking=True)
        if b.copied is not None:
            b.copied.record()
        if prepare is not None:
            prepare(bucket, b.views)
        if graph is not None:
            graph.replay()
            return b.out
        return self._forward(b, x.seq_lens.tolist())

    @torch.inference_mode()
    def graph(self, bucket: int) -> torch.cuda.CUDAGraph:
        """The bucket's captured forward (captured on first use), replayed on what ``views(bucket)`` hold."""
        b = self._bucket(bucket)
        if b.graph is None:
            self._capture(b)
        return b.graph

    def views(self, bucket: int) -> dict[str, torch.Tensor]:
        """The bucket's static device inputs by name (``FIELDS``): ids, positions, slots, gather [bucket * q],
        last_rows, seq_lens [bucket], query_start [bucket + 1], tables [bucket, width]; all int64."""
        return self._bucket(bucket).views

    def captured(self) -> list[int]:
        """The buckets with a captured graph."""
        return sorted(b for b, x in self._buckets.items() if x.graph is not None)

    def used(self) -> list[int]:
        """The buckets that have run (or been captured), graphed or eager."""
        return sorted(self._buckets)

    def _bucket(self, bucket: int) -> _Bucket:
        if bucket not in self._buckets:
            self._buckets[bucket] = _Bucket(bucket, self.q, self.width, self.device)
        return self._buckets[bucket]

    def _forward(self, b: _Bucket, seq_lens_host: list[int]) -> tuple[torch.Tensor, ...]:
        """The padded forward. ``seq_lens_host``: the lengths the device buffer holds, for the torch attention (the
        Triton kernels read the device ones)."""
        io = b.views
        meta = AttentionMetadata(
            slot_mapping=io["slots"], block_tables=io["tables"].to(torch.int32),
            query_start_loc=io["query_start"].to(torch.int32), seq_lens=io["seq_lens"].to(torch.int32),
            query_lens_host=[self.q] * b.bucket, seq_lens_host=seq_lens_host, max_query_len=self.q,
            max_seq_len=self.max_seq_len, backend=self.backend)
        return tuple(self.forward(io, meta))

    def _capture(self, b: _Bucket) -> None:
        """Warm up (Triton compiles) and capture on the buffer's harmless initial inputs (null-slot writes only)."""
        host_lens = [self.q] * b.bucket  # unused by the Triton kernels
        b.harmless()
        graph, b.out = capture(lambda: self._forward(b, host_lens), self._pool)
        self._pool = graph.pool()
        b.graph = graph
