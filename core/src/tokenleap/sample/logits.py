"""Turning raw logits into the distribution a request samples from (pure functions).

Order, per row: penalties (repetition, presence, frequency) -> bans (min_tokens' stop tokens, bad_words) ->
logit_bias -> allowed-token bitmask (allowed_token_ids and structured outputs) -> temperature -> min_p -> top_k
-> top_p. Greedy rows take the argmax after penalties, bans, biases and masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowParams:
    """Sampling parameters per logits row (a request has one row per position it samples)."""

    temperature: torch.Tensor  # [rows] float32; 0 = greedy
    top_k: torch.Tensor  # [rows] int64; 0 = off
    top_p: torch.Tensor  # [rows] float32; 1 = off
    min_p: torch.Tensor  # [rows] float32; 0 = off
    seeds: torch.Tensor  # [rows] int64
    streams: torch.Tensor  # [rows] int64
    positions: torch.Tensor  # [rows] int64, output index each row samples
    any_top_k: bool
    any_top_p: bool
    any_min_p: bool
    any_greedy: bool
    all_greedy: bool


def apply_penalties(
    logits: torch.Tensor,  # [rows, vocab] float32
    output_counts: torch.Tensor,  # [rows, vocab] float32, occurrences among output (+ earlier drafts)
    seen_mask: torch.Tensor,  # [rows, vocab] bool, token in prompt or output
    repetition: torch.Tensor,  # [rows] float32 (1 = off)
    presence: torch.Tensor,  # [rows] float32 (0 = off)
    frequency: torch.Tensor,  # [rows] float32 (0 = off)
) -> torch.Tensor:
    rep = repetition[:, None]
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen_mask, penalised, logits)
    logits = logits - frequency[:, None] * output_counts
    return logits - presence[:, None] * (output_counts > 0).to(logits.dtype)


def ban_tokens(logits: torch.Tensor, rows: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Set logits[rows[i], token_ids[i]] = -inf (min_tokens: stop tokens may not end the output yet)."""
    if rows.numel():
        logits = logits.index_put((rows, token_ids), torch.tensor(float("-inf"), device=logits.device))
    return logits


def add_bias(
    logits: torch.Tensor,  # [rows, vocab] float32
    rows: torch.Tensor,  # [num_biases] int64
    token_ids: torch.Tensor,  # [num_biases] int64
    values: torch.Tensor,  # [num_biases] float32
) -> torch.Tensor:
    """logits[rows[i], token_ids[i]] += values[i] (logit_bias)."""
    return logits.index_put((rows, token_ids), values, accumulate=True)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, words] int32, bit j of word w = token 32 w + j allowed -> [rows, vocab] bool."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask[:, :, None] >> shifts) & 1  # [rows, words, 32]
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_bitmask(
    logits: torch.Tensor,  # [rows, vocab] float32
    rows: torch.Tensor,  # [masked] int64, the rows the masks belong to
    bitmask: torch.Tensor,  # [masked, ceil(vocab / 32)] int32, bit set = token allowed
) -> torch.Tensor:
    """Disallowed tokens of the masked rows get -inf (allowed_token_ids, structured outputs)."""
    allowed = unpack_bitmask(bitmask, logits.shape[-1])  # [masked, vocab]
    masked = logits[rows].masked_fill(~allowed, float("-inf"))
    return logits.index_copy(0, rows, masked)


def to_probs(logits: torch.Tensor, p: RowParams) -> torch.Tensor:  # [rows, vocab] float32
    """Distribution of non-greedy rows after temperature, min_p, top_k and top_p.

    Greedy rows get a one-hot at their argmax, so callers may treat every row alike.
    """
    greedy = p.temperature == 0
    temp = torch.where(greedy, torch.ones_like(p.temperature), p.temperature)
    probs = torch.softmax(logits / temp[:, None], dim=-1)
    if p.any_min_p:
        top = probs.max(dim=-1, keepdim=True).values
        probs = torch.where(probs < p.min_p[:, None] * top, torch.zeros_like(probs), probs)
    if p.any_top_k or p.any_top_p:
        probs = _top_k_top_p(probs, p.top_k, p.top_p, p.any_top_k, p.any_top_p)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    if p.any_greedy:
        one_hot = torch.zeros_like(probs).scatter_(1, logits.argmax(dim=-1, keepdim=True), 1.0)
        probs = torch.where(greedy[:, None], one_hot, probs)
    return probs


def _top_k_top_p(probs, top_k, top_p, any_top_k: bool, any_top_p: bool) -> torch.Tensor:
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # [rows, vocab]
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if any_top_k:
        rank = torch.arange(probs.shape[-1], device=probs.device)[None, :]
        k = torch.where(top_k > 0, top_k, torch.full_like(top_k, probs.shape[-1]))
        keep &= rank < k[:, None]
    if any_top_p:
        masked = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        renorm = masked / masked.sum(dim=-1, keepdim=True)
        before = torch.cumsum(renorm, dim=-1) - renorm  # mass strictly before each token
        # keep the smallest prefix whose mass reaches top_p; top_p = 1 keeps everything (float32 rounding
        # can push `before` of the tail tokens to 1.0, which must not cut them off)
        keep &= (before < top_p[:, None]) | (top_p[:, None] >= 1.0)
    sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)
