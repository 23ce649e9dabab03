"""Greedy decoding under constraints, one row per request: the argmax of the logits after bans, biases and the
allowed-token bitmask.

The reference is ``sampler.sample`` on a batch without drafts whose rows carry the same constraints
(``process_logits`` then argmax): the same bans and biases in float32, the same -inf for disallowed tokens, on
every row at once (a row without a mask gets an all-ones bitmask, which changes nothing), so the tokens are the
same bit for bit. Two shortcuts, each exact: without bans or biases the logits stay in their dtype (float32 holds every
bf16 / fp16 value, so the maximum and its first index are the same), and the bitmask is unpacked by a byte lookup
table (one gather) rather than shifts. It is what a graphed decode step of constrained greedy requests runs after
its forward (``engine.masked_decode``), a few kernel launches on the host's critical path.
"""

from __future__ import annotations

import torch

from tokenleap.sample.logits import add_bias, ban_tokens


def byte_bits(device: torch.device) -> torch.Tensor:  # [256, 8] bool
    """Row b: the bits of byte b, least significant first (the bitmask's order within a little-endian word)."""
    return (torch.arange(256)[:, None] >> torch.arange(8)[None, :] & 1).bool().to(device)


def masked_argmax(
    logits: torch.Tensor,  # [n, vocab], any float dtype (a graph's raw logits: never written)
    bitmask: torch.Tensor | None,  # [n, ceil(vocab / 32)] int32, bit set = allowed; None = all allowed
    bits: torch.Tensor,  # [256, 8] bool, byte_bits(device)
    bans: tuple[torch.Tensor, torch.Tensor] | None = None,  # (rows [m] int64, token ids [m] int64): -inf
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,  # (rows, ids [m] int64, values [m] fp32)
) -> torch.Tensor:  # [n] int64
    x = logits.float() if bias is not None or bans is not None else logits
    if bans is not None:
        x = ban_tokens(x, *bans)  # out of place
    if bias is not None:
        x = add_bias(x, *bias)
    if bitmask is not None:
        n, vocab = x.shape
        allowed = bits[bitmask.view(torch.uint8).long()].view(n, -1)[:, :vocab]  # [n, vocab]
        x = torch.where(allowed, x, float("-inf"))
    return x.argmax(dim=-1)
