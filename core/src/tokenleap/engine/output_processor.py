"""Applying one step's emitted tokens to a request: stop conditions inside the accepted run,
incremental text, logprobs."""

from __future__ import annotations

from tokenleap.engine.detokenizer import Decode, append_token_text, append_tokens_text
from tokenleap.engine.model_runner import SampledRequest
from tokenleap.engine.request import Request, RequestStatus
from tokenleap.outputs import Logprob


def text_waits(request: Request) -> bool:
    """Whether the text of a step's tokens is left to ``flush_text`` (made once per step, possibly while the
    next step runs): nothing but the tokens decides when the request stops (no stop strings)."""
    return not request.params.stop_strings


def append_tokens(request: Request, sampled: SampledRequest, decode: Decode | None, max_model_len: int) -> list[int]:
    """Append emitted tokens one by one until a stop condition ends the request.

    Returns the tokens actually kept (a prefix of ``sampled.token_ids``). Sets status, finish_reason
    and stop_reason when the request finished. The text comes token by token here only for a request with
    stop strings (the text decides where it stops); otherwise ``flush_text`` makes it afterwards.
    """
    p = request.params
    stop_strings = p.stop_strings
    text_decode = None if text_waits(request) else decode  # the text of each token, here (logprobs use decode)
    kept: list[int] = []
    for j, token in enumerate(sampled.token_ids):
        request.output_token_ids.append(token)
        request.all_token_ids.append(token)
        kept.append(token)
        if sampled.logprobs is not None:
            _record_logprob(request, token, sampled.logprobs[j], decode)
        n_out = request.num_output_tokens
        past_min = n_out >= p.min_tokens
        is_stop_id = p.stop_token_ids is not None and token in p.stop_token_ids
        is_eos = not p.ignore_eos and token in request.eos_token_ids
        if past_min and (is_stop_id or is_eos):
            skip = _text_left_out(request, token)
            if not skip and text_decode is not None:
                request.text += append_token_text(request, text_decode, p.skip_special_tokens)
            _finish(request, RequestStatus.FINISHED_STOPPED, None if is_eos and not is_stop_id else token)
            return kept
        delta = append_token_text(request, text_decode, p.skip_special_tokens) if text_decode is not None else ""
        if delta:
            before = len(request.text)
            request.text += delta
            if stop_strings and past_min and _truncate_at_stop(request, stop_strings, before):
                return kept
        if n_out >= request.max_tokens or request.num_tokens >= max_model_len:
            _finish(request, RequestStatus.FINISHED_LENGTH, None)
            return kept
    return kept


def flush_text(request: Request, decode: Decode | None) -> None:
    """Add the text of the tokens ``append_tokens`` appended without it (``text_waits``): the same text as
    token by token (a final EOS / stop token stays out of it as there)."""
    if decode is None:
        return
    ids = request.all_token_ids
    end = len(ids)
    if request.status == RequestStatus.FINISHED_STOPPED and _text_left_out(request, ids[-1]):
        end -= 1
    if end > request.read_offset:
        request.text += append_tokens_text(request, decode, request.params.skip_special_tokens, end)


def _text_left_out(request: Request, stop_token: int) -> bool:
    """A token that stopped the request is left out of the text: always EOS, a stop token id unless
    include_stop_str_in_output."""
    p = request.params
    return (not p.ignore_eos and stop_token in request.eos_token_ids) or not p.include_stop_str_in_output


def _truncate_at_stop(request: Request, stop_strings: list[str], new_from: int) -> bool:
    longest = max(len(s) for s in stop_strings)
    search_from = max(0, new_from - longest + 1)
    best: tuple[int, str] | None = None
    for s in stop_strings:
        at = request.text.find(s, search_from)
        if at != -1 and (best is None or at < best[0]):
            best = (at, s)
    if best is None:
        return False
    at, s = best
    request.text = request.text[: at + len(s)] if request.params.include_stop_str_in_output else request.text[:at]
    _finish(request, RequestStatus.FINISHED_STOPPED, s)
    return True


def _record_logprob(request: Request, token: int, entry: tuple[float, int, list], decode: Decode | None) -> None:
    lp, rank, top = entry
    request.cumulative_logprob += lp

    def text(t: int) -> str | None:
        return decode([t], False) if decode is not None else None

    step = {token: Logprob(lp, rank, text(token))}
    for i, (tid, val) in enumerate(top):
        if tid not in step:
            step[tid] = Logprob(val, i + 1, text(tid))
    request.logprobs.append(step)


def _finish(request: Request, status: RequestStatus, stop_reason: int | str | None) -> None:
    request.status = status
    request.finish_reason = status.value
    request.stop_reason = stop_reason
