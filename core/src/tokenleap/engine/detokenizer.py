"""Incremental detokenisation: text grows as tokens arrive, without re-decoding the whole output.

Byte-level tokenizers can split one character over several tokens; a window of already-decoded
tokens is decoded again with the new ones, and text is only emitted once it no longer ends in an
incomplete character (U+FFFD).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tokenleap.engine.request import Request

_WINDOW = 5  # tokens of left context re-decoded so that merges at the boundary come out right

Decode = Callable[[Sequence[int], bool], str]  # (token_ids, skip_special_tokens) -> text


def text_decoder(tokenizer) -> Decode | None:
    """The tokenizer's decode as a plain function. It calls the Rust ``tokenizers`` backend directly when that
    gives the same text (no clean-up pass applies): transformers' wrapper around it costs more than the decode
    itself, and it runs twice per generated token."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and type(backend).__module__.startswith("tokenizers") and not _cleans_up(tokenizer):
        return lambda ids, skip: backend.decode(ids, skip_special_tokens=skip)
    return lambda ids, skip: tokenizer.decode(ids, skip_special_tokens=skip)


def _cleans_up(tokenizer) -> bool:
    """Whether transformers' decode post-processes the backend's text (``clean_up_tokenization_spaces``;
    transformers 5 skips it for BPE models unless forced)."""
    if not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return False
    force = getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", None)
    is_bpe = type(tokenizer._tokenizer.model).__name__ == "BPE"
    return not (force is False and is_bpe)


def init_offsets(request: Request) -> None:
    """Start decoding at the end of the prompt (with a little prompt context)."""
    n = request.num_prompt_tokens
    request.prefix_offset = max(0, n - _WINDOW)
    request.read_offset = n


def append_token_text(request: Request, decode: Decode, skip_special_tokens: bool, end: int | None = None) -> str:
    """Decode the tokens of ``request.all_token_ids`` up to ``end`` (default: all; the newest being ``end - 1``)
    and return the text they add after the last emitted text (may be '': a character still incomplete)."""
    ids = request.all_token_ids
    end = len(ids) if end is None else end
    prefix_text = decode(ids[request.prefix_offset : request.read_offset], skip_special_tokens)
    full_text = decode(ids[request.prefix_offset : end], skip_special_tokens)
    if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
        delta = full_text[len(prefix_text) :]
        request.prefix_offset = request.read_offset
        request.read_offset = end
        return delta
    return ""


def append_tokens_text(request: Request, decode: Decode, skip_special_tokens: bool, end: int) -> str:
    """The text of the tokens after the last decoded one up to ``end``, made at once: the same text as one
    ``append_token_text`` per token. One decode when their text is clean (no U+FFFD: every character complete
    and valid), where it is the concatenation of the one-by-one texts; otherwise token by token."""
    if end - request.read_offset > 1:
        ids = request.all_token_ids
        prefix_text = decode(ids[request.prefix_offset : request.read_offset], skip_special_tokens)
        full_text = decode(ids[request.prefix_offset : end], skip_special_tokens)
        delta = full_text[len(prefix_text) :]
        if full_text.startswith(prefix_text) and delta and "\ufffd" not in delta:
            request.prefix_offset, request.read_offset = end - 1, end
            return delta
    first = request.read_offset + 1
    return "".join(append_token_text(request, decode, skip_special_tokens, i) for i in range(first, end + 1))
