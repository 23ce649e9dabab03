"""What one engine step changed in a request, as a small picklable record, and applying it to a copy.

The engine process keeps, per request, what it has already sent (``Sent``); after each step ``stream_delta``
gives the new tokens, the text change, new logprobs and the request's state, or None when nothing changed. The
HTTP process holds its own ``Request`` for each stream (made there, pickled to the engine) and ``apply_delta``
brings it to the engine's state, so that its outputs are built from it exactly as in one process.

Text is not always append-only: a stop string found in the text cuts it when the request ends. A delta therefore
says how much of the text sent so far to keep and what to append.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from tokenleap.engine.request import Request, RequestStatus


class StreamDelta(NamedTuple):
    request_id: str
    new_token_ids: list[int]
    text_keep: int  # characters of the text sent so far that stay
    text_add: str
    new_logprobs: list | None  # entries after those sent, or None (no logprobs asked)
    cumulative_logprob: float
    status: str  # RequestStatus value
    finish_reason: str | None
    stop_reason: int | str | None
    metrics: Any  # RequestMetrics on the first delta and when the request ends, else None


@dataclass
class Sent:
    """What the engine process has sent of one request."""

    tokens: int = 0
    text: str = ""
    logprobs: int = 0
    status: RequestStatus = RequestStatus.WAITING


def _common_prefix_len(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def stream_delta(r: Request, sent: Sent) -> StreamDelta | None:
    """What changed in ``r`` since ``sent`` (which is updated), or None."""
    n = len(r.output_token_ids)
    if n == sent.tokens and r.status is sent.status and len(r.text) == len(sent.text) and r.text == sent.text:
        return None
    keep = _common_prefix_len(sent.text, r.text)
    new_lp = None
    if r.logprobs is not None:
        new_lp = r.logprobs[sent.logprobs:]
        sent.logprobs = len(r.logprobs)
    first = sent.tokens == 0 and sent.status is RequestStatus.WAITING
    delta = StreamDelta(r.request_id, r.output_token_ids[sent.tokens:], keep, r.text[keep:], new_lp,
                        r.cumulative_logprob, r.status.value, r.finish_reason, r.stop_reason,
                        r.metrics if first or r.status.finished else None)
    sent.tokens, sent.text, sent.status = n, r.text, r.status
    return delta


def merge_deltas(a: StreamDelta, b: StreamDelta) -> StreamDelta:
    """One delta with the effect of ``a`` then ``b`` (same request): what the engine process sends when this
    process has not read ``a`` yet, so that a slow reader gets fewer, longer messages instead of holding up steps."""
    text_after_a = a.text_keep + len(a.text_add)
    if b.text_keep >= a.text_keep:  # b keeps all of a's kept text, and a prefix of what a added
        keep, add = a.text_keep, a.text_add[: b.text_keep - a.text_keep] + b.text_add
    else:
        keep, add = b.text_keep, b.text_add
    assert b.text_keep <= text_after_a, "b keeps more text than a left"
    logprobs = None if a.new_logprobs is None else a.new_logprobs + (b.new_logprobs or [])
    return StreamDelta(a.request_id, a.new_token_ids + b.new_token_ids, keep, add, logprobs, b.cumulative_logprob,
                       b.status, b.finish_reason, b.stop_reason, b.metrics if b.metrics is not None else a.metrics)


class PendingDeltas:
    """Deltas not sent yet, one per request (merged), in the order requests first changed."""

    def __init__(self) -> None:
        self._by_id: dict[str, StreamDelta] = {}

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def add(self, deltas: list[StreamDelta]) -> None:
        for d in deltas:
            old = self._by_id.get(d.request_id)
            self._by_id[d.request_id] = d if old is None else merge_deltas(old, d)

    def take(self) -> list[StreamDelta]:
        out, self._by_id = list(self._by_id.values()), {}
        return out


def apply_delta(r: Request, d: StreamDelta) -> None:
    """Bring ``r`` (the HTTP process's copy) to the engine's state that ``d`` was made from."""
    r.output_token_ids.extend(d.new_token_ids)
    r.all_token_ids.extend(d.new_token_ids)
    r.text = r.text[: d.text_keep] + d.text_add
    if d.new_logprobs is not None and r.logprobs is not None:
        r.logprobs.extend(d.new_logprobs)
    r.cumulative_logprob = d.cumulative_logprob
    r.status = RequestStatus(d.status)
    r.finish_reason, r.stop_reason = d.finish_reason, d.stop_reason
    if d.metrics is not None:
        r.metrics = d.metrics
