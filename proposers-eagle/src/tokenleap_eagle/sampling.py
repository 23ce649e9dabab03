"""Choosing draft tokens: argmax for greedy requests; for sampled ones a draw from the head's distribution over the
target vocabulary after the request's temperature, min-p, top-k and top-p (matching the target's processing raises
acceptance; any distribution stays lossless as long as it is the one returned).

Draws use the engine's counter-based noise in a domain of their own, keyed by (seed, stream, output position):
reproducible whatever the batch, independent of the verifier's draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenleap.sample import noise
from tokenleap.sample.logits import RowParams, to_probs

DOMAIN_EAGLE = 0x2C1B3C6D


def choose(
    logits: torch.Tensor,  # [rows, vocab] float32 over the target vocabulary (-inf outside the draft vocabulary)
    sampling: Sequence,  # per row a SamplingInfo
    positions: torch.Tensor,  # [rows] int64: the output index each draft stands at
) -> tuple[torch.Tensor, torch.Tensor | None]:  # (tokens [rows] int64, probs [rows, vocab] fp32 or None)
    greedy = [s.greedy for s in sampling]
    argmax = logits.argmax(dim=-1)
    if all(greedy):
        return argmax, None
    dev = logits.device
    temps = torch.tensor([s.temperature if s.temperature > 0 else 1.0 for s in sampling], device=dev)
    top_k = torch.tensor([s.top_k for s in sampling], device=dev)
    top_p = torch.tensor([s.top_p for s in sampling], device=dev)
    min_p = torch.tensor([s.min_p for s in sampling], device=dev)
    seeds = torch.tensor([s.seed for s in sampling], device=dev)
    streams = torch.tensor([s.stream for s in sampling], device=dev)
    rows = RowParams(temperature=temps, top_k=top_k, top_p=top_p, min_p=min_p, seeds=seeds, streams=streams,
                     positions=positions, any_top_k=bool((top_k > 0).any()), any_top_p=bool((top_p < 1).any()),
                     any_min_p=bool((min_p > 0).any()), any_greedy=False, all_greedy=False)
    probs = to_probs(logits, rows)  # [rows, vocab]
    sampled = noise.sample_from_probs(probs, noise.exponential(seeds, streams, positions, probs.shape[-1],
                                                               DOMAIN_EAGLE))
    return torch.where(torch.tensor(greedy, device=dev), argmax, sampled), probs
