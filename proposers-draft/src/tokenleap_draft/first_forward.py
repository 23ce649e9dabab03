"""The draft's first forward of a step (catch-up over the tokens the target kept, then the last token, whose logits
give the first draft) over inputs padded to ``bucket`` requests of ``q`` rows (``first_inputs``): on CUDA with the
Triton kernels a captured graph per bucket (``q`` is fixed per proposer), elsewhere the same padded forward run
eagerly (the CPU tests' path).

Everything the forward reads lives in two static device buffers per bucket (int64: ids, positions, slots, rows
to gather; int32: sequence lengths, query start offsets, block tables), each filled by one host-to-device copy
from a staging buffer (pinned on CUDA) before the replay.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM

from tokenleap_draft.chain import BUCKETS
from tokenleap_draft.first_inputs import first_inputs, packed, packed_sizes, padded_bucket
from tokenleap_draft.forward import Run


class _Bucket:
    """One bucket's static buffers: device int64 / int32 inputs and their named views, host staging of the same
    sizes, the event after the last copy out of the staging (so that it is not rewritten early), and, once
    captured, the graph and its output."""

    def __init__(self, bucket: int, q: int, width: int, device: torch.device) -> None:
        sizes64, sizes32 = packed_sizes(bucket, q, width)
        self.i64 = torch.zeros(sum(sizes64), dtype=torch.int64, device=device)
        self.i32 = torch.zeros(sum(sizes32), dtype=torch.int32, device=device)
        ids, positions, slots, last_rows = self.i64.split(sizes64)
        seq_lens, query_start, tables = self.i32.split(sizes32)
        self.views = dict(ids=ids, positions=positions, slots=slots, last_rows=last_rows, seq_lens=seq_lens,
                          query_start=query_start, tables=tables.view(bucket, width))
        self.bucket, self.q = bucket, q
        self.harmless()
        pin = device.type == "cuda"
        self.host64 = torch.zeros(self.i64.shape, dtype=torch.int64, pin_memory=pin)
        self.host32 = torch.zeros(self.i32.shape, dtype=torch.int32, pin_memory=pin)
        self.copied = torch.cuda.Event() if pin else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # [bucket, vocab] fp32, the graph's output

    def harmless(self) -> None:
        """Inputs for warm-up and capture: padded requests only (q queries at positions 0 .. q - 1 over the null
        block), every row writing the null slot."""
        self.i64.zero_()
        self.i32.zero_()
        self.views["seq_lens"].fill_(self.q)
        self.views["query_start"].copy_(torch.arange(self.bucket + 1, dtype=torch.int32) * self.q)


class FirstForward:
    def __init__(self, model: LlamaForCausalLM, kv_caches: Sequence[KVCache], block_size: int, max_seq_len: int,
                 backend: str, device: torch.device, width: int, q: int) -> None:
        """``width``: blocks per padded block table (static); ``q``: the longest run that takes this path (1 + k
        tokens a verify step kept and the last token: k + 2); a bucket of ``b`` requests has ``b * q`` rows."""
        self.model, self.kv, self.block_size = model, kv_caches, block_size
        self.max_seq_len, self.backend, self.device = max_seq_len, backend, device
        self.width, self.q = width, q
        self.graphed = device.type == "cuda" and backend == "triton"
        self._buckets: dict[int, _Bucket] = {}
        self._pool = None

    def bucket(self, runs: Sequence[Run]) -> int | None:
        """The padded batch size for these runs, or None when they take the unpadded path."""
        if any(len(r.block_ids) > self.width for r in runs):
            return None
        return padded_bucket(runs, self.q, BUCKETS)

    @torch.inference_mode()
    def run(self, runs: Sequence[Run], drafting: Sequence[int], bucket: int) -> torch.Tensor:
        """Writes the runs' keys and values; returns the logits [len(drafting), vocab] fp32 of the drafting runs'
        (indices into ``runs``) last tokens. On CUDA the result is the graph's output buffer, valid until the next
        run of this bucket."""
        x = first_inputs(runs, drafting, self.q, bucket, self.block_size, self.width)
        b = self._bucket(bucket)
        graph = self.graph(bucket) if self.graphed else None
        i64, i32 = packed(x)
        if b.copied is not None:
            b.copied.synchronize()  # the last copy out of the staging buffers is done (long since, in practice)
        b.host64.numpy()[:] = i64
        b.host32.numpy()[:] = i32
        b.i64.copy_(b.host64, non_blocking=True)
        b.i32.copy_(b.host32, non_blocking=True)
        if b.copied is not None:
            b.copied.record()
        if graph is not None:
            graph.replay()
            logits = b.logits
        else:
            logits = self._forward(b, [self.q] * bucket, x.seq_lens.tolist())
        return logits[: len(drafting)]

    @torch.inference_mode()
    def graph(self, bucket: int) -> torch.cuda.CUDAGraph:
        """The bucket's captured forward (captured on first use), replayed on what ``views(bucket)`` hold."""
        b = self._bucket(bucket)
        if b.graph is None:
            self._capture(bucket, b)
        return b.graph

    def views(self, bucket: int) -> dict[str, torch.Tensor]:
        """The bucket's static device inputs by name: ids, positions, slots [bucket * q] int64, last_rows [bucket]
        int64, seq_lens [bucket] int32, query_start [bucket + 1] int32, tables [bucket, width] int32."""
        return self._bucket(bucket).views

    def captured(self) -> list[int]:
        """The buckets with a captured graph."""
        return sorted(b for b, x in self._buckets.items() if x.graph is not None)

    def _bucket(self, bucket: int) -> _Bucket:
        if bucket not in self._buckets:
            self._buckets[bucket] = _Bucket(bucket, self.q, self.width, self.device)
        return self._buckets[bucket]

    def _forward(self, b: _Bucket, query_lens_host: list[int], seq_lens_host: list[int]) -> torch.Tensor:
        """The padded forward: [bucket, vocab] fp32 logits of the rows ``last_rows`` names. ``query_lens_host``,
        ``seq_lens_host``: the lengths the device buffers hold, for the torch attention (the Triton kernels read
        the device ones)."""
        io = b.views
        meta = AttentionMetadata(
            slot_mapping=io["slots"], block_tables=io["tables"], query_start_loc=io["query_start"],
            seq_lens=io["seq_lens"], query_lens_host=query_lens_host, seq_lens_host=seq_lens_host,
            max_query_len=self.q, max_seq_len=self.max_seq_len, backend=self.backend)
        hidden, _ = self.model(io["ids"], io["positions"], self.kv, meta)  # [bucket * q, hidden]
        return self.model.compute_logits(hidden.index_select(0, io["last_rows"]))  # [bucket, vocab]

    def _capture(self, bucket: int, b: _Bucket) -> None:
        """Warm up (Triton compiles) and capture on the buffers' harmless initial inputs (null-slot writes only)."""
        host_lens = [self.q] * bucket  # unused by the Triton kernels
        b.harmless()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(b, host_lens, host_lens)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            b.logits = self._forward(b, host_lens, host_lens)
        self._pool = graph.pool()
        b.graph = graph
