"""Paged attention over the KV cache: the torch reference (runs on CPU and CUDA).

Cache layout, per layer: ``k_cache`` and ``v_cache`` are each ``[num_blocks, block_size, num_kv_heads,
head_dim]``. Token ``t`` of the flat batch lives at slot ``slot_mapping[t] = block * block_size + offset``.

The flat batch holds, per request, a run of ``q_len`` new tokens (a prefill chunk, 1 decode token, or
1 + k tokens to verify). They are the last ``q_len`` positions of a context of ``seq_len`` tokens, so
query ``j`` of request ``r`` sits at position ``seq_len[r] - q_len[r] + j`` and attends causally to
every key at a position <= its own (and > its own - sliding_window when a window is set).
"""

from __future__ import annotations

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


def paged_attention_ref(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_reqs, max_blocks_per_req] int32
    query_lens: list[int],  # host ints, one per request
    seq_lens: list[int],  # host ints, one per request (context incl. this step's tokens)
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Attention of each request's new tokens over its paged context, causal.

    Requests are processed in chunks padded to the chunk's longest query and context; the lengths
    come as host ints so that no device sync is needed.
    """
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)

    r0 = 0
    num_reqs = len(query_lens)
    while r0 < num_reqs:
        # Grow the chunk while the padded score tensor stays under the bound.
        r1 = r0 + 1
        max_q, max_k = query_lens[r0], seq_lens[r0]
        while r1 < num_reqs:
            mq, mk = max(max_q, query_lens[r1]), max(max_k, seq_lens[r1])
            if (r1 + 1 - r0) * num_heads * mq * mk > _MAX_SCORE_ELEMENTS:
                break
            max_q, max_k, r1 = mq, mk, r1 + 1
        _attend_chunk(
            query, k_cache, v_cache, block_tables, query_lens, seq_lens, starts, r0, r1, max_q, max_k,
            block_size, num_kv_heads, group, head_dim, scale, sliding_window, out,
        )
        r0 = r1
    return out


def _attend_chunk(
    query, k_cache, v_cache, block_tables, query_lens, seq_lens, starts, r0, r1, max_q, max_k,
    block_size, num_kv_heads, group, head_dim, scale, sliding_window, out,
) -> None:
    device = query.device
    n = r1 - r0
    q_lens = torch.tensor(query_lens[r0:r1], device=device)  # [n]
    s_lens = torch.tensor(seq_lens[r0:r1], device=device)  # [n]
    q_starts = torch.tensor(starts[r0:r1], device=device)  # [n]
    j = torch.arange(max_q, device=device)  # [max_q]
    q_valid = j[None, :] < q_lens[:, None]  # [n, max_q]
    q_index = (q_starts[:, None] + j[None, :]).clamp_max(query.shape[0] - 1)  # [n, max_q]
    q = query[q_index]  # [n, max_q, heads, d]
    q = q.view(n, max_q, num_kv_heads, group, head_dim).float()

    num_blocks_needed = (max_k + block_size - 1) // block_size
    tables = block_tables[r0:r1, :num_blocks_needed].reshape(-1).long()  # [n * nb]
    k = k_cache.index_select(0, tables).view(n, num_blocks_needed * block_size, num_kv_heads, head_dim)[:, :max_k]
    v = v_cache.index_select(0, tables).view(n, num_blocks_needed * block_size, num_kv_heads, head_dim)[:, :max_k]

    scores = torch.einsum("nqhgd,nkhd->nhgqk", q, k.float()) * scale  # [n, kvh, g, max_q, max_k]
    q_pos = (s_lens - q_lens)[:, None] + j[None, :]  # [n, max_q]
    k_pos = torch.arange(max_k, device=device)  # [max_k]
    allowed = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < s_lens[:, None, None])
    if sliding_window is not None:
        allowed &= k_pos[None, None, :] > q_pos[:, :, None] - sliding_window
    scores = scores.masked_fill(~allowed[:, None, None, :, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # padded queries have no allowed key
    o = torch.einsum("nhgqk,nkhd->nqhgd", probs, v.float())  # [n, max_q, kvh, g, d]
    o = o.reshape(n, max_q, num_kv_heads * group, head_dim).to(out.dtype)
    out[q_index[q_valid]] = o[q_valid]
