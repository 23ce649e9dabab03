"""What one engine step changed in each request, as small picklable records, and applying them to copies.

The engine process keeps, per request, what it has already sent (``Sent``); after each step ``collect_step``
gives what changed. The HTTP process holds its own ``Request`` for each stream (made there, pickled to the
engine) and brings it to the engine's state with ``apply_step``, so that its outputs are built from it exactly as
in one process. Requests are named by a small int handle the HTTP process gave each stream.

Most changes in a step are "n more tokens and this text appended": those go as flat columns (``StepChanges``:
handles, counts, tokens, texts), cheap to make, pickle and apply, because at 64 streams on a fast model this runs
every millisecond and comes out of the engine's own time. Anything else (a request's first change, a state change
such as finishing, logprobs, text cut by a stop string) goes as a ``StreamDelta`` with the whole change: how much
of the text sent so far to keep and what to append, new logprobs, the state, and the metrics on the first and
last.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tokenleap.engine.request import Request, RequestStatus


class StreamDelta(NamedTuple):
    handle: int
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
class StepChanges:
    """One step's changes: appended tokens and text as columns (request i: ``counts[i]`` tokens of ``tokens``,
    in order, and ``texts[i]`` appended), then the other changes whole (applied after the columns)."""

    handles: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    deltas: list[StreamDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.handles or self.deltas)


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


def stream_delta(handle: int, r: Request, sent: Sent) -> StreamDelta | None:
    """What changed in ``r`` since ``sent`` (which is updated), whole, or None."""
    n = len(r.output_token_ids)
    if n == sent.tokens and r.status is sent.status and len(r.text) == len(sent.text) and r.text == sent.text:
        return None
    keep = _common_prefix_len(sent.text, r.text)
    new_lp = None
    if r.logprobs is not None:
        new_lp = r.logprobs[sent.logprobs:]
        sent.logprobs = len(r.logprobs)
    first = sent.tokens == 0 and sent.status is RequestStatus.WAITING
    delta = StreamDelta(handle, r.output_token_ids[sent.tokens:], keep, r.text[keep:], new_lp, r.cumulative_logprob,
                        r.status.value, r.finish_reason, r.stop_reason,
                        r.metrics if first or r.status.finished else None)
    sent.tokens, sent.text, sent.status = n, r.text, r.status
    return delta


def collect_step(entries: Iterable[tuple[int, Request, Sent]]) -> StepChanges:
    """The changes of (handle, request, sent) since their last collection (each ``sent`` is updated)."""
    out = StepChanges()
    for handle, r, sent in entries:
        text, n = r.text, len(r.output_token_ids)
        old = sent.text
        if r.status is sent.status and r.logprobs is None and sent.status is not RequestStatus.WAITING \
                and text.startswith(old):
            if n == sent.tokens and len(text) == len(old):
                continue  # nothing new
            out.handles.append(handle)
            out.counts.append(n - sent.tokens)
            out.tokens.extend(r.output_token_ids[sent.tokens:])
            out.texts.append(text[len(old):])
            sent.tokens, sent.text = n, text
        else:
            d = stream_delta(handle, r, sent)
            if d is not None:
                out.deltas.append(d)
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


def apply_step(changes: StepChanges, streams: dict[int, Request]) -> list[int]:
    """Apply one step's changes to the copies in ``streams`` (by handle; unknown handles are skipped: their
    caller has gone); returns the handles changed."""
    offset = 0
    for handle, count, text in zip(changes.handles, changes.counts, changes.texts):
        r = streams.get(handle)
        if r is not None:
            new = changes.tokens[offset: offset + count]
            r.output_token_ids.extend(new)
            r.all_token_ids.extend(new)
            r.text += text
        offset += count
    for d in changes.deltas:
        r = streams.get(d.handle)
        if r is not None:
            apply_delta(r, d)
    return changes.handles + [d.handle for d in changes.deltas]
