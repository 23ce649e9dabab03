"""CUDA graphs of the decode / verify forward, for a table of padded batch sizes and query lengths.

In a graphed step every request feeds exactly ``q`` tokens: its last token, its drafts, then padding
(token 0 written to the null block, never attended to by a real query since attention is causal).
Padded requests have an all-null block table. The graph covers the model forward, the logits of
every row, and greedy verification (argmax, drafts accepted while equal to it), so a plain-greedy step needs
no kernel outside the graph; other sampling runs after it on the device from the logits. Prefill runs
eagerly.

Static inputs live in two device buffers (int64: ids, positions, slots, drafts per request; int32: block
tables, query start offsets, sequence lengths) filled by one host-to-device copy each from pinned staging
buffers. The staging buffers come in two sets used in turn, so that the inputs of the next step can be
written while the copy of the current step's inputs may still be queued behind the GPU.

With ``use_cuda_graphs=False`` nothing is captured and every run executes the same padded forward eagerly:
the whole graphed path (padding, null-block writes, in-graph verification, inputs fed from a step still in
flight) then runs on any device, which is how the CPU test suite covers it.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM
from tokenleap.spec.verify import verify_greedy


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16))
    out = [s for s in sizes if s < max_num_seqs] + [max_num_seqs]
    return sorted(set(out))


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, kv_caches: list[KVCache], max_num_seqs: int,
                 query_lens: list[int], max_blocks_per_req: int, max_model_len: int, backend: str,
                 device: torch.device, use_cuda_graphs: bool = True) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.batch_sizes = graph_batch_sizes(max_num_seqs)
        self.query_lens = sorted(set(query_lens))
        self.max_blocks = max_blocks_per_req
        self.max_model_len = max_model_len
        self.backend = backend
        self.device = device
        self.use_cuda_graphs = use_cuda_graphs
        max_b, max_q = self.batch_sizes[-1], self.query_lens[-1]
        self.buf64 = torch.zeros(3 * max_b * max_q + max_b, dtype=torch.int64, device=device)
        self.buf32 = torch.zeros(max_b * max_blocks_per_req + 2 * max_b + 1, dtype=torch.int32, device=device)
        pin = device.type == "cuda"
        self.staging = [
            (torch.zeros(self.buf64.shape, dtype=torch.int64, pin_memory=pin),
             torch.zeros(self.buf32.shape, dtype=torch.int32, pin_memory=pin))
            for _ in range(2)
        ]
        self._turn = 0
        # Where a step's greedy result lands on the host: two pinned buffers, used in turn, so that one step's
        # result can be copied while the previous one is still being read.
        self.readback = [torch.zeros(max_b * (max_q + 1), dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._readback_turn = 0
        # (b, q) -> (graph, logits [b * q, vocab], greedy [b, q + 1]: argmax per row, then tokens emitted)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph | None, torch.Tensor, torch.Tensor]] = {}
        self.pool = None

    def _views(self, b: int, q: int):
        """Layout per graph: int64 [ids | positions | slots] (b*q each) [num_drafts (b)]; int32
        [query_start_loc (b+1) | seq_lens (b) | block tables (b * max_blocks)]. Only the used prefix is
        copied each step."""
        n, mb = b * q, self.max_blocks
        ids, positions, slots = self.buf64[:n], self.buf64[n : 2 * n], self.buf64[2 * n : 3 * n]
        num_drafts = self.buf64[3 * n : 3 * n + b]
        qsl = self.buf32[: b + 1]
        seq_lens = self.buf32[b + 1 : 2 * b + 1]
        tables = self.buf32[2 * b + 1 : 2 * b + 1 + b * mb].view(b, mb)
        return ids, positions, slots, num_drafts, tables, qsl, seq_lens

    def _forward(self, b: int, q: int, seq_lens_host: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded forward. Captured, it knows no host lengths (``seq_lens_host`` None: the Triton kernels
        read the device ones); run eagerly, it gets the real ones, which the torch reference needs."""
        ids, positions, slots, num_drafts, tables, qsl, seq_lens = self._views(b, q)
        meta = AttentionMetadata(slot_mapping=slots, block_tables=tables, query_start_loc=qsl, seq_lens=seq_lens,
                                 query_lens_host=[q] * b, seq_lens_host=seq_lens_host or [self.max_model_len] * b,
                                 max_query_len=q, max_seq_len=self.max_model_len, backend=self.backend)
        hidden, _ = self.model(ids, positions, self.kv_caches, meta)
        logits = self.model.compute_logits(hidden)  # [b * q, vocab]
        argmax, emitted = verify_greedy(logits.argmax(dim=-1).view(b, q), ids.view(b, q)[:, 1:], num_drafts)
        return logits, torch.cat([argmax, emitted[:, None]], dim=1)  # [b, q + 1]

    def read_back(self, greedy: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Queue the copy of the first ``n`` rows of a greedy result [b, q + 1] to the host; returns the host
        tensor [n, q + 1] and the event after which it holds them (None on CPU, where it already does)."""
        width = greedy.shape[1]
        host = self.readback[self._readback_turn][: n * width].view(n, width)
        self._readback_turn ^= 1
        host.copy_(greedy[:n], non_blocking=True)
        if self.device.type != "cuda":
            return host, None
        event = torch.cuda.Event()
        event.record()
        return host, event

    @torch.inference_mode()
    def capture(self) -> None:
        if not self.use_cuda_graphs:
            return
        for q in self.query_lens:
            for b in reversed(self.batch_sizes):
                self._fill_dummy(b, q)
                for _ in range(2):  # warm up: Triton compiles, cuBLAS picks kernels
                    self._forward(b, q)
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    logits, greedy = self._forward(b, q)
                self.pool = graph.pool()
                self.graphs[(b, q)] = (graph, logits, greedy)
        torch.cuda.synchronize(self.device)

    def _fill_dummy(self, b: int, q: int) -> None:
        host64, host32 = self.staging[0]
        host64.zero_()
        host32.zero_()
        n = b * q
        host64[n : 2 * n] = torch.arange(q).repeat(b)
        host32[: b + 1] = torch.arange(b + 1) * q
        host32[b + 1 : 2 * b + 1] = q
        self.buf64.copy_(host64, non_blocking=True)
        self.buf32.copy_(host32, non_blocking=True)

    def pick(self, num_reqs: int, max_q: int) -> tuple[int, int] | None:
        q = next((x for x in self.query_lens if x >= max_q), None)
        b = next((x for x in self.batch_sizes if x >= num_reqs), None)
        return None if q is None or b is None else (b, q)

    def run(self, b: int, q: int, ids: np.ndarray, positions: np.ndarray, slots: np.ndarray,
            num_drafts: np.ndarray, tables: np.ndarray, seq_lens: np.ndarray,
            fed_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs padded to ``b`` requests of ``q`` tokens (host arrays); returns logits [b * q, vocab] and
        the greedy result [b, q + 1] (argmax per row, then how many tokens greedy verification emits).

        ``fed_ids`` [n] (a device tensor, q == 1 only): the first ``n`` requests' input tokens, taken on the
        device from a step whose result the host has not read yet, in place of ``ids[:n]``."""
        n, mb = b * q, self.max_blocks
        host64, host32 = self.staging[self._turn]
        self._turn ^= 1
        h64 = host64.numpy()
        h64[:n], h64[n : 2 * n], h64[2 * n : 3 * n], h64[3 * n : 3 * n + b] = ids, positions, slots, num_drafts
        h32 = host32.numpy()
        h32[: b + 1] = np.arange(b + 1) * q
        h32[b + 1 : 2 * b + 1] = seq_lens
        h32[2 * b + 1 : 2 * b + 1 + b * mb] = tables.reshape(-1)
        self.buf64[: 3 * n + b].copy_(host64[: 3 * n + b], non_blocking=True)
        self.buf32[: 2 * b + 1 + b * mb].copy_(host32[: 2 * b + 1 + b * mb], non_blocking=True)
        if fed_ids is not None:
            assert q == 1, "fed input tokens are only for 1-token decode steps"
            self.buf64[: fed_ids.shape[0]].copy_(fed_ids)
        if not self.use_cuda_graphs:
            return self._forward(b, q, seq_lens.tolist())
        graph, logits, greedy = self.graphs[(b, q)]
        graph.replay()
        return logits, greedy
