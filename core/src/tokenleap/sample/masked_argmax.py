"""Greedy decoding under constraints, one row per request: the argmax of the logits after bans, biases and the
allowed-token bitmask.

The reference is ``sampler.sample`` on a batch without drafts whose rows carry the same constraints
(``process_logits`` then argmax): this is the same ops in the same order on every row at once (a row without a
mask gets an all-ones bitmask, which changes nothing), so the tokens are the same bit for bit. It is what a
graphed decode step of constrained greedy requests runs after its forward (``engine.masked_decode``).
"""

from __future__ import annotations

import torch

from tokenleap.sample.logits import add_bias, ban_tokens, unpack_bitmask


def masked_argmax(
    logits: torch.Tensor,  # [n, vocab], any float dtype (a graph's raw logits)
    bitmask: torch.Tensor | None,  # [n, ceil(vocab / 32)] int32, bit set = allowed; None = all allowed
    bans: tuple[torch.Tensor, torch.Tensor] | None = None,  # (rows [m] int64, token ids [m] int64): -inf
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,  # (rows, ids [m] int64, values [m] fp32)
) -> torch.Tensor:  # [n] int64
    x = logits.float()  # out of place from here on: ``logits`` may be a graph's static output
    if bans is not None:
        x = ban_tokens(x, *bans)
    if bias is not None:
        x = add_bias(x, *bias)
    if bitmask is not None:
        x = x.masked_fill(~unpack_bitmask(bitmask, x.shape[-1]), float("-inf"))
    return x.argmax(dim=-1)
