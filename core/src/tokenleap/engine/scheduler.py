"""Continuous batching under a token budget, with chunked prefill and preemption by recompute.

Each step, running requests are served first (in policy order): a prefill chunk, or 1 decode token
plus the drafts to verify. Waiting requests are admitted after, if no running request had to be
preempted. When blocks run out, the lowest-ranked running request is preempted: its blocks are freed
and it goes back to the front of the queue to be recomputed later (its output so far is kept, and
since sampling noise depends only on seed and position, its continuation is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenleap.engine.kv_cache import BlockManager
from tokenleap.engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int  # tokens of all_token_ids computed this step (prefill chunk or 1)
    num_spec_tokens: int  # drafts appended after them, to verify

    @property
    def num_query_tokens(self) -> int:
        return self.num_new_tokens + self.num_spec_tokens

    @property
    def samples(self) -> bool:
        """The step reaches the end of the request's tokens, so its logits are sampled."""
        r = self.request
        return r.num_computed_tokens + self.num_new_tokens == r.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_query_tokens for s in self.scheduled)


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        policy: str = "fcfs",
        enable_chunked_prefill: bool = True,
        lookahead_slots: int = 0,
    ) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.policy = policy
        self.enable_chunked_prefill = enable_chunked_prefill
        # Slots reserved past a sampling step's tokens: a proposer with its own KV cache writes its drafts' KV at
        # the positions after the step's (up to k of them) before the next step reserves them.
        self.lookahead_slots = lookahead_slots
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        self.running.sort(key=lambda r: r.sort_key(self.policy))
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            remaining = req.num_tokens - req.num_computed_tokens
            num_new = min(remaining, budget)
            num_spec = len(req.spec_token_ids) if num_new == remaining else 0
            if num_new + num_spec > budget:
                num_spec = 0  # no room to verify drafts this step: decode one token
            ahead = self.lookahead_slots if num_new >= remaining - 1 else 0  # it may be drafted for after this step
            if not self._reserve(req, req.num_computed_tokens + num_new + num_spec + ahead, out):
                break  # req itself was preempted
            if num_spec == 0:
                req.spec_token_ids, req.spec_probs = [], None
            out.scheduled.append(ScheduledRequest(req, num_new, num_spec))
            budget -= num_new + num_spec
            i += 1
        if out.preempted:
            return out
        self.waiting.sort(key=lambda r: r.sort_key(self.policy))
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if req.num_computed_tokens == 0 and not req.block_ids:
                blocks, hashes = self.blocks.lookup_prefix(req.all_token_ids)
                req.block_ids, req.block_hashes = blocks, hashes
                req.num_computed_tokens = len(blocks) * self.blocks.block_size
                if req.status != RequestStatus.PREEMPTED:  # a recompute's hits are not prompt-cache hits
                    req.metrics.num_cached_prompt_tokens = req.num_computed_tokens
            remaining = req.num_tokens - req.num_computed_tokens
            if remaining > budget and not self.enable_chunked_prefill:
                break
            num_new = min(remaining, budget)
            ahead = self.lookahead_slots if num_new >= remaining - 1 else 0
            if not self._grow(req, req.num_computed_tokens + num_new + ahead):
                break
            self.waiting.pop(0)
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.scheduled.append(ScheduledRequest(req, num_new, 0))
            budget -= num_new
        return out

    def schedule_ahead(self, scheduled: list[ScheduledRequest], q: int = 1) -> list[ScheduledRequest] | None:
        """The step after ``scheduled`` (a step of ``q`` tokens per request still in flight: 1 for decode, 1 + k
        for verify), for a step launched before the in-flight one is read back: the same requests, each
        continuing from whatever that step emits (at most ``q`` tokens), with up to ``q - 1`` drafts made on the
        device. Only when nothing else would be scheduled instead (every running request is in it, and no
        waiting one could be admitted) and each request gets slots for both steps (2 * q) without preempting
        anyone; otherwise None."""
        if len(scheduled) != len(self.running) or (self.waiting and len(self.running) < self.max_num_seqs):
            return None
        if not all(self._grow(s.request, s.request.num_computed_tokens + 2 * q) for s in scheduled):
            return None
        return [ScheduledRequest(s.request, 1, q - 1) for s in scheduled]

    def _reserve(self, req: Request, num_tokens: int, out: SchedulerOutput) -> bool:
        """Give ``req`` blocks for ``num_tokens`` slots, preempting lower-ranked requests as needed.
        Returns False when ``req`` itself had to be preempted."""
        while True:
            if self._grow(req, num_tokens):
                return True
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is req:
                return False

    def _grow(self, req: Request, num_tokens: int) -> bool:
        """Give ``req`` blocks for ``num_tokens`` slots if enough are free (no preemption); False if not."""
        new_blocks = self.blocks.allocate(self.blocks.blocks_needed(num_tokens, len(req.block_ids)))
        if new_blocks is None:
            return False
        req.block_ids.extend(new_blocks)
        return True

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        # Victims are taken from the end of the ranked list, so none was scheduled earlier this step.
        self.running.remove(req)
        self.blocks.free(req.block_ids)
        req.block_ids, req.block_hashes = [], []
        req.num_computed_tokens = 0
        req.spec_token_ids, req.spec_probs = [], None
        req.status = RequestStatus.PREEMPTED
        req.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.insert(0, req)
        out.preempted.append(req)

    def finish(self, req: Request) -> None:
        """Remove a finished or aborted request and free its blocks."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.blocks.free(req.block_ids)
        req.block_ids, req.block_hashes = [], []
