"""The draft vocabulary: the most frequent target tokens of the training answers, as EAGLE-3's d2t / t2d."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch


def draft_vocabulary(tokens: Iterable[int], size: int, vocab_size: int) -> torch.Tensor:
    """[min(size, vocab_size)] sorted target ids: the most frequent ``tokens`` first (ties to the lower id), then
    the lowest ids not seen, to fill up."""
    size = min(size, vocab_size)
    counts = Counter(tokens)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[:size]
    if len(ranked) < size:
        seen = set(ranked)
        ranked += [t for t in range(vocab_size) if t not in seen][: size - len(ranked)]
    return torch.tensor(sorted(ranked), dtype=torch.int64)


def d2t_t2d(draft_ids: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(d2t [draft] int64 offsets: target id = draft id + d2t[draft id]; t2d [vocab] bool)."""
    d2t = draft_ids - torch.arange(len(draft_ids))
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[draft_ids] = True
    return d2t, t2d
