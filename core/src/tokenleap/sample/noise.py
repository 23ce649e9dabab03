"""Counter-based random numbers for sampling, computed on the device with no generator state.

Every draw is a pure function of (seed, stream, output position, domain, vocab index), so a seeded
request samples the same tokens whatever else is in the batch, whether it was preempted, and on
any device. ``stream`` separates the n completions of one prompt; ``domain`` separates the
acceptance uniform of rejection sampling from the token draw at the same position.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
DOMAIN_ACCEPT = 0x1B873593
DOMAIN_TOKEN = 0x68E31DA4


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply); int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def row_keys(
    seeds: torch.Tensor,  # [rows] int64, any value
    streams: torch.Tensor,  # [rows] int64
    positions: torch.Tensor,  # [rows] int64, output index the row samples
    domain: int,
) -> torch.Tensor:  # [rows] int64 in [0, 2**32)
    seed_lo = seeds & _MASK32
    seed_hi = (seeds >> 32) & _MASK32
    h = mix32(seed_lo ^ mix32(seed_hi ^ 0x9E3779B9))
    h = mix32(h ^ mix32((streams & _MASK32) ^ 0x85EBCA6B))
    h = mix32(h ^ mix32((positions & _MASK32) ^ domain))
    return h


def _to_unit(h: torch.Tensor) -> torch.Tensor:
    """uint32 hash -> float32 uniform in (0, 1), 24 bits of resolution."""
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def uniform(seeds, streams, positions) -> torch.Tensor:  # [rows] float32 in (0, 1)
    return _to_unit(mix32(row_keys(seeds, streams, positions, DOMAIN_ACCEPT)))


def exponential(seeds, streams, positions, vocab_size: int, domain: int = DOMAIN_TOKEN) -> torch.Tensor:
    """Independent Exp(1) draws per row and vocab entry, for the exponential race ([rows, vocab] float32).
    ``domain`` keys independent streams of draws (the verifier's token draws by default)."""
    keys = row_keys(seeds, streams, positions, domain)  # [rows]
    vocab = mix32(torch.arange(vocab_size, device=keys.device, dtype=torch.int64) ^ 0x27D4EB2F)  # [vocab]
    u = _to_unit(mix32(keys[:, None] ^ vocab[None, :]))  # [rows, vocab]
    return -torch.log(u)


def sample_from_probs(probs: torch.Tensor, exp_noise: torch.Tensor) -> torch.Tensor:
    """Exponential race: argmax p / E draws index i with probability p_i (exact, one pass).

    probs: [rows, vocab] non-negative (need not be normalised); exp_noise: [rows, vocab] Exp(1).
    """
    return (probs / exp_noise).argmax(dim=-1)


def sample_with_noise(
    probs: torch.Tensor,  # [rows, vocab] non-negative, need not be normalised
    seeds: torch.Tensor,  # [rows] int64: the request's seed
    streams: torch.Tensor,  # [rows] int64: its completion index
    positions: torch.Tensor,  # [rows] int64: the output index the token is drawn for
) -> torch.Tensor:  # [rows] int64
    """Draw one token per row with the noise the target's sampler uses at that output position.

    A proposer that draws its draft for output position ``t`` with this function (from its own
    distribution q) makes coupled verification accept the draft whenever the target's own draw (from p,
    with the same noise) is the same token: the Gumbel-max coupling of "drafter-invariant speculative
    decoding" (Daliri et al. 2024). The target's output never depends on the drafts either way.
    """
    return sample_from_probs(probs, exponential(seeds, streams, positions, probs.shape[-1]))
