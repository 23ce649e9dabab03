"""The ``suffix`` proposer: SuffixDecoding (Oliaro et al., arXiv 2411.04975) over two kinds of trie.

- one *request trie* per running request, over its prompt + accepted output tokens, with the
  request's active nodes kept so each accepted token costs O(depth) and the tail matches are free;
- one *global trie* over the generated tokens of the last ``suffix_decoding_max_cached_requests``
  finished requests (FIFO: the oldest output is removed, counts and all, when one too many is cached).

Each step the draft is the best-scoring greedy path (see :mod:`tokenleap_suffix.speculate`) over all
tail-match lengths in both tries. Model-free: needs nothing from the engine, returns no probabilities.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from tokenleap_plugins import (
    Drafts,
    ProposeBatch,
    ProposerBase,
    ProposerContext,
    ProposeRequest,
    ProposerNeeds,
    VerifiedRequest,
)

from tokenleap_suffix.config import SuffixConfig
from tokenleap_suffix.speculate import best_draft
from tokenleap_suffix.tree import SuffixTrie


class RequestState:
    """A running request: its tokens, its own trie, and the trie nodes of its last ``depth`` suffixes."""

    __slots__ = ("tokens", "num_prompt_tokens", "trie", "active")

    def __init__(self, tokens: Sequence[int], num_prompt_tokens: int, max_depth: int) -> None:
        self.tokens: list[int] = [int(t) for t in tokens]
        self.num_prompt_tokens = num_prompt_tokens
        self.trie = SuffixTrie(max_depth)
        self.active: list[int] = self.trie.insert(self.tokens)

    def extend(self, new_tokens: Sequence[int]) -> None:
        trie, active, tokens = self.trie, self.active, self.tokens
        for token in new_tokens:
            token = int(token)
            active = trie.append(active, token)
            tokens.append(token)
        self.active = active


class GlobalCache:
    """The global trie plus the FIFO of the outputs it holds (kept to remove them exactly)."""

    def __init__(self, max_depth: int, max_requests: int) -> None:
        self.trie = SuffixTrie(max_depth)
        self.max_requests = max_requests
        self.outputs: deque[list[int]] = deque()

    def add(self, output: Sequence[int]) -> None:
        if self.max_requests == 0:
            return
        tokens = [int(t) for t in output]
        self.trie.insert(tokens)
        self.outputs.append(tokens)
        while len(self.outputs) > self.max_requests:
            self.trie.remove(self.outputs.popleft())


class SuffixProposer(ProposerBase):
    """Drafts 0..k tokens per request from the request's own trie and the global trie."""

    needs = ProposerNeeds()

    def __init__(self, config: SuffixConfig, context: ProposerContext) -> None:
        self.config = config
        self.max_depth = config.suffix_decoding_max_tree_depth
        self.num_speculative_tokens = context.num_speculative_tokens
        self.requests: dict[str, RequestState] = {}
        self.cache = GlobalCache(self.max_depth, config.suffix_decoding_max_cached_requests)

    # -- lifecycle ------------------------------------------------------------------------------
    def on_request_added(self, request_id: str, prompt_token_ids: Sequence[int]) -> None:
        self.requests[request_id] = RequestState(prompt_token_ids, len(prompt_token_ids), self.max_depth)

    def on_verified(self, results: Sequence[VerifiedRequest]) -> None:
        for result in results:
            state = self.requests.get(result.request_id)
            if state is not None:
                state.extend(result.new_token_ids)

    def on_request_finished(self, request_id: str, token_ids: Sequence[int]) -> None:
        state = self.requests.pop(request_id, None)
        if state is not None:  # unknown request: its prompt length is unknown, so cache nothing
            self.cache.add(token_ids[state.num_prompt_tokens :])

    def on_request_aborted(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    # -- drafting -------------------------------------------------------------------------------
    def propose(self, batch: ProposeBatch) -> Drafts:
        return Drafts(token_ids=[self.propose_one(request) for request in batch.requests])

    def propose_one(self, request: ProposeRequest) -> list[int]:
        max_drafts = min(request.max_num_drafts, self.num_speculative_tokens)
        state = self._synced_state(request)
        if max_drafts <= 0:
            return []
        sources = [(state.trie, state.active)]
        if self.cache.outputs:
            trie = self.cache.trie
            sources.append((trie, trie.match_tail(state.tokens)))
        cfg = self.config
        return best_draft(
            sources,
            max_depth=self.max_depth,
            max_drafts=max_drafts,
            spec_factor=cfg.suffix_decoding_max_spec_factor,
            min_token_prob=cfg.suffix_decoding_min_token_prob,
        )

    def _synced_state(self, request: ProposeRequest) -> RequestState:
        """The request's state, brought in line with ``request.token_ids`` if it drifted."""
        token_ids = request.token_ids
        state = self.requests.get(request.request_id)
        if state is not None:
            n, have = len(token_ids), len(state.tokens)
            if n == have and (n == 0 or state.tokens[-1] == token_ids[-1]):
                return state
            if have < n and [int(t) for t in token_ids[:have]] == state.tokens:
                state.extend(token_ids[have:])  # missed an on_verified: catch up
                return state
        state = RequestState(token_ids, request.num_prompt_tokens, self.max_depth)
        self.requests[request.request_id] = state
        return state

    # -- introspection (tests, metrics) ---------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        """Trie nodes held now: every request trie plus the global trie."""
        return self.cache.trie.num_nodes + sum(s.trie.num_nodes for s in self.requests.values())
