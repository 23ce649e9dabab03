"""Paged attention over the KV cache: the torch reference (runs on CPU and CUDA).

Cache layout, per layer: ``k_cache`` and ``v_cache`` are each ``[num_blocks, block_size, num_kv_heads,
head_dim]``. Token ``t`` of the flat batch lives at slot ``slot_mapping[t] = block * block_size + offset``.

The flat batch holds, per request, a run of ``q_len`` new tokens (a prefill chunk, 1 decode token, or
1 + k tokens to verify). They are the last ``q_len`` positions of a context of ``seq_len`` tokens, so
query ``j`` of request ``r`` sits at position ``seq_len[r] - q_len[r] + j`` and attends causally to
every key at a position <= its own (and > its own - sliding_window when a window is set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Bound on padded score elements per chunk of requests (requests x heads x q x k), to keep memory flat.
_MAX_SCORE_ELEMENTS = 1 << 25


def write_kv_ref(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64; padding tokens point into block 0 (never read)
) -> None:
    num_blocks, block_size = k_cache.shape[:2]
    k_cache.view(num_blocks * block_size, *k_cache.shape[2:]).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(num_blocks * block_size, *v_cache.shape[2:]).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


@dataclass(frozen=True)
class _Chunk:
    """What one chunk of requests needs from the step's lengths: the same for every layer of the step."""

    n: int
    max_q: int
    max_k: int
    q_index: torch.Tensor  # [n, max_q] rows of the flat batch (padded queries clamped to a real row)
    tables: torch.Tensor  # [n * num_blocks_needed] int64 block ids
    num_blocks: int
    allowed: torch.Tensor | None  # [n, 1, 1, max_q, max_k] bool; None when every key is allowed
    valid: torch.Tensor | None  # [n, max_q] bool (real queries); None when none is padded
    rows: torch.Tensor | None  # [num real queries] their flat-batch rows; None when the chunk is the whole batch


def attention_plan(
    num_tokens: int, block_tables: torch.Tensor, query_lens: list[int], seq_lens: list[int], block_size: int,
    num_heads: int, sliding_window: int | None,
) -> list[_Chunk]:
    """The chunks of requests (padded score tensor under _MAX_SCORE_ELEMENTS) and their index tensors and masks,
    built once per step: every layer attends over the same positions."""
    device = block_tables.device
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    chunks = []
    r0, num_reqs = 0, len(query_lens)
    while r0 < num_reqs:
        # Grow the chunk while the padded score tensor stays under the bound.
        r1 = r0 + 1
        max_q, max_k = query_lens[r0], seq_lens[r0]
        while r1 < num_reqs:
            mq, mk = max(max_q, query_lens[r1]), max(max_k, seq_lens[r1])
            if (r1 + 1 - r0) * num_heads * mq * mk > _MAX_SCORE_ELEMENTS:
                break
            max_q, max_k, r1 = mq, mk, r1 + 1
        n = r1 - r0
        q_lens = torch.tensor(query_lens[r0:r1], device=device)  # [n]
        s_lens = torch.tensor(seq_lens[r0:r1], device=device)  # [n]
        q_starts = torch.tensor(starts[r0:r1], device=device)  # [n]
        j = torch.arange(max_q, device=device)  # [max_q]
        q_valid = j[None, :] < q_lens[:, None]  # [n, max_q]
        q_index = (q_starts[:, None] + j[None, :]).clamp_max(num_tokens - 1)  # [n, max_q]
        num_blocks = (max_k + block_size - 1) // block_size
        tables = block_tables[r0:r1, :num_blocks].reshape(-1).long()  # [n * nb]
        q_pos = (s_lens - q_lens)[:, None] + j[None, :]  # [n, max_q]
        k_pos = torch.arange(max_k, device=device)  # [max_k]
        allowed = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < s_lens[:, None, None])
        if sliding_window is not None:
            allowed &= k_pos[None, None, :] > q_pos[:, :, None] - sliding_window
        all_valid = all(q == max_q for q in query_lens[r0:r1])
        # the chunk's queries are the batch's rows, all of them, in order
        whole = all_valid and r0 == 0 and r1 == num_reqs and starts[-1] == num_tokens
        chunks.append(_Chunk(
            n, max_q, max_k, q_index, tables, num_blocks,
            None if bool(allowed.all()) else allowed[:, None, None, :, :],
            None if all_valid else q_valid,
            None if whole else q_index[q_valid],
        ))
        r0 = r1
    return chunks


def paged_attention_ref(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_reqs, max_blocks_per_req] int32
    query_lens: list[int],  # host ints, one per request
    seq_lens: list[int],  # host ints, one per request (context incl. this step's tokens)
    scale: float,
    sliding_window: int | None = None,
    plan: list[_Chunk] | None = None,  # attention_plan(...) of these lengths, shared by a step's layers
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Attention of each request's new tokens over its paged context, causal.

    Requests are processed in chunks padded to the chunk's longest query and context; the lengths
    come as host ints so that no device sync is needed.
    """
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    if plan is None:
        plan = attention_plan(num_tokens, block_tables, query_lens, seq_lens, block_size, num_heads, sliding_window)
    out = None
    for c in plan:
        o = _attend_chunk(query, k_cache, v_cache, c, block_size, num_kv_heads, group, head_dim, scale)
        if c.rows is None:  # one chunk, no padding: its rows are the output, in order
            return o.view(num_tokens, num_heads, head_dim)
        if out is None:
            out = torch.empty_like(query)
        out[c.rows] = o[c.valid] if c.valid is not None else o.reshape(-1, num_heads, head_dim)
    return out


def _attend_chunk(query, k_cache, v_cache, c: _Chunk, block_size, num_kv_heads, group, head_dim, scale,
                  ) -> torch.Tensor:  # [n, max_q, num_heads, head_dim] in query's dtype
    n, max_q, max_k = c.n, c.max_q, c.max_k
    q = query[c.q_index]  # [n, max_q, heads, d]
    q = q.view(n, max_q, num_kv_heads, group, head_dim).float()
    k = k_cache.index_select(0, c.tables).view(n, c.num_blocks * block_size, num_kv_heads, head_dim)[:, :max_k]
    v = v_cache.index_select(0, c.tables).view(n, c.num_blocks * block_size, num_kv_heads, head_dim)[:, :max_k]

    scores = torch.einsum("nqhgd,nkhd->nhgqk", q, k.float()) * scale  # [n, kvh, g, max_q, max_k]
    if c.allowed is not None:
        scores = scores.masked_fill(~c.allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if c.valid is not None:
        probs = torch.nan_to_num(probs, nan=0.0)  # padded queries have no allowed key
    o = torch.einsum("nhgqk,nkhd->nqhgd", probs, v.float())  # [n, max_q, kvh, g, d]
    return o.reshape(n, max_q, num_kv_heads * group, head_dim).to(query.dtype)
