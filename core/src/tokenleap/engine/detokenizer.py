"""Incremental detokenisation: text grows as tokens arrive, without re-decoding the whole output.

Byte-level tokenizers can split one character over several tokens; a window of already-decoded
tokens is decoded again with the new ones, and text is only emitted once it no longer ends in an
incomplete character (U+FFFD).
"""

from __future__ import annotations

from tokenleap.engine.request import Request

_WINDOW = 5  # tokens of left context re-decoded so that merges at the boundary come out right


def init_offsets(request: Request) -> None:
    """Start decoding at the end of the prompt (with a little prompt context)."""
    n = request.num_prompt_tokens
    request.prefix_offset = max(0, n - _WINDOW)
    request.read_offset = n


def append_token_text(request: Request, tokenizer, skip_special_tokens: bool) -> str:
    """Decode the newest token of ``request.all_token_ids`` and return the text it adds (may be '')."""
    ids = request.all_token_ids
    prefix_text = tokenizer.decode(
        ids[request.prefix_offset : request.read_offset], skip_special_tokens=skip_special_tokens
    )
    full_text = tokenizer.decode(ids[request.prefix_offset :], skip_special_tokens=skip_special_tokens)
    if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
        delta = full_text[len(prefix_text) :]
        request.prefix_offset = request.read_offset
        request.read_offset = len(ids)
        return delta
    return ""
