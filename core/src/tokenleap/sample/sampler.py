"""One step's sampling: logits rows -> emitted tokens per request (plain decode or verification).

Row layout: each scheduled request that samples this step owns ``1 + num_drafts`` consecutive rows of
``logits``: the positions of its last verified token(s). ``row_index`` gathers them into a padded
``[batch, k + 1]`` grid (padding repeats a request's last row; it is never used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenleap.sample import noise
from tokenleap.sample.logits import RowParams, add_bias, apply_bitmask, apply_penalties, ban_tokens, to_probs
from tokenleap.speculative.verify import rejection_sample, verify_coupled, verify_greedy


@dataclass
class Penalties:
    output_counts: torch.Tensor  # [rows, vocab] float32
    seen_mask: torch.Tensor  # [rows, vocab] bool
    repetition: torch.Tensor  # [rows]
    presence: torch.Tensor  # [rows]
    frequency: torch.Tensor  # [rows]


@dataclass
class SamplingBatch:
    row_index: torch.Tensor  # [batch, k + 1] int64 rows of logits, per request and verified position
    draft_ids: torch.Tensor  # [batch, k] int64 (padding 0)
    num_drafts: torch.Tensor  # [batch] int64
    draft_probs: torch.Tensor | None  # [batch, k, vocab] or None (one-hot drafts)
    rows: RowParams | None  # per logits row; None = plain greedy (no penalties, bans or draft probs)
    req_seeds: torch.Tensor | None  # [batch] int64 (None when plain greedy)
    req_streams: torch.Tensor | None  # [batch] int64
    req_output_lens: torch.Tensor | None  # [batch] int64, tokens generated before this step
    penalties: Penalties | None = None
    ban_rows: torch.Tensor | None = None  # [num_bans] int64 rows with a banned token (min_tokens, bad_words)
    ban_token_ids: torch.Tensor | None = None  # [num_bans] int64
    bias_rows: torch.Tensor | None = None  # [num_biases] int64 (logit_bias)
    bias_token_ids: torch.Tensor | None = None  # [num_biases] int64
    bias_values: torch.Tensor | None = None  # [num_biases] float32
    mask_rows: torch.Tensor | None = None  # [masked] int64 rows with an allowed-token bitmask
    bitmask: torch.Tensor | None = None  # [masked, ceil(vocab / 32)] int32
    # [batch] bool, read only with draft_probs: verify this request's drafts by coupling (accept iff the draft is
    # the token plain sampling draws there) rather than by rejection sampling; None = rejection sampling for all.
    # Without draft_probs (one-hot drafts) every request is coupled: it accepts with p(x) either way.
    coupled: torch.Tensor | None = None


def process_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:  # [rows, vocab]
    if batch.penalties is not None:
        pen = batch.penalties
        logits = apply_penalties(logits, pen.output_counts, pen.seen_mask, pen.repetition, pen.presence,
                                 pen.frequency)
    if batch.ban_rows is not None:
        logits = ban_tokens(logits, batch.ban_rows, batch.ban_token_ids)
    if batch.bias_rows is not None:
        logits = add_bias(logits, batch.bias_rows, batch.bias_token_ids, batch.bias_values)
    if batch.mask_rows is not None:
        logits = apply_bitmask(logits, batch.mask_rows, batch.bitmask)
    return logits


def sample(logits: torch.Tensor, batch: SamplingBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [rows, vocab] float32 -> (tokens [batch, k + 1], num_emitted [batch]); no host sync."""
    logits = process_logits(logits, batch)
    if batch.rows is None or (batch.rows.all_greedy and batch.draft_probs is None):
        argmax = logits.argmax(dim=-1)[batch.row_index]  # [batch, k + 1]
        return verify_greedy(argmax, batch.draft_ids, batch.num_drafts)
    probs = to_probs(logits, batch.rows)[batch.row_index]  # [batch, k + 1, vocab]
    nb, k1, vocab = probs.shape
    positions = batch.req_output_lens[:, None] + torch.arange(k1, device=logits.device)[None, :]  # [batch, k + 1]
    exp = noise.exponential(batch.req_seeds.repeat_interleave(k1), batch.req_streams.repeat_interleave(k1),
                            positions.reshape(-1), vocab).view(nb, k1, vocab)
    own = noise.sample_from_probs(probs, exp)  # [batch, k + 1]: what plain sampling draws at each position
    tokens, num_emitted = verify_coupled(own, batch.draft_ids, batch.num_drafts)
    if batch.draft_probs is None:
        return tokens, num_emitted
    k = k1 - 1
    offsets = torch.arange(k, device=logits.device)[None, :]
    uniforms = noise.uniform(
        batch.req_seeds[:, None].expand(-1, k), batch.req_streams[:, None].expand(-1, k),
        batch.req_output_lens[:, None] + offsets,
    )  # [batch, k]

    def draw(dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        exp = noise.exponential(batch.req_seeds, batch.req_streams, batch.req_output_lens + index, dist.shape[-1])
        return noise.sample_from_probs(dist, exp)

    rej_tokens, rej_emitted = rejection_sample(probs, batch.draft_ids, batch.num_drafts, batch.draft_probs,
                                               uniforms, draw)
    if batch.coupled is None:
        return rej_tokens, rej_emitted
    return (torch.where(batch.coupled[:, None], tokens, rej_tokens),
            torch.where(batch.coupled, num_emitted, rej_emitted))


def gather_logprobs(
    logits: torch.Tensor,  # [rows, vocab] raw logits
    row_index: torch.Tensor,  # [batch, k + 1]
    tokens: torch.Tensor,  # [batch, k + 1] emitted tokens
    num_top: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw-model logprobs: of each emitted token [batch, k + 1], its rank [batch, k + 1], and the
    top ``num_top`` (values, ids) [batch, k + 1, num_top]."""
    logprobs = torch.log_softmax(logits, dim=-1)[row_index]  # [batch, k + 1, vocab]
    chosen = logprobs.gather(-1, tokens[..., None]).squeeze(-1)
    rank = (logprobs > chosen[..., None]).sum(dim=-1) + 1
    top_vals, top_ids = logprobs.topk(num_top, dim=-1) if num_top > 0 else (
        chosen[..., None][..., :0], tokens[..., None][..., :0])  # [batch, k + 1, 0]
    return chosen, rank, top_vals, top_ids
