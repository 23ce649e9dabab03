"""The head's greedy chain: after the first draft, k - 1 one-token head steps, each fed (embed(previous draft),
the head's previous output) with the previous draft chosen by argmax on the device, and no host sync until the
drafts are read back once. On CUDA with the Triton kernels each step is a captured graph (one per padded batch
size); elsewhere the same padded steps run eagerly (the CPU tests' path).

Rows are padded to a bucket size; a row needs no more drafts after its own ``num_drafts``: its later steps write
to the null slot (slot 0 of block 0, which no request owns) at position 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tokenleap.model.attention import AttentionMetadata
from tokenleap.speculative.chain_inputs import chain_inputs
from tokenleap.speculative.graph_capture import BUCKETS, bucket_for, capture

# (ids [n] int64, g [n, hidden], positions [n] int64, meta) -> the head's output g [n, hidden]; writes the head's KV
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]
# g [n, hidden] -> [n] int64 target ids: the greedy draft
Pick = Callable[[torch.Tensor], torch.Tensor]


class HeadChain:
    """``step`` and ``pick`` are the head's (the proposer's): one paged head step and the greedy choice."""

    def __init__(self, step: Step, pick: Pick, block_size: int, max_len: int, backend: str, device: torch.device,
                 max_blocks: int) -> None:
        self.step, self.pick, self.block_size = step, pick, block_size
        self.max_len, self.backend, self.device = max_len, backend, device
        self.max_blocks = max_blocks  # the block tables' width in the graphs: ceil(max_len / block_size)
        self.graphed = device.type == "cuda" and backend == "triton"
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self._pool = None

    def bucket(self, rows: int) -> int | None:
        return bucket_for(rows)

    @torch.inference_mode()
    def run(self, g: torch.Tensor, first: torch.Tensor, rows: Sequence[tuple[int, Sequence[int], int]], steps: int
            ) -> torch.Tensor:
        """g: [len(rows), hidden] the head's output at each row's position P; first: [len(rows)] int64 the drafts
        picked from it (on the device) -> [len(rows), steps + 1] int64 drafts, on the device."""
        b = len(rows)
        if steps <= 0:
            return first[:, None]
        bucket = self.bucket(b) or b
        positions, slots, seq_lens, tables = chain_inputs(rows, steps, bucket, self.block_size)
        graphed = self.graphed and bucket in BUCKETS and tables.shape[1] <= self.max_blocks
        if graphed:
            full = np.zeros((bucket, self.max_blocks), dtype=np.int32)  # the graphs' static width
            full[:, : tables.shape[1]] = tables
            tables = full
        dev = {name: torch.as_tensor(a).to(self.device, non_blocking=True)
               for name, a in (("positions", positions), ("slots", slots), ("seq_lens", seq_lens),
                               ("tables", tables))}
        ids = torch.zeros(bucket, dtype=torch.int64, device=self.device)  # [bucket]
        ids[:b] = first
        h = g.new_zeros(bucket, g.shape[1])  # [bucket, hidden]
        h[:b] = g
        out = [first]
        for s in range(steps):
            if graphed:
                graph, io = self._graph(bucket, h)
                io["ids"].copy_(ids)
                io["g"].copy_(h)
                io["positions"].copy_(dev["positions"][s])
                io["slots"].copy_(dev["slots"][s])
                io["seq_lens"].copy_(dev["seq_lens"][s])
                io["tables"].copy_(dev["tables"])
                graph.replay()
                ids, h = io["argmax"], io["out"]  # read (copied into the inputs) before the next replay
            else:
                h = self.step(ids, h, dev["positions"][s],
                              self._meta(dev["slots"][s], dev["tables"], dev["seq_lens"][s], seq_lens[s].tolist()))
                ids = self.pick(h)
            out.append(ids[:b].clone())
        return torch.stack(out, dim=1)  # [b, steps + 1]

    def _meta(self, slots, tables, seq_lens, seq_lens_host: list[int]) -> AttentionMetadata:
        """One query token per row."""
        rows = slots.shape[0]
        return AttentionMetadata(
            slot_mapping=slots, block_tables=tables,
            query_start_loc=torch.arange(rows + 1, dtype=torch.int32, device=slots.device), seq_lens=seq_lens,
            query_lens_host=[1] * rows, seq_lens_host=seq_lens_host, max_query_len=1, max_seq_len=self.max_len,
            backend=self.backend)

    def _graph(self, bucket: int, like: torch.Tensor):
        """The captured step of ``bucket`` rows: inputs ids, g ([bucket, hidden] like ``like``), positions, slots,
        seq_lens, tables; outputs out (the head's output) and argmax (the next drafts)."""
        if bucket not in self._graphs:
            dev = self.device
            io = {"ids": torch.zeros(bucket, dtype=torch.int64, device=dev),
                  "g": torch.zeros(bucket, like.shape[1], dtype=like.dtype, device=dev),
                  "positions": torch.zeros(bucket, dtype=torch.int64, device=dev),
                  "slots": torch.zeros(bucket, dtype=torch.int64, device=dev),  # warm-up and capture: null slot
                  "seq_lens": torch.ones(bucket, dtype=torch.int32, device=dev),
                  "tables": torch.zeros(bucket, self.max_blocks, dtype=torch.int32, device=dev)}
            host_lens = [self.max_len] * bucket  # unused by the Triton kernels, which read seq_lens

            def forward():
                out = self.step(io["ids"], io["g"], io["positions"],
                                self._meta(io["slots"], io["tables"], io["seq_lens"], host_lens))
                return out, self.pick(out)

            graph, (io["out"], io["argmax"]) = capture(forward, self._pool)
            self._pool = graph.pool()
            self._graphs[bucket] = (graph, io)
        return self._graphs[bucket]
