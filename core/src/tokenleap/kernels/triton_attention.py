"""Paged attention in Triton: decode, verify (1 + k queries), prefill chunks. Reference: ``attention_ref.py``.

One kernel, two launch configurations chosen from host ints (shapes and ``max_query_len``):

- Query tile = rows of (query, head-of-the-GQA-group). A program owns one kv head of one request and
  ``BLOCK_M`` such rows, so every K/V page it reads serves all the query heads that share it.
- Decode / verify (``max_query_len * group <= 128``): tiles of 16 rows, the (1 + k) queries x group
  heads of a kv head spread over as many tiles as they need. The KV range is split at fixed positions
  (every ``split_tokens``, from 0; ``max_seq_len``, fixed per engine, sets how many) and the splits are
  dealt round robin to up to 32 programs per tile (flash-decoding), so batch-1 long contexts fill the GPU;
  each split writes an unnormalized partial (acc, running max, sum) and a second kernel merges a row's
  partials in a fixed order (chunks of 16 splits, one after the other). Splits with no key for a tile do
  nothing. Small batches split; from ``2 * SMs`` (request, kv head) pairs on, the programs write the output
  directly.
- Query invariance (decode / verify): a row's result has the same bits whatever the other rows of its step,
  i.e. whether its token is decoded alone or verified with drafts: every row is computed in the same
  16-row tile shape, K/V blocks sit at the same absolute positions, blocks a row cannot see are exact
  no-ops for it (scores -inf: max unchanged, weight 0), and the split boundaries and merge order depend on
  the row's position only. So greedy speculative decoding gives the tokens of plain decoding bit for bit
  (the few-row linears keep the same property, ``triton_linear``).
- Prefill chunks: tiles of 128 rows over the chunk, causal block skipping, no split.

A K/V tile is ``BLOCK_N`` consecutive token positions gathered through the block table (any page size),
``QK^T`` and ``PV`` are ``tl.dot`` on the cache dtype (bf16 on GPU) with fp32 accumulation, online
softmax in fp32 base 2. Everything the kernels read about the batch is on the device
(``query_start_loc``, ``seq_lens``, ``block_tables``); grid and workspace depend only on shapes and the
host ints passed in, so a step calling this can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from tokenleap.kernels import (
    pdl,
    triton_compat,  # noqa: F401  (interpreter fixes, under TRITON_INTERPRET=1)
)

DECODE_MAX_ROWS = 128  # max_query_len * group at or below this takes the split-KV decode/verify config
DECODE_BLOCK_M = 16  # rows of every decode / verify tile (one shape for all: query invariance)
SPLIT_TOKENS = 64  # KV positions per split of the decode / verify config (a multiple of BLOCK_N) ...
MAX_SPLITS = 128  # ... or more, so that max_seq_len needs at most this many splits
MERGE_CHUNK = 16  # splits the merge adds at a time, chunk after chunk
SPLIT_PROGRAMS = 32  # programs per (request, kv head, tile) that share the splits (round robin)


@triton.jit
def _attend_range(
    q, q_pos, k_cache_ptr, v_cache_ptr, table, kvh, lo, hi, qk_scale, stride_cb, stride_cs, stride_ch,
    D_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    # -> (acc [BLOCK_M, D_PAD], running max [BLOCK_M], sum [BLOCK_M]) of the rows over keys [lo, hi), in K/V
    # blocks of BLOCK_N from lo (a multiple of BLOCK_N: blocks at absolute positions)
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: fully masked rows never make NaN
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < hi
        page = tl.load(table + n // PAGE, mask=n_ok, other=0).to(tl.int64)
        kv_off = page * stride_cb + (n % PAGE) * stride_cs + kvh * stride_ch
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        allowed = n_ok[None, :] & (n[None, :] <= q_pos[:, None])
        if WINDOW > 0:
            allowed = allowed & (n[None, :] > q_pos[:, None] - WINDOW)
        s = tl.where(allowed, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, qsl_ptr, seq_lens_ptr,
    out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, split_range_ptr,
    stride_qt, stride_qh, stride_cb, stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
    num_tokens, qk_scale,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, PAGE: tl.constexpr, WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, NUM_SPLITS: tl.constexpr,
    SPLIT_PROGRAMS: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    pdl.enter(PDL)
    tile = tl.program_id(0)
    req = tl.program_id(1) // NUM_KV_HEADS
    kvh = tl.program_id(1) % NUM_KV_HEADS
    split0 = tl.program_id(2)
    q_start = tl.load(qsl_ptr + req)
    q_len = tl.load(qsl_ptr + req + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + req)
    ctx = seq_len - q_len  # position of query 0

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = rows // GROUP
    head = kvh * GROUP + rows % GROUP
    row_ok = qi < q_len
    q_pos = ctx + qi
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    tok = (q_start + qi).to(tl.int64)
    table = block_tables_ptr + req.to(tl.int64) * stride_bt

    # Positions this tile can see: causal upper bound of its last query, window lower bound of its first.
    first_qi = (tile * BLOCK_M) // GROUP
    last_qi = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // GROUP, q_len - 1)
    hi = ctx + last_qi + 1
    lo = 0
    if WINDOW > 0:
        lo = tl.maximum(ctx + first_qi - WINDOW + 1, 0)
    hi = tl.where(first_qi < q_len, hi, lo)  # tile past this request's queries: nothing to do
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=(row_ok & (split0 * SPLIT < hi))[:, None] & d_ok[None, :], other=0.0)
    if NUM_SPLITS == 1:
        acc, m_i, l_i = _attend_range(q, q_pos, k_cache_ptr, v_cache_ptr, table, kvh, lo // BLOCK_N * BLOCK_N,
                                      hi, qk_scale, stride_cb, stride_cs, stride_ch, D_PAD, HEAD_DIM, PAGE, WINDOW,
                                      BLOCK_M, BLOCK_N, IEEE)
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    else:
        # Split sp holds positions [sp * SPLIT, (sp + 1) * SPLIT); this program computes splits split0,
        # split0 + SPLIT_PROGRAMS, ... Each row's splits with a key for it, [first, end), go to the merge
        # (written once per token: by kv head 0's first program).
        row_lo = q_pos * 0
        if WINDOW > 0:
            row_lo = tl.maximum(q_pos - WINDOW + 1, 0)
        mine = row_ok & (split0 == 0) & (kvh == 0) & (rows % GROUP == 0)
        tl.store(split_range_ptr + tok * 2, row_lo // SPLIT, mask=mine)
        tl.store(split_range_ptr + tok * 2 + 1, q_pos // SPLIT + 1, mask=mine)
        for sp in range(split0, tl.cdiv(hi, SPLIT), SPLIT_PROGRAMS):
            s_lo = tl.maximum(lo, sp * SPLIT) // BLOCK_N * BLOCK_N  # keys before a row's window are masked
            s_hi = tl.minimum(hi, sp * SPLIT + SPLIT)
            acc, m_i, l_i = _attend_range(q, q_pos, k_cache_ptr, v_cache_ptr, table, kvh, s_lo, s_hi, qk_scale,
                                          stride_cb, stride_cs, stride_ch, D_PAD, HEAD_DIM, PAGE, WINDOW, BLOCK_M,
                                          BLOCK_N, IEEE)
            ok = row_ok & (s_lo < s_hi)  # a split with no key for this tile writes nothing
            ml = (sp * num_tokens + tok) * NUM_HEADS + head  # [BLOCK_M], into [splits, tokens, heads]
            tl.store(part_m_ptr + ml, m_i, mask=ok)
            tl.store(part_l_ptr + ml, l_i, mask=ok)
            tl.store(part_acc_ptr + ml[:, None] * HEAD_DIM + d[None, :], acc, mask=ok[:, None] & d_ok[None, :])


@triton.jit
def _merge_chunk(part_acc_ptr, part_m_ptr, part_l_ptr, t, h, s0, end, m_run, denom, acc, num_tokens,
                 NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, CHUNK: tl.constexpr,
                 NUM_SPLITS: tl.constexpr):
    # Splits s0 .. s0 + CHUNK (those below `end`) of one (token, head) added to the running (max, sum, acc):
    # the sums so far are rescaled to the new max, as in the online softmax. The loads are masked by the
    # buffer's size only, not by `end` (splits past it, unwritten, are dropped after), so they need not wait
    # for it.
    c = tl.arange(0, CHUNK)
    d = tl.arange(0, D_PAD)
    in_buf = s0 + c < NUM_SPLITS
    s_ok = s0 + c < end
    ml = ((s0 + c) * num_tokens + t) * NUM_HEADS + h  # [CHUNK] into [splits, tokens, heads]
    m = tl.where(s_ok, tl.load(part_m_ptr + ml, mask=in_buf, other=-1.0e30), -1.0e30)
    l_s = tl.where(s_ok, tl.load(part_l_ptr + ml, mask=in_buf, other=0.0), 0.0)
    part = tl.load(part_acc_ptr + ml[:, None] * HEAD_DIM + d[None, :], mask=in_buf[:, None] & (d[None, :] < HEAD_DIM),
                   other=0.0)
    m_new = tl.maximum(m_run, tl.max(m, axis=0))
    alpha = tl.exp2(m_run - m_new)
    w = tl.exp2(m - m_new)  # 0 for the splits dropped
    denom = denom * alpha + tl.sum(w * l_s, axis=0)
    acc = acc * alpha + tl.sum(w[:, None] * tl.where(s_ok[:, None], part, 0.0), axis=0)
    return m_new, denom, acc


@triton.jit
def _merge_splits_kernel(
    part_acc_ptr, part_m_ptr, part_l_ptr, split_range_ptr, qsl_ptr, num_reqs, out_ptr, stride_ot, stride_oh,
    num_tokens, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, CHUNK: tl.constexpr,
    NUM_SPLITS: tl.constexpr, WINDOW: tl.constexpr, PDL: tl.constexpr,
):
    pdl.enter(PDL)
    # One (token, head): its splits [first, end) combined CHUNK at a time, chunk after chunk (a fixed order
    # that depends on the token's position only). Without a window first is 0, and the first chunk's loads
    # go out together with the one of `end`.
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    if t < tl.load(qsl_ptr + num_reqs):  # padding tokens past the last request: nothing was written for them
        end = tl.load(split_range_ptr + t * 2 + 1)
        d = tl.arange(0, D_PAD)
        m_run = tl.zeros([], tl.float32) - 1.0e30
        denom = tl.zeros([], tl.float32)
        acc = tl.zeros([D_PAD], tl.float32)
        if WINDOW > 0:
            first = tl.load(split_range_ptr + t * 2)
        else:
            first = CHUNK
            m_run, denom, acc = _merge_chunk(part_acc_ptr, part_m_ptr, part_l_ptr, t, h, 0, end, m_run, denom, acc,
                                             num_tokens, NUM_HEADS, HEAD_DIM, D_PAD, CHUNK, NUM_SPLITS)
        for s0 in range(first, end, CHUNK):
            m_run, denom, acc = _merge_chunk(part_acc_ptr, part_m_ptr, part_l_ptr, t, h, s0, end, m_run, denom, acc,
                                             num_tokens, NUM_HEADS, HEAD_DIM, D_PAD, CHUNK, NUM_SPLITS)
        o = acc / tl.where(denom > 0, denom, 1.0)
        tl.store(out_ptr + t * stride_ot + h * stride_oh + d, o.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # interpreter: a small number keeps the split path exercised


def split_tokens_for(max_seq_len: int) -> int:
    """Positions per KV split: SPLIT_TOKENS, doubled until max_seq_len needs at most MAX_SPLITS splits. It
    depends on the bound only (fixed per engine), never on the step."""
    split = SPLIT_TOKENS
    while triton.cdiv(max_seq_len, split) > MAX_SPLITS:
        split *= 2
    return split


def splits_pay(num_reqs: int, num_kv_heads: int, device: torch.device) -> bool:
    """Split the KV range (decode / verify) while the (request, kv head) pairs leave SMs idle; a shape-only
    choice, the same for a decode and a verify step of the same requests."""
    return num_reqs * num_kv_heads < 2 * _num_sms(device)


def paged_attention_triton(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim] (last dim contiguous)
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_reqs, max_blocks_per_req] int32
    query_start_loc: torch.Tensor,  # [num_reqs + 1] int32, cu_seqlens of the flat batch
    seq_lens: torch.Tensor,  # [num_reqs] int32, context incl. this step's tokens
    max_query_len: int,  # host int, an upper bound on any request's q_len (grid sizing only)
    scale: float,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim]
    *,
    max_seq_len: int | None = None,  # host bound on seq_lens, fixed per engine (sets the KV splits); None: max
    split_tokens: int | None = None,  # positions per KV split (decode/verify); None: split_tokens_for(bound)
    # while splits_pay, else 0 (no split)
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    num_tokens, num_heads, head_dim = query.shape
    num_reqs = block_tables.shape[0]
    page, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if query.stride(-1) != 1 or k_cache.stride(-1) != 1 or k_cache.stride() != v_cache.stride():
        raise ValueError("query/k_cache/v_cache need a contiguous last dim; k_cache and v_cache one layout")
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=query.dtype, device=query.device)
    if num_tokens == 0 or num_reqs == 0:
        return out
    d_pad = max(16, triton.next_power_of_2(head_dim))
    block_n = 64 if d_pad <= 128 else 32
    rows = max(1, max_query_len) * group
    num_splits, split = 1, block_n
    if rows <= DECODE_MAX_ROWS:  # decode / verify: 16-row tiles, KV split at fixed positions
        block_m, num_tiles, warps = DECODE_BLOCK_M, triton.cdiv(rows, DECODE_BLOCK_M), 4
        bound = max_seq_len if max_seq_len is not None else int(seq_lens.max())  # the latter syncs
        if split_tokens is None:
            split_tokens = split_tokens_for(bound) if splits_pay(num_reqs, num_kv_heads, query.device) else 0
        if split_tokens:
            if split_tokens % block_n:
                raise ValueError(f"split_tokens={split_tokens} must be a multiple of {block_n} (BLOCK_N)")
            split, num_splits = split_tokens, max(1, triton.cdiv(bound, split_tokens))
    else:  # prefill chunks (mixed batches too): 128-row tiles, no split
        block_m = 128
        num_tiles = triton.cdiv(rows, block_m)
        warps = 8 if d_pad >= 128 else 4
    if num_splits > 1:
        part_acc = torch.empty((num_splits, num_tokens, num_heads, head_dim), dtype=torch.float32,
                               device=query.device)
        part_m = torch.empty((num_splits, num_tokens, num_heads), dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
        split_range = torch.empty((num_tokens, 2), dtype=torch.int32, device=query.device)
    else:
        part_acc = part_m = part_l = split_range = out  # unused
    programs = min(num_splits, SPLIT_PROGRAMS)
    use_pdl = pdl.enabled(query.device)
    _attn_kernel[(num_tiles, num_reqs * num_kv_heads, programs)](
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out, part_acc, part_m, part_l,
        split_range, query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), num_tokens, scale * math.log2(math.e),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, GROUP=group, HEAD_DIM=head_dim, D_PAD=d_pad,
        PAGE=page, WINDOW=sliding_window or 0, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=split,
        NUM_SPLITS=num_splits, SPLIT_PROGRAMS=programs, IEEE=query.dtype == torch.float32, num_warps=warps,
        num_stages=2, PDL=use_pdl, launch_pdl=use_pdl,
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_tokens, num_heads)](
            part_acc, part_m, part_l, split_range, query_start_loc, num_reqs, out, out.stride(0), out.stride(1),
            num_tokens, NUM_HEADS=num_heads, HEAD_DIM=head_dim, D_PAD=d_pad, CHUNK=MERGE_CHUNK,
            NUM_SPLITS=num_splits, WINDOW=sliding_window or 0, num_warps=4, PDL=use_pdl,
            launch_pdl=use_pdl,
        )
    return out
