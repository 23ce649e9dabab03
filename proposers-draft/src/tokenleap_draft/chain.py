"""The draft's greedy chain: k - 1 one-token forwards, each fed the previous one's argmax on the device, with no
host sync until the drafts are read back once. On CUDA with the Triton kernels each forward is a captured graph
(one per padded batch size); elsewhere the same padded forwards run eagerly (the CPU tests' path).

Rows are padded to a bucket size; a row needs no more drafts after its own ``num_drafts``: its later steps write
to the null slot (slot 0 of block 0, which no request owns) at position 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM
from tokenleap.speculative.chain_inputs import chain_inputs
from tokenleap.speculative.graph_capture import BUCKETS, bucket_for, capture


class GreedyChain:
    def __init__(self, model: LlamaForCausalLM, kv_caches: Sequence[KVCache], block_size: int, max_seq_len: int,
                 backend: str, device: torch.device, max_blocks: int) -> None:
        self.model, self.kv, self.block_size = model, kv_caches, block_size
        self.max_seq_len, self.backend, self.device = max_seq_len, backend, device
        self.max_blocks = max_blocks
        self.graphed = device.type == "cuda" and backend == "triton"
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self._pool = None

    def bucket(self, rows: int) -> int | None:
        return bucket_for(rows)

    @torch.inference_mode()
    def run(self, first: torch.Tensor, rows: Sequence[tuple[int, Sequence[int], int]], steps: int) -> torch.Tensor:
        """first: [len(rows)] int64 first drafts (on the device) -> [len(rows), steps + 1] drafts, on the device."""
        b = len(rows)
        bucket = self.bucket(b) or b
        positions, slots, seq_lens, tables = chain_inputs(rows, steps, bucket, self.block_size)
        if self.graphed and bucket in BUCKETS:
            full = np.zeros((bucket, self.max_blocks), dtype=np.int32)
            full[:, : tables.shape[1]] = tables
            tables = full
        dev = {name: torch.as_tensor(a).to(self.device, non_blocking=True)
               for name, a in (("positions", positions), ("slots", slots), ("seq_lens", seq_lens),
                               ("tables", tables))}
        cur = torch.zeros(bucket, dtype=torch.int64, device=self.device)
        cur[:b] = first
        out = [cur[:b].clone()]
        for s in range(steps):
            if self.graphed and bucket in BUCKETS:
                graph, io = self.graph(bucket)
                io["ids"].copy_(cur)
                io["positions"].copy_(dev["positions"][s])
                io["slots"].copy_(dev["slots"][s])
                io["seq_lens"].copy_(dev["seq_lens"][s])
                io["tables"].copy_(dev["tables"])
                graph.replay()
                cur = io["argmax"].clone()
            else:
                cur = self._forward(cur, dev["positions"][s], dev["slots"][s], dev["seq_lens"][s], dev["tables"],
                                    seq_lens[s].tolist())
            out.append(cur[:b].clone())
        return torch.stack(out, dim=1)  # [b, steps + 1]

    def _forward(self, ids, positions, slots, seq_lens, tables, seq_lens_host: list[int]) -> torch.Tensor:
        """One token per row: argmax [rows] of the draft's logits."""
        rows = ids.shape[0]
        meta = AttentionMetadata(
            slot_mapping=slots, block_tables=tables,
            query_start_loc=torch.arange(rows + 1, dtype=torch.int32, device=ids.device), seq_lens=seq_lens,
            query_lens_host=[1] * rows, seq_lens_host=seq_lens_host, max_query_len=1, max_seq_len=self.max_seq_len,
            backend=self.backend)
        hidden, _ = self.model(ids, positions, self.kv, meta)
        return self.model.compute_logits(hidden).argmax(dim=-1)

    @torch.inference_mode()
    def graph(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]:
        """The bucket's captured one-token forward (captured on first use) and its static tensors: inputs ids,
        positions, slots, seq_lens [bucket], tables [bucket, max_blocks]; output argmax [bucket]."""
        if bucket not in self._graphs:
            io = {"ids": torch.zeros(bucket, dtype=torch.int64, device=self.device),
                  "positions": torch.zeros(bucket, dtype=torch.int64, device=self.device),
                  "slots": torch.zeros(bucket, dtype=torch.int64, device=self.device),
                  "seq_lens": torch.ones(bucket, dtype=torch.int32, device=self.device),
                  "tables": torch.zeros(bucket, self.max_blocks, dtype=torch.int32, device=self.device)}
            host_lens = [self.max_seq_len] * bucket  # unused by the Triton kernels, which read seq_lens

            def forward():
                return self._forward(io["ids"], io["positions"], io["slots"], io["seq_lens"], io["tables"], host_lens)

            graph, io["argmax"] = capture(forward, self._pool)
            self._pool = graph.pool()
            self._graphs[bucket] = (graph, io)
        return self._graphs[bucket]
