"""The engine side of the proposer contract: lifecycle events, building the ProposeBatch, and
checking what the proposer returns."""

from __future__ import annotations

from collections.abc import Sequence

from tokenleap_plugins import ProposeBatch, Proposer, ProposeRequest, VerifiedRequest

from tokenleap.engine.model_runner import StepResult
from tokenleap.engine.request import Request


class ProposerDriver:
    def __init__(self, proposer: Proposer, method: str, num_speculative_tokens: int, vocab_size: int,
                 max_model_len: int, disable_by_batch_size: int | None = None) -> None:
        self.proposer = proposer
        self.method = method
        self.k = num_speculative_tokens
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.disable_by_batch_size = disable_by_batch_size

    def added(self, request: Request) -> None:
        self.proposer.on_request_added(request.request_id, list(request.prompt_token_ids))

    def verified(self, results: Sequence[VerifiedRequest]) -> None:
        if results:
            self.proposer.on_verified(results)

    def finished(self, request: Request) -> None:
        if request.finish_reason == "abort":
            self.proposer.on_request_aborted(request.request_id)
        else:
            self.proposer.on_request_finished(request.request_id, list(request.all_token_ids))

    def max_drafts(self, request: Request) -> int:
        """Drafts allowed next step: none that could run past max_model_len or max_tokens."""
        return max(0, min(self.k, request.token_limit(self.max_model_len) - request.num_tokens - 1))

    def propose(self, requests: Sequence[Request], step: StepResult | None) -> None:
        """Set ``spec_token_ids`` (and ``spec_probs``) of each request for the next step."""
        if self.disable_by_batch_size is not None and len(requests) >= self.disable_by_batch_size:
            return
        batch_reqs = []
        targets = []
        for r in requests:
            limit = self.max_drafts(r)
            if limit == 0:
                continue
            rows = step.token_rows.get(r.request_id) if step is not None else None
            batch_reqs.append(ProposeRequest(r.request_id, r.all_token_ids, r.num_prompt_tokens, limit, rows))
            targets.append(r)
        if not batch_reqs:
            return
        hidden = step.hidden_states if step is not None else {}
        drafts = self.proposer.propose(ProposeBatch(batch_reqs, hidden))
        if len(drafts.token_ids) != len(batch_reqs):
            raise RuntimeError(
                f"proposer {self.method!r} returned drafts for {len(drafts.token_ids)} requests, "
                f"expected {len(batch_reqs)}"
            )
        for i, (req, pr) in enumerate(zip(targets, batch_reqs)):
            ids = list(drafts.token_ids[i])
            if len(ids) > pr.max_num_drafts or any(not 0 <= t < self.vocab_size for t in ids):
                raise RuntimeError(
                    f"proposer {self.method!r} returned drafts {ids} for request {req.request_id!r}: "
                    f"allowed 0..{pr.max_num_drafts} tokens with ids in [0, {self.vocab_size})"
                )
            req.spec_token_ids = ids
            req.spec_probs = drafts.probs[i] if drafts.probs is not None and ids else None
