"""Drafting from a head's logits: the argmax for greedy requests, else a sample from the request's own
distribution (temperature, min-p, top-k, top-p, as the target samples) with the probabilities it came from.

The noise is counter-based (``tokenleap.sample.noise``) in a domain of its own, keyed by the request's seed,
stream and the draft's token position: a seeded request drafts the same tokens whatever else is in the batch,
and the drafts are independent of the verifier's acceptance uniforms and token draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tokenleap.sample.logits import RowParams, to_probs
from tokenleap.sample.noise import mix32, row_keys
from tokenleap_plugins import SamplingInfo

DOMAIN_DRAFT = 0x3C6EF372  # differs from the verifier's DOMAIN_ACCEPT / DOMAIN_TOKEN


def draft_noise(seeds: torch.Tensor, streams: torch.Tensor, positions: torch.Tensor,
                vocab_size: int) -> torch.Tensor:  # [rows, vocab] float32 Exp(1)
    keys = row_keys(seeds, streams, positions, DOMAIN_DRAFT)  # [rows]
    vocab = mix32(torch.arange(vocab_size, device=keys.device, dtype=torch.int64) ^ 0x165667B1)  # [vocab]
    u = ((mix32(keys[:, None] ^ vocab[None, :]) >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(u)


def row_params(infos: Sequence[SamplingInfo], positions: Sequence[int], device: torch.device) -> RowParams:
    """One row per draft being picked: its request's sampling settings, keyed at the draft's position."""
    f32 = dict(dtype=torch.float32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    temperature = torch.tensor([s.temperature for s in infos], **f32)
    top_k = torch.tensor([s.top_k for s in infos], **i64)
    top_p = torch.tensor([s.top_p for s in infos], **f32)
    min_p = torch.tensor([s.min_p for s in infos], **f32)
    greedy = [s.greedy for s in infos]
    return RowParams(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        seeds=torch.tensor([s.seed for s in infos], **i64), streams=torch.tensor([s.stream for s in infos], **i64),
        positions=torch.tensor(list(positions), **i64),
        any_top_k=any(s.top_k > 0 for s in infos), any_top_p=any(s.top_p < 1.0 for s in infos),
        any_min_p=any(s.min_p > 0 for s in infos), any_greedy=any(greedy), all_greedy=all(greedy),
    )


def pick_drafts(logits: torch.Tensor, params: RowParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [rows, vocab] float32 -> (tokens [rows] int64, probs [rows, vocab] float32 or None when every
    row is greedy). Greedy rows take the argmax (their probs row is a one-hot, unused by the verifier)."""
    if params.all_greedy:
        return logits.argmax(dim=-1), None
    probs = to_probs(logits, params)  # greedy rows: one-hot at the argmax
    noise = draft_noise(params.seeds, params.streams, params.positions, logits.shape[-1])
    return (probs / noise).argmax(dim=-1), probs
