"""CUDA graphs of the decode / verify forward, for a table of padded batch sizes and query lengths.

In a graphed step every request feeds exactly ``q`` tokens: its last token, its drafts, then padding
(token 0 written to the null block, never attended to by a real query since attention is causal).
Padded requests have an all-null block table. The graphs cover the model forward, the logits of
every row, and greedy verification (argmax, drafts accepted while equal to it), so a plain-greedy step needs
no kernel outside them; other sampling runs after them on the device from the logits.

A step that is one request's prefill chunk of at most 512 tokens runs through a prefill graph: batch 1, the
chunk padded to the next bucket (32, 64, ..., 512) the same way, logits only for the chunk's last real token
(its row travels in the ``num_drafts`` field). Other prefills (longer chunks, several requests, a chunk whose
padding would end past max_model_len) run eagerly; no bucket is longer than max_model_len.

Each (batch, q) forward is captured as a few consecutive graphs (layer segments) rather than one: launching a
graph costs host time that grows with its size, and while the GPU runs one segment the host launches the
next. Verify graphs (q > 1) run on an idle GPU when the proposer needed the previous step's tokens, so their
first segment is one layer and the GPU waits only for a one-layer launch (then two equal segments:
``segment_bounds``). 1-token graphs are mostly launched behind a running step (below); for them three equal
segments measured fastest (docs/performance-log.md, "Measurements behind the code").

Static inputs live in one device byte buffer (int64: ids, positions, slots, drafts per request, feed flags,
token limits; int32: query start offsets, sequence lengths, block tables; each field 64-byte aligned, at offsets
that depend on (batch, q)), filled by ONE host-to-device copy per step from a pinned staging buffer. Staging
buffers come in two, used in turn, so the inputs of the next step can be written while the copy of the current
step's inputs may still be queued behind the GPU.

A request whose feed flag is set takes its input token on the device from the previous 1-token step's argmax
(``last_tokens``): that is how a step is launched before the host has read the previous one back. With a device
drafter (the proposer's, ``tokenleap_plugins.DeviceDrafter``), a verify step's fed rows go further: the graph's
first kernel(s), the drafter's, read the previous step's emitted tokens (``last_verify``, written by every graph's
head) and write the row's ids, positions, slots, sequence length and draft count in place, so a verify step too
can be launched behind the (decode or verify) step before it.

With ``use_cuda_graphs=False`` nothing is captured and every run executes the same padded segments eagerly:
the whole graphed path (padding, null-block writes, in-graph verification, fed tokens) then runs on any
device, which is how the CPU test suite covers it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from tokenleap_plugins import DeviceDrafter, DeviceDraftStep

from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM, hidden_state_boundaries


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16))
    out = [s for s in sizes if s < max_num_seqs] + [max_num_seqs]
    return sorted(set(out))


PREFILL_BUCKETS = (32, 64, 128, 256, 512)


def prefill_buckets(max_num_batched_tokens: int) -> list[int]:
    """Token counts of the one-request prefill graphs: chunks up to 512 tokens (a chat turn, a prompt's tail
    after a prefix-cache hit) pay one graph launch instead of a few hundred eager kernel launches (SmolLM2 on an
    H100: 11 ms of host time for a 150-token prefill whose kernels take 1 ms). Longer chunks run eagerly."""
    return [q for q in PREFILL_BUCKETS if q <= max_num_batched_tokens]


def segment_bounds(num_layers: int) -> list[int]:
    """Layer boundaries of verify-graph segments, [0, ..., num_layers]: one layer, then the rest in two equal
    segments. A verify step launched on an idle GPU waits only for the one-layer launch, and the next segment is
    launched while that layer runs; a verify step launched behind the step in flight (device drafting) pays a
    short GPU gap per segment boundary (``tests/benchmarks/verify_segments.py`` compares splits)."""
    return sorted({0, min(1, num_layers), 1 + (num_layers - 1) // 2, num_layers})


def equal_bounds(num_layers: int, num_segments: int) -> list[int]:
    """Layer boundaries of ``num_segments`` near-equal segments (fewer if there are fewer layers)."""
    s = max(1, min(num_segments, num_layers))
    return [round(i * num_layers / s) for i in range(s + 1)]


class GraphKernels(NamedTuple):
    """The graphed step's own ops, beyond the model's: Triton kernels, or their torch references (any device)."""

    embed_fed: Callable  # kernels/fused_ref.py: embed_fed_ref
    greedy_head: Callable  # kernels/greedy_ref.py: greedy_head_ref


def graph_kernels(backend: str) -> GraphKernels:
    if backend == "triton":
        from tokenleap.kernels.triton_fused import embed_fed
        from tokenleap.kernels.triton_greedy import greedy_head

        return GraphKernels(embed_fed, greedy_head)
    from tokenleap.kernels.fused_ref import embed_fed_ref
    from tokenleap.kernels.greedy_ref import greedy_head_ref

    return GraphKernels(embed_fed_ref, greedy_head_ref)


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, kv_caches: list[KVCache], max_num_seqs: int,
                 query_lens: list[int], max_blocks_per_req: int, max_model_len: int, backend: str,
                 device: torch.device, use_cuda_graphs: bool = True,
                 decode_bounds: list[int] | None = None, verify_bounds: list[int] | None = None,
                 prefill_query_lens: list[int] = (), drafter: DeviceDrafter | None = None,
                 block_size: int = 16, hidden_state_layers: tuple[int, ...] = ()) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.batch_sizes = graph_batch_sizes(max_num_seqs)
        self.query_lens = sorted(set(query_lens))
        # buckets of one-request prefill graphs, none longer than max_model_len: a chunk's padded positions and
        # sequence length must stay inside the RoPE table and the block table, which are sized by it (capture runs
        # each bucket from position 0)
        self.prefill_query_lens = sorted({q for q in prefill_query_lens if q <= max_model_len})
        self.max_blocks = max_blocks_per_req
        self.max_model_len = max_model_len
        self.backend = backend
        self.kernels = graph_kernels(backend)
        # hidden states a proposer reads: each graph leaves them in state["aux"] (layer -> [b * q, hidden])
        self.wanted = hidden_state_boundaries(hidden_state_layers, len(model.layers))
        self.device = device
        self.use_cuda_graphs = use_cuda_graphs
        num_layers = len(model.layers)
        # layer segments, one graph each: for 1-token graphs, and for verify graphs
        self.decode_bounds = decode_bounds or equal_bounds(num_layers, 3)
        self.verify_bounds = verify_bounds or segment_bounds(num_layers)
        max_b, max_q = self.batch_sizes[-1], self.query_lens[-1]
        nbytes = max([self._nbytes(b, q) for b in self.batch_sizes for q in self.query_lens]
                     + [self._nbytes(1, q) for q in self.prefill_query_lens])
        self.buf = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        pin = device.type == "cuda"
        self.staging = [torch.zeros(nbytes, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        self._turn = 0
        # (turn, b, q) -> (numpy views of the staging fields, staging bytes, device bytes, query start offsets)
        self._staged: dict[tuple[int, int, int], tuple[dict[str, np.ndarray], torch.Tensor, torch.Tensor,
                                                         np.ndarray]] = {}
        self._pending: tuple | None = None  # what the last stage() handed out, for replay_staged()
        self.last_tokens = torch.zeros(max_b, dtype=torch.int64, device=device)  # argmax of the last 1-token step
        # Where a step's greedy result lands on the host: two pinned buffers, used in turn, so that one step's
        # result can be copied while the previous one is still being read.
        self.readback = [torch.zeros(max_b * (max_q + 2), dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._readback_turn = 0
        self._events = [torch.cuda.Event() for _ in range(2)] if device.type == "cuda" else None
        # Device drafting: verify steps whose rows are flagged to feed are drafted on the device by the proposer's
        # drafter from the previous step's tokens (``last_verify``), so they can be launched behind the step before
        # them. None: verify steps take the host's drafts only.
        self.drafter = drafter if max_q > 1 else None
        self.block_size = block_size
        # the hidden states a drafter reads (the previous step's, like ``last_verify``): layer -> [max_b, max_q, H],
        # copied by every graph's head; only when the proposer asked for hidden states and drafts on the device
        self.last_hidden: dict[int, torch.Tensor] = {}
        if self.drafter is not None:
            self.last_verify = torch.zeros(max_b, max_q + 2, dtype=torch.int64, device=device)
            dtype = model.embed_tokens.weight.dtype
            self.last_hidden = {layer: torch.zeros(max_b, max_q, model.cfg.hidden_size, dtype=dtype, device=device)
                                for layer in hidden_state_layers}
        # (b, q) -> (segment graphs, their state: the tensors passed between segments, kept alive for the graphs,
        # and the outputs "logits" [b * q, vocab] and "greedy" [b, q + 2]: argmax per row, then tokens emitted,
        # then drafts verified)
        self.graphs: dict[tuple[int, int], tuple[list[torch.cuda.CUDAGraph], dict]] = {}
        # q -> the same for a one-request prefill chunk padded to q tokens ("logits" of its last real row only)
        self.prefill_graphs: dict[int, tuple[list[torch.cuda.CUDAGraph], dict]] = {}
        self.pool = None
        self._eager_aux: dict[int, torch.Tensor] = {}  # the last eager run's hidden states (use_cuda_graphs=False)

    def _layout(self, b: int, q: int) -> dict[str, tuple[int, int, torch.dtype]]:
        """Field -> (byte offset, elements, dtype) of a (b, q) step's inputs in the byte buffer. Every field
        starts on a 64-byte boundary, so the kernels see aligned pointers whatever the shape."""
        n = b * q
        fields = [("ids", n, torch.int64), ("positions", n, torch.int64), ("slots", n, torch.int64),
                  ("num_drafts", b, torch.int64), ("feed", b, torch.int64), ("limits", b, torch.int64),
                  ("qsl", b + 1, torch.int32),
                  ("seq_lens", b, torch.int32), ("tables", b * self.max_blocks, torch.int32)]
        out, offset = {}, 0
        for name, count, dtype in fields:
            out[name] = (offset, count, dtype)
            offset += -(-count * dtype.itemsize // 64) * 64
        return out

    def _nbytes(self, b: int, q: int) -> int:
        offset, count, dtype = self._layout(b, q)["tables"]
        return offset + count * dtype.itemsize

    def _views(self, b: int, q: int, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fields of a (b, q) step as views of ``buf`` (the device buffer or a staging buffer)."""
        views = {name: buf[o : o + c * t.itemsize].view(t) for name, (o, c, t) in self._layout(b, q).items()}
        views["tables"] = views["tables"].view(b, self.max_blocks)
        return views

    def bounds(self, q: int) -> list[int]:
        return self.decode_bounds if q == 1 else self.verify_bounds

    def _segments(self, b: int, q: int, seq_lens_host: list[int] | None = None,
                  prefill: bool = False, draft: bool = True) -> tuple[list[Callable], dict]:
        """The padded forward as consecutive stages passing tensors through ``state``; the last one leaves
        ``state["logits"]`` [b * q, vocab] (the model's dtype) and ``state["greedy"]`` [b, q + 2]. Captured, it
        knows no host lengths (the Triton kernels read the device ones); run eagerly, it gets the real ones,
        which the torch reference needs. ``prefill``: each request's ``num_drafts`` field holds the row of its
        last real token, and only those rows get logits: ``state["logits"]`` [b, vocab] fp32, no ``greedy`` (a
        prefill is sampled from its logits). ``draft``: the first stage drafts the fed rows of a verify step on the
        device (when device drafting is on); the eager path does that before it reads the lengths, and passes
        False."""
        v = self._views(b, q, self.buf)
        ids, positions, slots, num_drafts, feed = v["ids"], v["positions"], v["slots"], v["num_drafts"], v["feed"]
        tables, qsl, seq_lens = v["tables"], v["qsl"], v["seq_lens"]
        meta = AttentionMetadata(slot_mapping=slots, block_tables=tables, query_start_loc=qsl, seq_lens=seq_lens,
                                 query_lens_host=[q] * b, seq_lens_host=seq_lens_host or [self.max_model_len] * b,
                                 max_query_len=q, max_seq_len=self.max_model_len, backend=self.backend)
        model, bounds, state = self.model, self.bounds(q), {"aux": {}}

        def layers(i: int) -> None:
            if i == 0 and draft and q > 1 and self.drafter is not None:  # fed rows draft here, others kept
                self._draft_on_device(b, q, v)
            if i == 0:  # on a 1-token step, requests flagged to feed take the previous step's argmax
                fed = (feed, self.last_tokens[:b]) if q == 1 else (None, None)
                state["x"] = self.kernels.embed_fed(model.embed_tokens.weight, ids, *fed)  # [b * q, hidden]
                state["residual"] = None
            state["x"], state["residual"] = model.run_layers(state["x"], state["residual"], positions,
                                                             self.kv_caches, meta, bounds[i], bounds[i + 1],
                                                             self.wanted, state["aux"])

        def head() -> None:
            hidden = model.final_norm(state["x"], state["residual"])  # [b * q, hidden]
            if prefill:
                last = hidden.view(b, q, -1)[torch.arange(b, device=hidden.device), num_drafts]  # [b, hidden]
                state["logits"], state["greedy"] = model.compute_logits(last), None  # [b, vocab]
                return
            logits = model.raw_logits(hidden)  # [b * q, vocab] in the model's dtype
            # argmax and greedy verification; the copies a step launched behind this one reads: a 1-token step's
            # argmax (fed input) and, with device drafting, the tokens a verify step appends to the histories
            greedy = self.kernels.greedy_head(logits, ids, num_drafts, q, self.last_tokens if q == 1 else None,
                                              self.last_verify if self.drafter is not None else None)
            for layer, kept in self.last_hidden.items():  # [b * q, H] -> the drafter's copy [:b, :q]
                kept[:b, :q].copy_(state["aux"][layer].view(b, q, -1))
            state["logits"], state["greedy"] = logits, greedy

        stages: list[Callable] = [lambda i=i: layers(i) for i in range(len(bounds) - 1)]
        last = stages[-1]
        stages[-1] = lambda: (last(), head())
        return stages, state

    def _draft_on_device(self, b: int, q: int, v: dict[str, torch.Tensor]) -> None:
        """The fed rows' inputs of a (b, q) verify step, drafted by the proposer's device drafter."""
        self.drafter.draft(DeviceDraftStep(
            last=self.last_verify, feed=v["feed"], limits=v["limits"], tables=v["tables"], ids=v["ids"],
            positions=v["positions"], slots=v["slots"], seq_lens=v["seq_lens"], num_drafts=v["num_drafts"], q=q,
            block_size=self.block_size, hidden_states=self.last_hidden))

    def load_histories(self, histories: list[list[int]]) -> None:
        """Set the token history of graph rows 0.. (one list per row) for device drafting, queued on the stream."""
        self.drafter.load_histories(histories)

    def read_back(self, greedy: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Queue the copy of the first ``n`` rows of a greedy result [b, q + 2] to the host; returns the host
        tensor [n, q + 2] and the event after which it holds them (None on CPU, where it already does)."""
        turn, width = self._readback_turn, greedy.shape[1]
        self._readback_turn ^= 1
        host = self.readback[turn][: n * width].view(n, width)
        host.copy_(greedy[:n], non_blocking=True)
        if self._events is None:
            return host, None
        event = self._events[turn]  # in turn with the buffer: reused once that one was read
        event.record()
        return host, event

    @torch.inference_mode()
    def capture(self) -> None:
        if not self.use_cuda_graphs:
            return
        for q in self.query_lens:
            for b in reversed(self.batch_sizes):
                self.graphs[(b, q)] = self._capture(b, q)
        for q in reversed(self.prefill_query_lens):
            self.prefill_graphs[q] = self._capture(1, q, prefill=True)
        torch.cuda.synchronize(self.device)

    def _capture(self, b: int, q: int, prefill: bool = False):
        self._fill_dummy(b, q)
        stages, state = self._segments(b, q, prefill=prefill)
        for _ in range(2):  # warm up: Triton compiles, cuBLAS picks kernels
            for stage in stages:
                stage()
        torch.cuda.synchronize(self.device)
        graphs = []
        for stage in stages:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                stage()
            self.pool = graph.pool()
            graphs.append(graph)
        return graphs, state

    def _fill_dummy(self, b: int, q: int) -> None:
        host = self.staging[0]
        host.zero_()
        v = self._views(b, q, host)
        v["positions"].copy_(torch.arange(q).repeat(b))
        v["qsl"].copy_(torch.arange(b + 1) * q)
        v["seq_lens"].fill_(q)
        self.buf.copy_(host, non_blocking=True)

    def pick(self, num_reqs: int, max_q: int) -> tuple[int, int] | None:
        q = next((x for x in self.query_lens if x >= max_q), None)
        b = next((x for x in self.batch_sizes if x >= num_reqs), None)
        return None if q is None or b is None else (b, q)

    def pick_prefill(self, num_tokens: int, start: int = 0) -> int | None:
        """The smallest prefill bucket that holds a chunk of ``num_tokens`` tokens from position ``start``, if any
        whose padding ends within max_model_len (past it, the padded positions would read beyond the RoPE table
        and the sequence length beyond the block table: the Triton kernels do not check)."""
        q = next((q for q in self.prefill_query_lens if q >= num_tokens), None)
        return q if q is not None and start + q <= self.max_model_len else None

    def stage(self, b: int, q: int) -> dict[str, np.ndarray]:
        """The next staging buffer's fields for a (b, q) step, as numpy views (built once per shape and turn);
        the caller writes ids, positions, slots, num_drafts, feed, limits, seq_lens and tables (the query start
        offsets are written here), then calls ``replay_staged``."""
        turn = self._turn
        self._turn ^= 1
        staged = self._staged.get((turn, b, q))
        if staged is None:  # views and slices cost µs each: once per shape and turn, not per step
            host, nbytes = self.staging[turn], self._nbytes(b, q)
            views = {name: v.numpy() for name, v in self._views(b, q, host).items()}
            staged = self._staged[(turn, b, q)] = (views, host[:nbytes], self.buf[:nbytes], np.arange(b + 1) * q)
        views, _, _, qsl = staged
        views["qsl"][:] = qsl
        self._pending = staged
        return views

    def hidden_states(self, b: int, q: int, prefill: bool = False) -> dict[int, torch.Tensor]:
        """The hidden states the (b, q) graph (or prefill graph) left at its last run: layer -> [b * q, hidden]
        (request i's rows at i * q ..). Overwritten by its next run."""
        if not self.use_cuda_graphs:
            return self._eager_aux
        return (self.prefill_graphs[q] if prefill else self.graphs[(b, q)])[1]["aux"]

    def replay_staged(self, b: int, q: int, prefill: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Copy the inputs written after ``stage(b, q)`` to the device (one copy) and run the (b, q) forward;
        returns what ``run`` returns."""
        views, src, dst, _ = self._pending
        dst.copy_(src, non_blocking=True)
        if not self.use_cuda_graphs:
            seq_lens = views["seq_lens"].tolist()
            if q > 1 and not prefill and self.drafter is not None:  # the torch attention needs the lengths
                device_views = self._views(b, q, self.buf)
                self._draft_on_device(b, q, device_views)
                seq_lens = device_views["seq_lens"].tolist()
            stages, state = self._segments(b, q, seq_lens, prefill, draft=False)
            for stage in stages:
                stage()
            self._eager_aux = state["aux"]
        else:
            graphs, state = self.prefill_graphs[q] if prefill else self.graphs[(b, q)]
            for graph in graphs:
                graph.replay()
        return state["logits"], state["greedy"]

    def run(self, b: int, q: int, ids: np.ndarray, positions: np.ndarray, slots: np.ndarray,
            num_drafts: np.ndarray, tables: np.ndarray, seq_lens: np.ndarray,
            num_fed: int = 0, prefill: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs padded to ``b`` requests of ``q`` tokens (host arrays); returns logits [b * q, vocab] and
        the greedy result [b, q + 2] (argmax per row, then how many tokens greedy verification emits, then the
        number of drafts verified).
        ``prefill`` (b == 1): a prefill chunk, ``num_drafts`` holding its last real row; returns logits [1, vocab]
        of that row and None.

        ``num_fed`` (q == 1 only): the first ``num_fed`` requests take their input token on the device from the
        previous 1-token step's argmax instead of ``ids``."""
        assert num_fed == 0 or q == 1, "fed input tokens are only for 1-token decode steps"
        h = self.stage(b, q)
        h["ids"][:], h["positions"][:], h["slots"][:], h["num_drafts"][:] = ids, positions, slots, num_drafts
        h["feed"][:] = 0
        h["feed"][:num_fed] = 1
        h["limits"][:] = 0
        h["seq_lens"][:] = seq_lens
        h["tables"][:] = tables
        return self.replay_staged(b, q, prefill)
