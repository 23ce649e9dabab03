"""The engine side of the proposer contract: lifecycle events, building the ProposeBatch, and
checking what the proposer returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenleap_plugins import (
    ComputedTokens,
    ProposeBatch,
    Proposer,
    ProposeRequest,
    SamplingInfo,
    VerifiedRequest,
)

from tokenleap.distributed.errors import TensorParallelWorkerError
from tokenleap.engine.model_runner import StepResult
from tokenleap.engine.request import Request
from tokenleap.speculative.verify import is_coupled


@dataclass(frozen=True)
class StepEntry:
    """One request of the step just applied: the positions its step computed and kept, and whether it may be
    drafted for (decoding and still running)."""

    request: Request
    computed_start: int
    computed_count: int
    num_rejected: int  # draft rows of the step that verification rejected
    running: bool


class ProposerDriver:
    def __init__(self, proposer: Proposer, method: str, num_speculative_tokens: int, vocab_size: int,
                 max_model_len: int, disable_by_batch_size: int | None = None,
                 speculative_max_model_len: int | None = None, block_size: int = 16,
                 draft_verification: str = "auto") -> None:
        self.proposer = proposer
        self.method = method
        self.k = num_speculative_tokens
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.disable_by_batch_size = disable_by_batch_size
        self.draft_len_limit = speculative_max_model_len or max_model_len
        self.sees_every_step = proposer.needs.sees_every_step
        self.writes_kv = proposer.needs.kv_cache is not None
        self.block_size = block_size
        self.draft_verification = draft_verification

    def added(self, request: Request) -> None:
        self._call("on_request_added", request.request_id, list(request.prompt_token_ids))

    def preempted(self, request: Request) -> None:
        hook = getattr(self.proposer, "on_request_preempted", None)
        if hook is not None:
            self._call("on_request_preempted", request.request_id)

    def verified(self, results: Sequence[VerifiedRequest]) -> None:
        if results:
            self._call("on_verified", results)

    def finished(self, request: Request) -> None:
        if request.finish_reason == "abort":
            self._call("on_request_aborted", request.request_id)
        else:
            self._call("on_request_finished", request.request_id, list(request.all_token_ids))

    def max_drafts(self, request: Request) -> int:
        """Drafts allowed next step: none that could run past max_model_len, max_tokens or the speculative
        max_model_len."""
        limit = min(request.token_limit(self.max_model_len), self.draft_len_limit)
        return max(0, min(self.k, limit - request.num_tokens - 1))

    def propose(self, entries: Sequence[StepEntry], running: Sequence[Request], step: StepResult | None) -> None:
        """Set ``spec_token_ids`` (and ``spec_probs``) of the requests that may be drafted for, for the next step.

        ``entries``: the requests of the step just applied; ``running``: every running request. A proposer that
        sees every step gets all entries (those that may not be drafted for with ``max_num_drafts`` 0); the others
        get every running decoding request."""
        off = self.disable_by_batch_size is not None and len(running) >= self.disable_by_batch_size
        if self.sees_every_step:
            chosen = [(e.request, e, 0 if off or not (e.running and e.request.is_decoding)
                       else self._max_drafts_writing_kv(e.request)) for e in entries]
        else:
            if off:
                return
            by_id = {e.request.request_id: e for e in entries}
            chosen = [(r, by_id.get(r.request_id), self.max_drafts(r)) for r in running
                      if r.is_decoding and not r.status.finished]
            chosen = [c for c in chosen if c[2] > 0]
        if not chosen:
            return
        rows = step.token_rows if step is not None else {}
        batch_reqs = [self._request(r, e, m, rows.get(r.request_id)) for r, e, m in chosen]
        hidden = step.hidden_states if step is not None else {}
        try:
            drafts = self.proposer.propose(ProposeBatch(batch_reqs, hidden))
        except TensorParallelWorkerError:
            raise  # a rank running the proposer's model (or the target's handles) died: the engine's error
        except Exception as exc:
            raise RuntimeError(f"proposer {self.method!r} failed in propose(): {type(exc).__name__}: {exc}") from exc
        if len(drafts.token_ids) != len(batch_reqs):
            raise RuntimeError(
                f"proposer {self.method!r} returned drafts for {len(drafts.token_ids)} requests, "
                f"expected {len(batch_reqs)}"
            )
        for i, ((req, _, _), pr) in enumerate(zip(chosen, batch_reqs)):
            ids = list(drafts.token_ids[i])
            if len(ids) > pr.max_num_drafts or any(not 0 <= t < self.vocab_size for t in ids):
                raise RuntimeError(
                    f"proposer {self.method!r} returned drafts {ids} for request {req.request_id!r}: "
                    f"allowed 0..{pr.max_num_drafts} tokens with ids in [0, {self.vocab_size})"
                )
            if pr.max_num_drafts == 0:
                continue
            req.spec_token_ids = ids
            req.spec_probs = drafts.probs[i] if drafts.probs is not None and ids else None

    def _max_drafts_writing_kv(self, request: Request) -> int:
        """``max_drafts``, and for a proposer with its own KV cache no more drafts than it can write the KV of in
        the request's blocks: positions up to num_tokens - 1 + drafts must lie in them (the scheduler reserves k
        slots past a step that ends decoding). A proposer without a cache (hidden states only) is not held to
        the blocks: the verify step gets its slots as any step does."""
        most = self.max_drafts(request)
        if not self.writes_kv:
            return most
        return min(most, len(request.block_ids) * self.block_size - request.num_tokens + 1)

    def _request(self, req: Request, entry: StepEntry | None, max_num_drafts: int,
                 rows: tuple[int, int] | None) -> ProposeRequest:
        p = req.params
        coupled = is_coupled(self.draft_verification, True, p.seed is not None)  # for drafts with probabilities
        computed = None
        if entry is not None:
            computed = ComputedTokens(entry.computed_start, entry.computed_count, rows[0] if rows else 0,
                                      entry.num_rejected)
        return ProposeRequest(
            req.request_id, req.all_token_ids, req.num_prompt_tokens, max_num_drafts, rows, computed,
            req.num_computed_tokens, req.block_ids,
            SamplingInfo(p.temperature, p.top_p, p.effective_top_k, p.min_p, req.seed, req.stream, coupled),
        )

    def _call(self, hook: str, *args) -> None:
        try:
            getattr(self.proposer, hook)(*args)
        except TensorParallelWorkerError:
            raise
        except Exception as exc:
            raise RuntimeError(f"proposer {self.method!r} failed in {hook}(): {type(exc).__name__}: {exc}") from exc
