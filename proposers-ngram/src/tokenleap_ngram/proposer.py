"""Prompt lookup decoding: draft the tokens that followed the last n tokens when they occurred before.

For n from ``prompt_lookup_max`` down to ``prompt_lookup_min``: find the most recent *earlier* occurrence
of the request's last n tokens in prompt + generated tokens, and propose the (up to k) tokens that followed
it. The largest n that matches wins; no match gives no drafts.

Cost. Each request keeps its token list and one dict ``n-gram tuple -> end position of its most recent
occurrence that is followed by at least one token``. Appending a token adds ``max - min + 1`` entries
(the n-grams that end just before it); a lookup is ``max - min + 1`` dict probes. Nothing scans the
history, so a step costs the same at 8k tokens as at 80. The current suffix is never in the dict: an
n-gram enters it only once a token follows it, which is what "earlier occurrence" means.
Memory: about ``(max - min + 1) * len(tokens)`` dict entries per running request, dropped on finish/abort.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from tokenleap_plugins import (
    DeviceDrafter,
    DeviceDraftingSpec,
    Drafts,
    ProposeBatch,
    ProposerBase,
    ProposerContext,
    VerifiedRequest,
)

from tokenleap_ngram.prompt_lookup import DEVICE_MAX_LOOKUP, prompt_lookup

# vLLM's defaults, so that a speculative_config written for vLLM drafts the same here: with neither key
# both are 5; with one key the other takes its value.
DEFAULT_PROMPT_LOOKUP = 5


class NgramConfig(BaseModel):
    """Keys of ``speculative_config`` for method ``"ngram"`` (``num_speculative_tokens`` is required)."""

    model_config = ConfigDict(extra="forbid")

    prompt_lookup_min: int | None = Field(default=None, ge=1, description="smallest n-gram to match")
    prompt_lookup_max: int | None = Field(
        default=None, ge=1, validate_default=True, description="largest n-gram to match (tried first)"
    )

    @field_validator("prompt_lookup_max")
    @classmethod
    def _max_not_below_min(cls, hi: int | None, info: ValidationInfo) -> int:
        lo = info.data.get("prompt_lookup_min")
        if hi is None:
            return DEFAULT_PROMPT_LOOKUP if lo is None else lo
        if lo is not None and lo > hi:
            raise ValueError(f"prompt_lookup_max={hi} must be >= prompt_lookup_min={lo}")
        return hi

    @model_validator(mode="after")
    def _min_defaults_to_max(self) -> NgramConfig:
        if self.prompt_lookup_min is None:
            self.prompt_lookup_min = self.prompt_lookup_max
        return self


class _RequestIndex:
    """One request's tokens and its n-gram -> most recent (followed) end position dict."""

    __slots__ = ("tokens", "ends")

    def __init__(self, token_ids: Sequence[int], lo: int, hi: int) -> None:
        self.tokens: list[int] = list(map(int, token_ids))
        self.ends: dict[tuple[int, ...], int] = {}
        toks, size = self.tokens, len(self.tokens)
        for n in range(lo, min(hi, size - 1) + 1):
            # n-grams ending at e = n .. size-1 (each followed by toks[e]); later ends overwrite earlier.
            grams = zip(*(toks[i : size - n + i] for i in range(n)))
            self.ends.update(zip(grams, range(n, size)))

    def extend(self, new_token_ids: Sequence[int], lo: int, hi: int) -> None:
        toks, ends = self.tokens, self.ends
        for token in new_token_ids:
            size = len(toks)  # the n-grams ending here become "earlier occurrences" once `token` follows
            for n in range(lo, min(hi, size) + 1):
                ends[tuple(toks[size - n : size])] = size
            toks.append(int(token))

    def lookup(self, num_drafts: int, lo: int, hi: int) -> list[int]:
        toks, ends = self.tokens, self.ends
        size = len(toks)
        for n in range(min(hi, size - 1), lo - 1, -1):  # an earlier n-gram needs n + 1 tokens at least
            end = ends.get(tuple(toks[size - n :]))
            if end is not None:
                return toks[end : end + num_drafts]
        return []


class NgramProposer(ProposerBase):
    """Model-free proposer: needs nothing from the engine, drafts 0..k tokens per request."""

    def __init__(self, config: NgramConfig, context: ProposerContext) -> None:
        self.lo = config.prompt_lookup_min
        self.hi = config.prompt_lookup_max
        self.k = context.num_speculative_tokens
        self._requests: dict[str, _RequestIndex] = {}

    def device_drafter(self, spec: DeviceDraftingSpec) -> DeviceDrafter | None:
        """The same drafts made on the device (prompt lookup as a graph kernel), for lookups up to 16 tokens."""
        if self.hi > DEVICE_MAX_LOOKUP:
            return None
        from tokenleap_ngram.device.drafter import PromptLookupDrafter  # torch only when the engine asks

        return PromptLookupDrafter(spec, self.lo, self.hi)

    def on_request_added(self, request_id: str, prompt_token_ids: Sequence[int]) -> None:
        self._requests[request_id] = _RequestIndex(prompt_token_ids, self.lo, self.hi)

    def on_verified(self, results: Sequence[VerifiedRequest]) -> None:
        for result in results:
            index = self._requests.get(result.request_id)
            if index is not None:
                index.extend(result.new_token_ids, self.lo, self.hi)

    def on_request_finished(self, request_id: str, token_ids: Sequence[int]) -> None:
        self._requests.pop(request_id, None)

    def on_request_aborted(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def propose(self, batch: ProposeBatch) -> Drafts:
        drafts: list[list[int]] = []
        for request in batch.requests:
            num = min(request.max_num_drafts, self.k)
            if num <= 0:
                drafts.append([])
                continue
            index = self._requests.get(request.request_id)
            if index is None or len(index.tokens) != len(request.token_ids):
                index = self._resync(request.request_id, index, request.token_ids)
            drafts.append(index.lookup(num, self.lo, self.hi))
        return Drafts(token_ids=drafts)

    def _resync(self, request_id: str, index: _RequestIndex | None, token_ids: Sequence[int]) -> _RequestIndex:
        """Our tokens disagree in length with the engine's (missed events, or a rollback): follow it.

        Longer: append the tail we have not seen (an engine that never calls on_verified costs nothing
        more). Shorter or unknown request: rebuild from scratch.
        """
        if index is not None and len(index.tokens) < len(token_ids):
            index.extend(token_ids[len(index.tokens) :], self.lo, self.hi)
        else:
            index = _RequestIndex(token_ids, self.lo, self.hi)
            self._requests[request_id] = index
        return index


def lookup_reference(token_ids: Sequence[int], num_drafts: int, lo: int, hi: int) -> list[int]:
    """Brute force: scan the whole history. The definition the fast path and the device drafter must match
    (used by tests): ``prompt_lookup.prompt_lookup``."""
    return prompt_lookup(token_ids, num_drafts, lo, hi)
