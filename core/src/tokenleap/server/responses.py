"""OpenAI-shaped response bodies and stream chunks built from ``RequestOutput``s."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tokenleap.outputs import CompletionOutput, Logprob, RequestOutput, SpecDecodeStats


def usage(outputs: list[RequestOutput]) -> dict[str, int]:
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def spec_decode(outputs: list[RequestOutput]) -> dict[str, Any]:
    """The acceptance figures of these requests' own verification steps (the extension field)."""
    total = SpecDecodeStats()
    for o in outputs:
        if o.metrics is not None:
            total.add(o.metrics.spec_decode)
    return total.to_dict()


def _top(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    return sorted(entry.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)[:k]


def _token_text(lp: Logprob, token_id: int) -> str:
    return lp.decoded_token if lp.decoded_token is not None else f"token_id:{token_id}"


def chat_logprobs(c: CompletionOutput, start: int, end: int, k: int) -> dict[str, Any] | None:
    """``choices[i].logprobs`` of a chat completion for output tokens [start, end)."""
    if c.logprobs is None:
        return None
    content = []
    for tid, entry in zip(c.token_ids[start:end], c.logprobs[start:end]):
        lp = entry[tid]
        tok = _token_text(lp, tid)
        content.append({
            "token": tok, "logprob": lp.logprob, "bytes": list(tok.encode("utf-8")),
            "top_logprobs": [{"token": _token_text(v, t), "logprob": v.logprob,
                              "bytes": list(_token_text(v, t).encode("utf-8"))} for t, v in _top(entry, k)],
        })
    return {"content": content}


def completion_logprobs(c: CompletionOutput, start: int, end: int, k: int, text_offset: int) -> dict[str, Any] | None:
    """``choices[i].logprobs`` of a (legacy) completion for output tokens [start, end)."""
    if c.logprobs is None:
        return None
    tokens, token_lps, tops, offsets = [], [], [], []
    for tid, entry in zip(c.token_ids[start:end], c.logprobs[start:end]):
        lp = entry[tid]
        tok = _token_text(lp, tid)
        tokens.append(tok)
        token_lps.append(lp.logprob)
        tops.append({_token_text(v, t): v.logprob for t, v in _top(entry, k)})
        offsets.append(text_offset)
        text_offset += len(tok)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


@dataclass
class ChoiceCursor:
    """What of one choice has been streamed so far."""

    text: int = 0
    tokens: int = 0
    done: bool = False


@dataclass
class StreamState:
    n: int
    cursors: dict[int, ChoiceCursor] = field(default_factory=dict)

    def cursor(self, index: int) -> ChoiceCursor:
        return self.cursors.setdefault(index, ChoiceCursor())


def sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


class ChunkEncoder:
    """``sse({**head, "choices": choices})`` for the many chunks of one stream, with the fixed part encoded once."""

    def __init__(self, head: dict[str, Any]) -> None:
        fixed = json.dumps({**head, "choices": None}, ensure_ascii=False)
        assert fixed.endswith('"choices": null}')
        self._prefix = "data: " + fixed[: -len("null}")]

    def __call__(self, choices: list[dict[str, Any]]) -> bytes:
        return f"{self._prefix}{json.dumps(choices, ensure_ascii=False)}}}\n\n".encode()
