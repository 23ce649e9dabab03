"""Prompt lookup (n-gram) drafting: the definition the n-gram proposer's host path (``proposer.py``) and its
device drafter (``device/``) both follow. Pure Python, no state: this is the reference, not a fast path.
"""

from __future__ import annotations

from collections.abc import Sequence

DEVICE_MAX_LOOKUP = 16  # the largest lookup_max the device drafter matches (its kernel unrolls one compare per size)


def prompt_lookup_source(token_ids: Sequence[int], lookup_min: int, lookup_max: int) -> int:
    """Where the drafts start: the end of the most recent earlier occurrence of the longest suffix n-gram
    (``lookup_max`` >= n >= ``lookup_min``; ``tokens[end - n : end] == tokens[-n:]`` with ``end < len(tokens)``),
    or -1 when none matches."""
    tokens = list(token_ids)
    size = len(tokens)
    for n in range(lookup_max, lookup_min - 1, -1):
        if n >= size:
            continue
        suffix = tokens[size - n :]
        for end in range(size - 1, n - 1, -1):
            if tokens[end - n : end] == suffix:
                return end
    return -1


def prompt_lookup(token_ids: Sequence[int], num_drafts: int, lookup_min: int, lookup_max: int) -> list[int]:
    """The up to ``num_drafts`` tokens that followed that occurrence (none without a match)."""
    src = prompt_lookup_source(token_ids, lookup_min, lookup_max)
    return list(token_ids[src : src + num_drafts]) if src >= 0 and num_drafts > 0 else []
