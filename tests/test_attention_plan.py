"""The torch attention reference with its per-step plan (index tensors and masks built once, shared by a step's
layers; masks and NaN clean-up skipped where nothing is masked) gives the same bits as the plain per-call version
kept here, on decode, verify, prefill and padded batches, with and without a sliding window and chunking."""

from __future__ import annotations

import pytest
import torch
from tokenleap.kernels import attention_ref
from tokenleap.kernels.attention_ref import attention_plan, paged_attention_ref


def plain_reference(query, k_cache, v_cache, block_tables, query_lens, seq_lens, scale, sliding_window=None):
    """The reference as it was: every call builds its own index tensors and masks."""
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros_like(query)
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    r0 = 0
    while r0 < len(query_lens):
        r1 = r0 + 1
        max_q, max_k = query_lens[r0], seq_lens[r0]
        while r1 < len(query_lens):
            mq, mk = max(max_q, query_lens[r1]), max(max_k, seq_lens[r1])
            if (r1 + 1 - r0) * num_heads * mq * mk > attention_ref._MAX_SCORE_ELEMENTS:
                break
            max_q, max_k, r1 = mq, mk, r1 + 1
        n = r1 - r0
        q_lens, s_lens = torch.tensor(query_lens[r0:r1]), torch.tensor(seq_lens[r0:r1])
        j = torch.arange(max_q)
        q_valid = j[None, :] < q_lens[:, None]
        q_index = (torch.tensor(starts[r0:r1])[:, None] + j[None, :]).clamp_max(num_tokens - 1)
        q = query[q_index].view(n, max_q, num_kv_heads, group, head_dim).float()
        nb = (max_k + block_size - 1) // block_size
        tables = block_tables[r0:r1, :nb].reshape(-1).long()
        k = k_cache.index_select(0, tables).view(n, nb * block_size, num_kv_heads, head_dim)[:, :max_k]
        v = v_cache.index_select(0, tables).view(n, nb * block_size, num_kv_heads, head_dim)[:, :max_k]
        scores = torch.einsum("nqhgd,nkhd->nhgqk", q, k.float()) * scale
        q_pos = (s_lens - q_lens)[:, None] + j[None, :]
        k_pos = torch.arange(max_k)
        allowed = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < s_lens[:, None, None])
        if sliding_window is not None:
            allowed &= k_pos[None, None, :] > q_pos[:, :, None] - sliding_window
        scores = scores.masked_fill(~allowed[:, None, None, :, :], float("-inf"))
        probs = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        o = torch.einsum("nhgqk,nkhd->nqhgd", probs, v.float()).reshape(n, max_q, num_heads, head_dim)
        out[q_index[q_valid]] = o.to(out.dtype)[q_valid]
        r0 = r1
    return out


CASES = {
    "decode-1": ([1], [37]),
    "decode-batch": ([1, 1, 1], [5, 64, 17]),
    "verify": ([6], [40]),
    "verify-batch": ([4, 4], [12, 50]),
    "mixed": ([9, 1, 3], [9, 33, 20]),
    "prefill": ([23], [23]),
}


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("tiny_chunks", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_planned_reference_equals_plain(case, dtype, tiny_chunks, window, monkeypatch):
    if tiny_chunks:  # one request per chunk
        monkeypatch.setattr(attention_ref, "_MAX_SCORE_ELEMENTS", 1)
    query_lens, seq_lens = CASES[case]
    gen = torch.Generator().manual_seed(hash(case) % 1000)
    heads, kv_heads, d, bs, blocks = 6, 2, 16, 8, 40
    num_tokens = sum(query_lens)
    query = torch.randn(num_tokens, heads, d, generator=gen).to(dtype)
    k_cache = torch.randn(blocks, bs, kv_heads, d, generator=gen).to(dtype)
    v_cache = torch.randn(blocks, bs, kv_heads, d, generator=gen).to(dtype)
    tables = torch.randperm(blocks, generator=gen)[: len(query_lens) * 8].view(len(query_lens), 8).int()
    want = plain_reference(query, k_cache, v_cache, tables, query_lens, seq_lens, 0.25, window)
    plan = attention_plan(num_tokens, tables, query_lens, seq_lens, bs, heads, window)
    for _ in range(2):  # the plan is reused by every layer of a step
        got = paged_attention_ref(query, k_cache, v_cache, tables, query_lens, seq_lens, 0.25, window, plan=plan)
        assert torch.equal(got, want)
    assert torch.equal(paged_attention_ref(query, k_cache, v_cache, tables, query_lens, seq_lens, 0.25, window), want)


def test_plan_skips_masks_only_where_nothing_is_masked():
    tables = torch.arange(8).view(1, 8).int()
    (decode,) = attention_plan(1, tables, [1], [30], 8, 4, None)
    assert decode.allowed is None and decode.valid is None and decode.rows is None
    (verify,) = attention_plan(5, tables, [5], [30], 8, 4, None)
    assert verify.allowed is not None and verify.valid is None  # causal within the verified tokens
    (windowed,) = attention_plan(1, tables, [1], [30], 8, 4, 8)
    assert windowed.allowed is not None
    (padded,) = attention_plan(4, torch.arange(16).view(2, 8).int(), [3, 1], [10, 12], 8, 4, None)
    assert padded.valid is not None and padded.rows is not None
