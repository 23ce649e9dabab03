"""Drafting from a head's logits: the argmax for greedy requests, else a sample from the request's own
distribution (temperature, min-p, top-k, top-p, as the target samples) with the probabilities it came from.

The noise is counter-based (``tokenleap.sample.noise``). Under rejection sampling it is in a domain of its own,
keyed by the request's seed, stream and the draft's token position: a seeded request drafts the same tokens
whatever else is in the batch, independently of the verifier's acceptance uniforms and token draws. Under coupled
verification (``SamplingInfo.coupled``) draft ``j`` is drawn with the target's own noise at its output position
(``sample_with_noise``), so it is accepted whenever the target draws the same token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from tokenleap.sample.logits import RowParams, to_probs
from tokenleap.sample.noise import exponential, mix32, row_keys
from tokenleap_plugins import Drafts, SamplingInfo

DOMAIN_DRAFT = 0x3C6EF372  # differs from the verifier's DOMAIN_ACCEPT / DOMAIN_TOKEN


def draft_noise(seeds: torch.Tensor, streams: torch.Tensor, positions: torch.Tensor,
                vocab_size: int) -> torch.Tensor:  # [rows, vocab] float32 Exp(1)
    keys = row_keys(seeds, streams, positions, DOMAIN_DRAFT)  # [rows]
    vocab = mix32(torch.arange(vocab_size, device=keys.device, dtype=torch.int64) ^ 0x165667B1)  # [vocab]
    u = ((mix32(keys[:, None] ^ vocab[None, :]) >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(u)


@dataclass
class DraftRows:
    """One row per draft being picked: its request's sampling settings (``params.positions``: the draft's token
    position), and for coupled rows the output position the target draws it at."""

    params: RowParams
    coupled: torch.Tensor  # [rows] bool
    output_positions: torch.Tensor  # [rows] int64
    any_coupled: bool


def row_params(infos: Sequence[SamplingInfo], positions: Sequence[int], output_positions: Sequence[int],
               device: torch.device) -> DraftRows:
    """positions: each draft's token position; output_positions: its index among the request's output tokens."""
    f32 = dict(dtype=torch.float32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    temperature = torch.tensor([s.temperature for s in infos], **f32)
    top_k = torch.tensor([s.top_k for s in infos], **i64)
    top_p = torch.tensor([s.top_p for s in infos], **f32)
    min_p = torch.tensor([s.min_p for s in infos], **f32)
    greedy = [s.greedy for s in infos]
    params = RowParams(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        seeds=torch.tensor([s.seed for s in infos], **i64), streams=torch.tensor([s.stream for s in infos], **i64),
        positions=torch.tensor(list(positions), **i64),
        any_top_k=any(s.top_k > 0 for s in infos), any_top_p=any(s.top_p < 1.0 for s in infos),
        any_min_p=any(s.min_p > 0 for s in infos), any_greedy=any(greedy), all_greedy=all(greedy),
    )
    coupled = [s.coupled and not s.greedy for s in infos]
    return DraftRows(params, torch.tensor(coupled, dtype=torch.bool, device=device),
                     torch.tensor(list(output_positions), **i64), any(coupled))


def shifted(rows: DraftRows, j: int) -> DraftRows:
    """``rows`` for the drafts ``j`` positions further on (token and output positions + j)."""
    if j == 0:
        return rows
    return replace(rows, params=replace(rows.params, positions=rows.params.positions + j),
                   output_positions=rows.output_positions + j)


def upload(values: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """int64 rows of equal length -> one [len(values), n] tensor on ``device`` in one copy (pinned and
    asynchronous on CUDA: no wait for the device, unlike ``torch.tensor(list, device=cuda)``)."""
    return upload_flat(torch.tensor(values, dtype=torch.int64), device)


def upload_flat(host, device: torch.device) -> torch.Tensor:
    """A host tensor (or numpy array) -> the same on ``device``, pinned and asynchronous on CUDA."""
    host = torch.as_tensor(host)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def upload_into(dst: torch.Tensor, host) -> None:
    """A host tensor (or numpy array) of ``dst``'s shape -> copied into ``dst`` (a static buffer on the device),
    pinned and asynchronous on CUDA."""
    host = torch.as_tensor(host)
    if dst.device.type == "cuda":
        host = host.pin_memory()
    dst.copy_(host, non_blocking=True)


def pick_drafts(logits: torch.Tensor, rows: DraftRows) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [rows, vocab] float32 -> (tokens [rows] int64, probs [rows, vocab] float32 or None when every
    row is greedy). Greedy rows take the argmax (their probs row is a one-hot, unused by the verifier)."""
    params = rows.params
    if params.all_greedy:
        return logits.argmax(dim=-1), None
    probs = to_probs(logits, params)  # greedy rows: one-hot at the argmax
    noise = draft_noise(params.seeds, params.streams, params.positions, logits.shape[-1])  # [rows, vocab]
    if rows.any_coupled:
        target_noise = exponential(params.seeds, params.streams, rows.output_positions, logits.shape[-1])
        noise = torch.where(rows.coupled[:, None], target_noise, noise)
    return (probs / noise).argmax(dim=-1), probs


def assemble_drafts(requests: Sequence, rows: Sequence[int], picked: Sequence[torch.Tensor],
                    probs: Sequence[torch.Tensor | None], drafts: list[list[int]]) -> Drafts:
    """The chain's drafts per request: ``picked[j]`` [b] tokens and ``probs[j]`` [b, vocab] (or None) of draft step
    j for the batch rows of ``requests[rows[b]]``; each request keeps its first ``max_num_drafts``. ``drafts`` holds
    the answer of every request (those not drafted for stay empty) and is filled in place."""
    host = torch.stack(list(picked), dim=1).tolist()  # [b, steps]: the one read-back
    out_probs: list = [None] * len(requests)
    for b, i in enumerate(rows):
        n = requests[i].max_num_drafts
        drafts[i] = host[b][:n]
        if not requests[i].sampling.greedy:
            out_probs[i] = torch.stack([p[b] for p in probs[:n]])  # [n, vocab]
    return Drafts(drafts, out_probs if any(p is not None for p in out_probs) else None)
