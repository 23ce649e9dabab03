"""Paged attention of the CPU fast path (bfloat16): transformers' eager attention in bfloat16, request by request.

Per request, with its new tokens' queries q [M, H, D] at positions seq_len - M .. seq_len - 1 and its keys and
values gathered from the paged cache (the layout of ``attention_ref``):

    scores = (q @ k.T) * scale          bfloat16 matmul (float32 accumulation, one rounding), as transformers
    scores[masked] = -inf               causal (and the sliding window); decode rows have nothing masked
    probs = softmax(scores) in float32, rounded to bfloat16
    out = probs @ v                     bfloat16 matmul

Query invariance, which keeps speculative output token-identical to plain decoding: a row's result has the
same bits whatever the other rows of its request and step are, and however many keys past its own position
are masked. That holds for the oneDNN bfloat16 matmuls on this CPU (checked over positions and row counts by
``tests/test_cpu_attention.py``), not for the float32 MKL ones, hence bfloat16 only. Every layer of a step
attends over the same positions, so the gather indices and masks are built once per step (``cpu_plan``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Bound on one matmul's score elements (kv heads x group x rows x keys): longer prefill chunks run in row pieces.
MAX_SCORE_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class RequestPlan:
    """One request's part of a step: the same for every layer."""

    start: int  # first row of the flat batch
    rows: int  # M, its new tokens
    keys: int  # S, its context including the new tokens
    blocks: torch.Tensor  # [ceil(S / block_size)] block ids
    allowed: torch.Tensor | None  # [M, S] bool; None when every row sees every key (one decode row, no window)


def cpu_plan(block_tables: torch.Tensor, query_lens: list[int], seq_lens: list[int], block_size: int,
             sliding_window: int | None) -> list[RequestPlan]:
    """Per request (block_tables [num_reqs, max_blocks] int32, host lengths): its rows, blocks and mask."""
    plans, start = [], 0
    for r, (m, s) in enumerate(zip(query_lens, seq_lens, strict=True)):
        pos = torch.arange(s - m, s)[:, None]  # [M, 1] the rows' positions
        key = torch.arange(s)[None, :]  # [1, S]
        allowed = key <= pos  # [M, S]
        if sliding_window is not None:
            allowed &= key > pos - sliding_window
        blocks = block_tables[r, : -(-s // block_size)]
        plans.append(RequestPlan(start, m, s, blocks, None if bool(allowed.all()) else allowed))
        start += m
    return plans


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
           scale: float) -> torch.Tensor:
    # q: [M, H, D]; k, v: [KVH, S, D] contiguous; allowed: [M, S] bool | None -> [M, H, D], all bfloat16
    m, h, d = q.shape
    kvh = k.shape[0]
    g = h // kvh
    qh = q.view(m, kvh, g, d).permute(1, 2, 0, 3).reshape(kvh, g * m, d)  # [KVH, G * M, D]
    scores = torch.bmm(qh, k.transpose(1, 2)) * scale  # [KVH, G * M, S]
    if allowed is not None:
        scores = scores.view(kvh, g, m, -1).masked_fill(~allowed, float("-inf")).view(kvh, g * m, -1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.bmm(probs, v)  # [KVH, G * M, D]
    return out.view(kvh, g, m, d).permute(2, 0, 1, 3).reshape(m, h, d)


def gather_kv(cache: torch.Tensor, blocks: torch.Tensor, keys: int) -> torch.Tensor:
    # cache: [num_blocks, block_size, KVH, D]; blocks: [nb] -> [KVH, keys, D] contiguous (what the matmuls read fastest)
    kvh, d = cache.shape[2], cache.shape[3]
    return cache.index_select(0, blocks).view(-1, kvh, d)[:keys].transpose(0, 1).contiguous()


def paged_attention_cpu(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim] bfloat16
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    plan: list[RequestPlan],
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    outs = []
    for p in plan:
        k, v = gather_kv(k_cache, p.blocks, p.keys), gather_kv(v_cache, p.blocks, p.keys)  # [KVH, S, D]
        step = max(1, MAX_SCORE_ELEMENTS // (query.shape[1] * p.keys))  # rows per matmul
        for r0 in range(0, p.rows, step):
            r1 = min(p.rows, r0 + step)
            allowed = None if p.allowed is None else p.allowed[r0:r1]
            outs.append(attend(query[p.start + r0 : p.start + r1], k, v, allowed, scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs)
