"""Runs the target model over one step's flat batch and samples / verifies on the device.

The step is one flat batch: token ids, positions, slot mapping, block tables, query start offsets and
logits indices. The only host sync is reading back the emitted tokens.

A step is launched, then waited for. A graphed plain-greedy step stays in flight until waited for, and a
1-token decode step of the same requests can be launched behind it before that (``ahead_of``): its input
tokens are taken on the device from the step in flight, so the host prepares and launches step N + 1 while
the GPU still runs step N.

A graphed decode step of greedy requests with constraints (``_masked_greedy``) stays in flight too: after the
forward its token is the argmax under each request's constraints (``masked_decode``), which is what a step
launched behind it is fed. The masks need the matchers to have accepted the previous step's tokens, so a masked
step launched ahead runs its forward at once and launches that argmax later (``LaunchedStep.launch_sampling``),
once the step before it was read back and applied: before the step behind it is launched, or when it is waited
for. In a speculative engine (``masked_decode`` off: with n-gram drafts the masked steps launched ahead measured
slower, docs/sampling.md) every graphed step of such requests, verify or decode, is verified synchronously by
``MaskedDecode.verify``: the constrained argmax of every verified position, then greedy acceptance on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tokenleap.engine.cuda_graphs import DecodeGraphs
from tokenleap.engine.masked_decode import MaskedDecode
from tokenleap.engine.scheduler import ScheduledRequest
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM
from tokenleap.sample.logits import RowParams
from tokenleap.sample.sampler import Penalties, SamplingBatch, gather_logprobs, sample
from tokenleap.speculative.verify import is_coupled
from tokenleap.structured.constraints import StepRows


@dataclass
class SampledRequest:
    """What one sampling request got this step."""

    token_ids: list[int]  # emitted: accepted drafts + recovered/bonus token
    num_draft_tokens: int
    logprobs: list[tuple[float, int, list[tuple[int, float]]]] | None  # per token: (lp, rank, top)


@dataclass
class StepResult:
    sampled: dict[str, SampledRequest]  # request_id -> result, for requests that sampled
    hidden_states: dict[int, torch.Tensor]  # layer -> [num_tokens, hidden]
    token_rows: dict[str, tuple[int, int]]  # request_id -> (start, stop) rows of the flat batch


@dataclass
class LaunchedStep:
    """A step handed to the device: either its result is ready, or it is a graphed greedy step in flight whose
    result is being copied to ``host`` (valid once ``event`` completed)."""

    scheduled: list[ScheduledRequest]
    result: StepResult | None = None
    host: torch.Tensor | None = None  # [len(scheduled), q + 2]: argmax per row, tokens emitted, drafts verified
    event: torch.cuda.Event | None = None
    drafted_on_device: bool = False  # a verify step whose drafts the device made (launched behind another)
    hidden_states: dict[int, torch.Tensor] | None = None  # a graphed step's, for the proposer (layer -> rows)
    token_rows: dict[str, tuple[int, int]] | None = None
    # its tokens are picked under the requests' constraints after the forward (masked_decode): a step behind it
    # must be a decode step doing the same (no device drafting from the graph's own argmax)
    masked: bool = False
    # a masked step launched ahead: launches its constrained argmax and read-back, returning (host, event); called
    # once the step before it is applied (the masks need the matchers past its tokens)
    sample_later: Callable[[], tuple[torch.Tensor, torch.cuda.Event | None]] | None = None

    @property
    def is_greedy_decode(self) -> bool:
        """In flight, 1 token per request: the next decode step can take its tokens on the device."""
        if self.sample_later is not None:  # only decode steps sample later
            return True
        return self.result is None and self.host is not None and self.host.shape[1] == 3

    @property
    def is_greedy_verify(self) -> bool:
        """In flight, 1 + k tokens per request: with device drafting, the next verify step can follow it."""
        return self.result is None and self.host is not None and self.host.shape[1] > 3

    def launch_sampling(self) -> None:
        """Launch the constrained argmax of a masked step launched ahead (nothing for any other step). The tokens
        before this step must be applied to its requests first."""
        if self.sample_later is not None:
            self.host, self.event = self.sample_later()
            self.sample_later = None

    def wait(self) -> StepResult:
        self.launch_sampling()
        if self.result is None:
            if self.event is not None:
                self.event.synchronize()  # the step's one host sync
            rows = self.host.tolist()
            token_rows = self.token_rows or {}
            if self.drafted_on_device and token_rows:  # the drafts' rows, now that their counts are known
                token_rows = {rid: (start, start + 1 + rows[i][-1])
                              for i, (rid, (start, _)) in enumerate(token_rows.items())}
            self.result = StepResult({
                s.request.request_id: SampledRequest(rows[i][: rows[i][-2]], rows[i][-1], None)
                for i, s in enumerate(self.scheduled)
            }, self.hidden_states or {}, token_rows)
        return self.result


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[KVCache],
        block_size: int,
        max_blocks_per_req: int,
        max_model_len: int,
        device: torch.device,
        backend: str,
        hidden_state_layers: tuple[int, ...] = (),
        graphs: DecodeGraphs | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.max_blocks_per_req = max_blocks_per_req
        self.max_model_len = max_model_len  # the attention's bound on seq_lens (its KV splits): fixed per engine
        self.device = device
        self.backend = backend
        self.hidden_state_layers = hidden_state_layers
        self.vocab_size = model.cfg.vocab_size
        self.graphs = graphs
        self._masked: MaskedDecode | None = None  # the constrained argmax of graphed decode steps, built on first use
        self._positions: dict[tuple[int, int], np.ndarray] = {}  # (b, q) -> padded positions, built once
        self.draft_verification = "auto"  # speculative_config.draft_verification (drafts with probabilities)
        self.draft_len_limit = max_model_len  # speculative_config.max_model_len: no drafts past it
        self.masked_decode = True  # constrained greedy decode steps pick their token on the device (off: proposers)

    def _tensor(self, array: np.ndarray | list, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=dtype).to(self.device, non_blocking=True)

    def _upload(self, arrays: dict[str, np.ndarray | list]) -> dict[str, torch.Tensor]:
        """Many small int64 host arrays -> device tensors with one (pinned, async) copy."""
        flat = [np.asarray(a, dtype=np.int64) for a in arrays.values()]
        host = torch.from_numpy(np.concatenate([a.reshape(-1) for a in flat]))
        if self.device.type == "cuda":
            host = host.pin_memory()
        dev = host.to(self.device, non_blocking=True)
        out, offset = {}, 0
        for name, a in zip(arrays, flat):
            out[name] = dev[offset : offset + a.size].view(a.shape)
            offset += a.size
        return out

    @torch.inference_mode()
    def launch(self, scheduled: list[ScheduledRequest], ahead_of: LaunchedStep | None = None,
               q: int = 1) -> LaunchedStep:
        """Start a step. With ``ahead_of`` (an in-flight greedy step of the same requests, in the same order),
        each request continues past that step's tokens on the device: a decode step (``q`` = 1) behind a decode
        step is fed the token it emits; a verify step (``q`` = 1 + k, device drafting) behind a decode or
        verify step also drafts from them."""
        if ahead_of is not None:
            assert [s.request for s in ahead_of.scheduled] == [s.request for s in scheduled], (
                "a step launched ahead must continue the same requests")
            if q == 1:
                assert ahead_of.is_greedy_decode, "a decode step is launched ahead of a decode step only"
                ahead_of.launch_sampling()  # its tokens feed this step: queued before its forward
                return self._launch_graph(scheduled, *self.graphs.pick(len(scheduled), 1), ahead=True)
            assert self.graphs.drafter is not None and ahead_of.host is not None and not ahead_of.masked
            if not ahead_of.drafted_on_device:  # the histories start here: tokens before ahead_of's outputs
                self.graphs.load_histories([s.request.all_token_ids for s in scheduled])
            return self._launch_graph(scheduled, *self.graphs.pick(len(scheduled), q), ahead=True)
        graphed = self._graphed
        if graphed and all(s.num_new_tokens == 1 and s.samples for s in scheduled):
            picked = self.graphs.pick(len(scheduled), 1 + max(s.num_spec_tokens for s in scheduled))
            if picked is not None:
                return self._launch_graph(scheduled, *picked)
        if graphed and len(scheduled) == 1 and scheduled[0].num_spec_tokens == 0:
            q = self.graphs.pick_prefill(scheduled[0].num_new_tokens, scheduled[0].request.num_computed_tokens)
            if q is not None:
                return LaunchedStep(scheduled, result=self._prefill_graph(scheduled[0], q))
        return LaunchedStep(scheduled, result=self._execute_eager(scheduled))

    def stays_in_flight(self, request) -> bool:
        """A decode / verify step of this request alone would run on a captured graph and stay in flight after
        launch (nothing but the argmax, or a decode step's constrained argmax, to read back; other requests sync
        inside ``launch``)."""
        return self._graphed and (_plain_greedy(request) or (self.masked_decode and _masked_greedy(request)
                                                              and not request.spec_token_ids))

    @property
    def _graphed(self) -> bool:
        """Decode / verify steps (and one-request prefill chunks) may run on captured graphs."""
        return self.graphs is not None

    def _prefill_graph(self, s: ScheduledRequest, q: int) -> StepResult:
        """One request's prefill chunk through the captured graph of ``q`` >= its tokens, padded at the end
        (padding writes go to the null block; causal attention keeps real queries off padded keys)."""
        r, n = s.request, s.num_new_tokens
        start = r.num_computed_tokens
        ids = np.zeros(q, dtype=np.int64)
        ids[:n] = r.all_token_ids[start : start + n]
        positions = np.arange(start, start + q, dtype=np.int64)
        slots = np.zeros(q, dtype=np.int64)  # padding writes land in the null block
        slots[:n] = _slots(r.block_ids, positions[:n], self.block_size)
        tables = np.zeros((1, self.max_blocks_per_req), dtype=np.int32)
        tables[0, : len(r.block_ids)] = r.block_ids
        seq_lens = np.array([start + q], dtype=np.int32)
        last_row = np.array([n - 1], dtype=np.int64)  # the prefill graph's head reads it from num_drafts
        logits, _ = self.graphs.run(1, q, ids, positions, slots, last_row, tables, seq_lens, prefill=True)
        token_rows = {r.request_id: (0, n)}
        aux = self.graphs.hidden_states(1, q, prefill=True) if self.hidden_state_layers else {}
        if not s.samples:
            return StepResult({}, aux, token_rows)
        return self._sample(logits, [0], False, [s], aux, token_rows)

    def _launch_graph(self, scheduled: list[ScheduledRequest], b: int, q: int, ahead: bool = False) -> LaunchedStep:
        """Decode / verify through a captured graph: every request padded to ``q`` query tokens. ``ahead``:
        each request is one token past its recorded state, its input token fed on the device."""
        bs = self.block_size
        h = self.graphs.stage(b, q)  # written in place: this is the host's critical path before a verify step
        ids, positions, slots, tables = h["ids"], h["positions"], h["slots"], h["tables"]
        ids[:], slots[:], tables[:] = 0, 0, 0  # padding: token 0 written to the null block
        positions[:] = self._padded_positions(b, q)
        h["seq_lens"][:], h["num_drafts"][:], h["feed"][:], h["limits"][:] = q, 0, 0, 0
        if ahead and q > 1:  # device drafting: the graph builds each row from its history; the host gives blocks
            for i, s in enumerate(scheduled):
                r = s.request
                tables[i, : len(r.block_ids)] = r.block_ids
                # drafts are cut as the host cuts them (ProposerDriver.max_drafts)
                h["limits"][i] = min(r.token_limit(self.max_model_len), self.draft_len_limit)
            h["feed"][: len(scheduled)] = 1
            _, greedy = self.graphs.replay_staged(b, q)
            host, event = self.graphs.read_back(greedy, len(scheduled))
            aux, rows = {}, {}
            if self.hidden_state_layers:  # for propose() when the step after this one is not drafted here
                aux = self.graphs.hidden_states(b, q)
                rows = {s.request.request_id: (i * q, (i + 1) * q) for i, s in enumerate(scheduled)}
            return LaunchedStep(scheduled, host=host, event=event, drafted_on_device=True, hidden_states=aux,
                                token_rows=rows)
        for i, s in enumerate(scheduled):
            r, d = s.request, s.num_spec_tokens
            start, real, o = r.num_computed_tokens + int(ahead), s.num_query_tokens, i * q
            if not ahead:
                ids[o] = r.all_token_ids[start]
            if d:
                ids[o + 1 : o + 1 + d] = r.spec_token_ids[:d]
            positions[o : o + q] += start
            blocks = r.block_ids  # a few slots: a list comprehension beats building numpy arrays here
            slots[o : o + real] = [blocks[p // bs] * bs + p % bs for p in range(start, start + real)]
            tables[i, : len(blocks)] = blocks
            h["seq_lens"][i] = start + q
            h["num_drafts"][i] = d
        if ahead:
            h["feed"][: len(scheduled)] = 1
        logits_all, greedy = self.graphs.replay_staged(b, q)
        aux, rows = {}, {}
        if self.hidden_state_layers:  # request i's rows of the padded batch start at i * q
            aux = self.graphs.hidden_states(b, q)
            rows = {s.request.request_id: (i * q, i * q + s.num_query_tokens) for i, s in enumerate(scheduled)}
        if all(_plain_greedy(s.request) for s in scheduled):  # the graph already verified: read it back
            host, event = self.graphs.read_back(greedy, len(scheduled))
            return LaunchedStep(scheduled, host=host, event=event, hidden_states=aux, token_rows=rows)
        if q == 1 and self.masked_decode and all(_masked_greedy(s.request) for s in scheduled):  # under constraints
            step = LaunchedStep(scheduled, hidden_states=aux, token_rows=rows, masked=True,
                                sample_later=lambda: self._pick_masked(scheduled, logits_all))
            if not ahead:  # the matchers are past every token before this step: sample now
                step.launch_sampling()
            return step
        assert not ahead, "only greedy steps (plain, or decode steps under constraints) are launched ahead"
        if all(_masked_greedy(s.request) for s in scheduled):  # greedy under constraints, synchronously
            emitted = self._masked_decode().verify(logits_all, scheduled, q)
            sampled = {s.request.request_id: SampledRequest(tokens, s.num_spec_tokens, None)
                       for s, tokens in zip(scheduled, emitted)}
            return LaunchedStep(scheduled, result=StepResult(sampled, aux, rows))
        logits_rows = [i * q + j for i, s in enumerate(scheduled) for j in range(s.num_query_tokens)]
        return LaunchedStep(scheduled, result=self._sample(logits_all, logits_rows, False, scheduled, aux, rows))

    @torch.inference_mode()  # (may be called from LaunchedStep.wait, outside launch)
    def _pick_masked(self, scheduled: list[ScheduledRequest], logits: torch.Tensor):
        """Launch the constrained argmax of a 1-token graphed step from its logits [b, vocab] (the graph's static
        output: this runs before the graph's next replay is queued) and its read-back; returns (host, event)."""
        result = self._masked_decode().pick(logits, [s.request for s in scheduled], self.graphs.last_tokens)
        return self.graphs.read_back(result, len(scheduled))

    def _masked_decode(self) -> MaskedDecode:
        if self._masked is None:
            self._masked = MaskedDecode(self.graphs.batch_sizes[-1], max(self.graphs.query_lens), self.vocab_size,
                                        self.device)
        return self._masked

    def _padded_positions(self, b: int, q: int) -> np.ndarray:
        """[b * q] 0..q-1 per request (the positions of padded requests; real ones add their start)."""
        key = (b, q)
        if key not in self._positions:
            self._positions[key] = np.tile(np.arange(q, dtype=np.int64), b)
        return self._positions[key]

    def _execute_eager(self, scheduled: list[ScheduledRequest]) -> StepResult:
        bs = self.block_size
        ids: list[int] = []
        positions: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        query_lens: list[int] = []
        seq_lens: list[int] = []
        tables = np.zeros((len(scheduled), self.max_blocks_per_req), dtype=np.int32)
        logits_rows: list[int] = []
        samplers: list[ScheduledRequest] = []
        token_rows: dict[str, tuple[int, int]] = {}
        offset = 0
        for i, s in enumerate(scheduled):
            r = s.request
            start, q = r.num_computed_tokens, s.num_query_tokens
            ids.extend(r.all_token_ids[start : start + s.num_new_tokens])
            ids.extend(r.spec_token_ids[: s.num_spec_tokens])
            pos = np.arange(start, start + q, dtype=np.int64)
            positions.append(pos)
            slots.append(_slots(r.block_ids, pos, bs))
            tables[i, : len(r.block_ids)] = r.block_ids
            query_lens.append(q)
            seq_lens.append(start + q)
            token_rows[r.request_id] = (offset, offset + q)
            if s.samples:
                samplers.append(s)
                logits_rows.extend(range(offset + s.num_new_tokens - 1, offset + q))
            offset += q

        meta = AttentionMetadata(
            slot_mapping=self._tensor(np.concatenate(slots), torch.int64),
            block_tables=self._tensor(tables, torch.int32),
            query_start_loc=self._tensor(np.cumsum([0] + query_lens), torch.int32),
            seq_lens=self._tensor(seq_lens, torch.int32),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
            max_query_len=max(query_lens),
            max_seq_len=self.max_model_len,
            backend=self.backend,
        )
        hidden, aux = self.model(
            self._tensor(ids, torch.int64), self._tensor(np.concatenate(positions), torch.int64),
            self.kv_caches, meta, self.hidden_state_layers,
        )
        if not samplers:
            return StepResult({}, aux, token_rows)
        return self._sample(hidden, logits_rows, True, samplers, aux, token_rows)

    def _sample(self, source: torch.Tensor, rows: list[int], is_hidden: bool, samplers: list[ScheduledRequest],
                aux, token_rows) -> StepResult:
        """Sample / verify every request of ``samplers``. ``rows`` of ``source`` (hidden states, or logits
        when ``is_hidden`` is False) are the sampled positions, request after request."""
        batch, rows_dev = self._sampling_batch(samplers, rows)
        picked = source[rows_dev]
        logits = self.model.compute_logits(picked) if is_hidden else picked.float()  # [rows, vocab] fp32
        tokens, num_emitted = sample(logits, batch)  # [batch, k + 1], [batch]
        want_lp = [s.request.params.logprobs for s in samplers if s.request.params.logprobs is not None]
        lp = None
        if want_lp:
            lp = gather_logprobs(logits, batch.row_index, tokens, max(want_lp))
        host = torch.cat([tokens, num_emitted[:, None]], dim=1).tolist()  # the step's one host sync
        lp_host = [t.tolist() for t in lp] if lp is not None else None
        sampled: dict[str, SampledRequest] = {}
        for b, s in enumerate(samplers):
            n = host[b][-1]
            entry = None
            if lp_host is not None and s.request.params.logprobs is not None:
                top_n = s.request.params.logprobs
                entry = [
                    (lp_host[0][b][j], lp_host[1][b][j], list(zip(lp_host[3][b][j][:top_n], lp_host[2][b][j][:top_n])))
                    for j in range(n)
                ]
            sampled[s.request.request_id] = SampledRequest(host[b][:n], s.num_spec_tokens, entry)
        return StepResult(sampled, aux, token_rows)

    def _sampling_batch(self, samplers: list[ScheduledRequest], logits_rows: list[int]):
        k = max(s.num_spec_tokens for s in samplers)
        nb = len(samplers)
        row_index = np.zeros((nb, k + 1), dtype=np.int64)
        draft_ids = np.zeros((nb, k), dtype=np.int64)
        num_drafts = np.zeros(nb, dtype=np.int64)
        temp, top_k, top_p, min_p, seeds, streams, pos = [], [], [], [], [], [], []
        rep, pres, freq = [], [], []
        req_seeds, req_streams, req_out = [], [], []
        ban_rows: list[int] = []
        ban_ids: list[int] = []
        pen_rows: list[int] = []
        pen_tokens: list[int] = []
        seen_rows: list[int] = []
        seen_tokens: list[int] = []
        any_pen = any(s.request.params.has_penalties for s in samplers)
        # argmax only (of the logits after the requests' constraints): no per-row sampling parameters to build
        argmax_only = all(_argmax_sampling(s.request) for s in samplers)
        constrained = StepRows()  # logit_bias, allowed_token_ids, bad_words, structured outputs
        row = 0
        for b, s in enumerate(samplers):
            r, p, d = s.request, s.request.params, s.num_spec_tokens
            row_index[b] = [row + min(i, d) for i in range(k + 1)]
            draft_ids[b, :d] = r.spec_token_ids[:d]
            num_drafts[b] = d
            if argmax_only:
                if r.constraints is not None:
                    r.constraints.add_rows(constrained, row, r.output_token_ids, r.spec_token_ids[:d])
                row += d + 1
                continue
            req_seeds.append(r.seed)
            req_streams.append(r.stream)
            req_out.append(r.num_output_tokens)
            stop_ids = sorted(set(p.stop_token_ids or []) | (set() if p.ignore_eos else set(r.eos_token_ids)))
            for i in range(d + 1):
                temp.append(p.temperature)
                top_k.append(p.effective_top_k)
                top_p.append(p.top_p)
                min_p.append(p.min_p)
                seeds.append(r.seed)
                streams.append(r.stream)
                pos.append(r.num_output_tokens + i)
                rep.append(p.repetition_penalty)
                pres.append(p.presence_penalty)
                freq.append(p.frequency_penalty)
                if r.num_output_tokens + i < p.min_tokens:
                    ban_rows.extend([row + i] * len(stop_ids))
                    ban_ids.extend(stop_ids)
                if any_pen and p.has_penalties:
                    context = r.output_token_ids + r.spec_token_ids[:i]
                    pen_rows.extend([row + i] * len(context))
                    pen_tokens.extend(context)
                    seen = set(r.prompt_token_ids) | set(context)
                    seen_rows.extend([row + i] * len(seen))
                    seen_tokens.extend(seen)
            if r.constraints is not None:
                r.constraints.add_rows(constrained, row, r.output_token_ids, r.spec_token_ids[:d])
            row += d + 1
        ban_rows += constrained.ban_rows
        ban_ids += constrained.ban_ids

        f32, i64 = torch.float32, torch.int64
        has_probs = k > 0 and any(s.request.spec_probs is not None for s in samplers)
        ints = {"logits_rows": logits_rows, "row_index": row_index, "draft_ids": draft_ids, "num_drafts": num_drafts,
                "ban_rows": ban_rows, "ban_ids": ban_ids, "bias_rows": constrained.bias_rows,
                "bias_ids": constrained.bias_ids, "mask_rows": constrained.mask_rows}
        if not argmax_only:
            ints.update(top_k=top_k, seeds=seeds, streams=streams, positions=pos, req_seeds=req_seeds,
                        req_streams=req_streams, req_out=req_out)
        dev = self._upload(ints)
        rows = None
        if not argmax_only:
            floats = self._tensor(np.stack([temp, top_p, min_p, rep, pres, freq]), f32)  # [6, rows]
            rows = RowParams(
                temperature=floats[0], top_k=dev["top_k"], top_p=floats[1], min_p=floats[2], seeds=dev["seeds"],
                streams=dev["streams"], positions=dev["positions"], any_top_k=any(top_k),
                any_top_p=any(v < 1 for v in top_p), any_min_p=any(min_p), any_greedy=any(t == 0 for t in temp),
                all_greedy=all(t == 0 for t in temp),
            )
        penalties = None
        if any_pen:
            counts = torch.zeros(row, self.vocab_size, device=self.device)
            if pen_rows:
                counts.index_put_(
                    (self._tensor(pen_rows, i64), self._tensor(pen_tokens, i64)),
                    torch.ones(len(pen_rows), device=self.device), accumulate=True,
                )
            seen_mask = torch.zeros(row, self.vocab_size, dtype=torch.bool, device=self.device)
            if seen_rows:
                seen_mask[self._tensor(seen_rows, i64), self._tensor(seen_tokens, i64)] = True
            penalties = Penalties(counts, seen_mask, floats[3], floats[4], floats[5])
        draft_probs, coupled = None, None
        if has_probs:
            coupled = self._tensor([is_coupled(self.draft_verification, s.request.spec_probs is not None,
                                               s.request.params.seed is not None) for s in samplers], torch.bool)
            draft_probs = torch.zeros(nb, k, self.vocab_size, device=self.device)
            for b, s in enumerate(samplers):
                d = s.num_spec_tokens
                if d == 0:
                    continue
                if s.request.spec_probs is not None:
                    draft_probs[b, :d] = s.request.spec_probs[:d].to(self.device, torch.float32)
                else:
                    draft_probs[b, torch.arange(d), self._tensor(draft_ids[b, :d], i64)] = 1.0
        batch = SamplingBatch(
            row_index=dev["row_index"], draft_ids=dev["draft_ids"], num_drafts=dev["num_drafts"],
            draft_probs=draft_probs, rows=rows, req_seeds=dev.get("req_seeds"), req_streams=dev.get("req_streams"),
            req_output_lens=dev.get("req_out"), penalties=penalties,
            ban_rows=dev["ban_rows"] if ban_rows else None, ban_token_ids=dev["ban_ids"] if ban_rows else None,
            coupled=coupled,
        )
        if constrained.bias_rows:
            batch.bias_rows, batch.bias_token_ids = dev["bias_rows"], dev["bias_ids"]
            batch.bias_values = self._tensor(constrained.bias_values, f32)
        if constrained.mask_rows:
            batch.mask_rows = dev["mask_rows"]
            batch.bitmask = torch.cat(constrained.masks).to(self.device, non_blocking=True)  # [masked, words]
        return batch, dev["logits_rows"]


def _slots(block_ids: list[int], positions: np.ndarray, block_size: int) -> np.ndarray:
    """KV-cache slot of each position of a request: its block's id * block_size + the offset in the block."""
    blocks = np.asarray(block_ids, dtype=np.int64)
    return blocks[positions // block_size] * block_size + positions % block_size


def _argmax_sampling(request) -> bool:
    """Greedy where the token is the argmax of the logits after the request's constraints (logit_bias,
    allowed_token_ids, bad_words, structured outputs): no penalties, no min_tokens ban left, no draft
    probabilities."""
    p = request.params
    return (p.temperature == 0 and not p.has_penalties and request.spec_probs is None
            and request.num_output_tokens >= p.min_tokens)


def _plain_sampling(request) -> bool:
    """Greedy with nothing that changes the logits: the token is the argmax (no penalties, no min_tokens
    ban left, no logit_bias / allowed_token_ids / bad_words / structured outputs, no draft probabilities)."""
    p = request.params
    return (p.temperature == 0 and not p.has_penalties and not p.has_constraints and request.spec_probs is None
            and request.num_output_tokens >= p.min_tokens)


def _masked_greedy(request) -> bool:
    """Argmax sampling that needs nothing but the tokens back (no logprobs): a graphed decode step of such
    requests picks its tokens under their constraints on the device (``masked_decode``) and stays in flight."""
    return _argmax_sampling(request) and request.params.logprobs is None


def _plain_greedy(request) -> bool:
    """Plain sampling that also needs nothing but the argmax back (no logprobs): the graph's own result."""
    return _plain_sampling(request) and request.params.logprobs is None
