"""Draft distributions and draws: pure functions on logits rows.

A draft token sampled at temperature > 0 must come with the distribution it was drawn from (verification is
rejection sampling, lossless for any draft distribution). The draft applies the request's own temperature,
min-p, top-k and top-p, which raises acceptance. Draws use the engine's counter-based noise in a domain of their
own: reproducible per (seed, completion, position), independent of the target's acceptance and token draws.
"""

from __future__ import annotations

import torch
from tokenleap.sample import noise

DOMAIN_DRAFT = 0x5BD1E995  # keys draft draws apart from the verifier's acceptance and token draws


def draft_probs(
    logits: torch.Tensor,  # [rows, vocab] float32
    temperature: torch.Tensor,  # [rows] float32, > 0
    top_k: torch.Tensor,  # [rows] int64, 0 = off
    top_p: torch.Tensor,  # [rows] float32, 1 = off
    min_p: torch.Tensor,  # [rows] float32, 0 = off
) -> torch.Tensor:  # [rows, vocab] float32, rows sum to 1
    from tokenleap.sample.logits import RowParams, to_probs

    rows = RowParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seeds=top_k, streams=top_k,
                     positions=top_k, any_top_k=bool((top_k > 0).any()), any_top_p=bool((top_p < 1).any()),
                     any_min_p=bool((min_p > 0).any()), any_greedy=False, all_greedy=False)
    return to_probs(logits, rows)


def draw(
    probs: torch.Tensor,  # [rows, vocab]
    seeds: torch.Tensor,  # [rows] int64
    streams: torch.Tensor,  # [rows] int64
    positions: torch.Tensor,  # [rows] int64, output index the draft stands at
) -> torch.Tensor:  # [rows] int64
    """One token per row with probability ``probs`` (exponential race on the draft domain's noise)."""
    return noise.sample_from_probs(probs, noise.exponential(seeds, streams, positions, probs.shape[-1], DOMAIN_DRAFT))
