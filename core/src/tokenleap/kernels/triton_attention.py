"""Paged attention in Triton: decode, verify (1 + k queries), prefill chunks. Reference: ``attention_ref.py``.

One kernel, two launch configurations chosen from host ints (shapes and ``max_query_len``):

- Query tile = rows of (query, head-of-the-GQA-group). A program owns one kv head of one request and
  ``BLOCK_M`` such rows, so every K/V page it reads serves all the query heads that share it.
- Decode / verify (``max_query_len * group <= 128``): one tile holds all (1 + k) queries x group heads
  of a kv head. The KV range is split across ``num_splits`` programs (flash-decoding) so batch-1 long
  contexts fill the GPU; each writes an unnormalized partial (acc, running max, sum) and a second
  kernel merges them. ``num_splits == 1`` (big batches) writes the output directly.
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
import os

import torch
import triton
import triton.language as tl


def _interpreter_numpy_compat() -> None:
    """Triton 3.6's interpreter turns scalars (shape-(1,) arrays) into ints with ``int(array)``, which
    NumPy >= 2.4 refuses; loops with data-dependent bounds then fail. Wrap its tensor patch to use
    ``.item()``. Only under ``TRITON_INTERPRET=1``; a no-op when the interpreter lacks the hook."""
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_tokenleap_compat", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._tokenleap_compat = True
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_numpy_compat()

DECODE_MAX_ROWS = 128  # max_query_len * group at or below this takes the split-KV decode/verify config
MAX_SPLITS = 32
MIN_SPLIT_TOKENS = 128  # with max_seq_len given, no split gets fewer positions than this


@triton.jit
def _attn_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, qsl_ptr, seq_lens_ptr,
    out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr,
    stride_qt, stride_qh, stride_cb, stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
    num_tokens, qk_scale,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, PAGE: tl.constexpr, WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr,
):
    tile = tl.program_id(0)
    req = tl.program_id(1) // NUM_KV_HEADS
    kvh = tl.program_id(1) % NUM_KV_HEADS
    split = tl.program_id(2)
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
    q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    # Positions this tile can see: causal upper bound of its last query, window lower bound of its first.
    first_qi = (tile * BLOCK_M) // GROUP
    last_qi = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // GROUP, q_len - 1)
    hi = ctx + last_qi + 1
    lo = 0
    if WINDOW > 0:
        lo = tl.maximum(ctx + first_qi - WINDOW + 1, 0)
    hi = tl.where(first_qi < q_len, hi, lo)  # tile past this request's queries: nothing to do
    if NUM_SPLITS > 1:
        chunk = tl.cdiv(tl.cdiv(hi - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = lo + split * chunk
        hi = tl.minimum(hi, lo + chunk)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: fully masked rows never make NaN
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    table = block_tables_ptr + req.to(tl.int64) * stride_bt
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

    o_mask = row_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=o_mask)
    else:
        ml = (split * num_tokens + tok) * NUM_HEADS + head  # [BLOCK_M], into [splits, tokens, heads]
        tl.store(part_m_ptr + ml, m_i, mask=row_ok)
        tl.store(part_l_ptr + ml, l_i, mask=row_ok)
        tl.store(part_acc_ptr + ml[:, None] * HEAD_DIM + d[None, :], acc, mask=o_mask)


@triton.jit
def _merge_splits_kernel(
    part_acc_ptr, part_m_ptr, part_l_ptr, out_ptr, stride_ot, stride_oh, num_tokens,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr, S_PAD: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, S_PAD)
    s_ok = s < NUM_SPLITS
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    ml = (s * num_tokens + t) * NUM_HEADS + h
    m = tl.load(part_m_ptr + ml, mask=s_ok, other=-1.0e30)
    l_s = tl.load(part_l_ptr + ml, mask=s_ok, other=0.0)
    w = tl.exp2(m - tl.max(m, axis=0))
    denom = tl.sum(w * l_s, axis=0)
    acc_mask = s_ok[:, None] & d_ok[None, :]
    acc = tl.load(part_acc_ptr + ml[:, None] * HEAD_DIM + d[None, :], mask=acc_mask, other=0.0)
    o = tl.sum(w[:, None] * acc, axis=0) / tl.where(denom > 0, denom, 1.0)
    tl.store(out_ptr + t * stride_ot + h * stride_oh + d, o.to(out_ptr.dtype.element_ty), mask=d_ok)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8  # interpreter: a small number keeps the split path exercised


def choose_num_splits(num_programs: int, device: torch.device, max_seq_len: int | None = None) -> int:
    """Splits per (request, kv head) so that about two programs run per SM; shape-only, graph-safe."""
    splits = min(MAX_SPLITS, max(1, triton.cdiv(2 * _num_sms(device), num_programs)))
    if max_seq_len is not None:
        splits = min(splits, max(1, triton.cdiv(max_seq_len, MIN_SPLIT_TOKENS)))
    # Powers of two only: each distinct count is a separate compiled kernel, and compiling one in the
    # middle of serving (a new context length) costs far more than an imperfect split.
    return 1 << (splits.bit_length() - 1)


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
    max_seq_len: int | None = None,  # optional host upper bound on seq_lens: caps the KV splits
    num_splits: int | None = None,  # override of the split-KV heuristic (decode/verify config only)
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
    rows = max(1, max_query_len) * group
    if rows <= DECODE_MAX_ROWS:  # decode / verify: one tile per (request, kv head), KV split
        block_m, num_tiles = max(16, triton.next_power_of_2(rows)), 1
        if num_splits is None:
            num_splits = choose_num_splits(num_reqs * num_kv_heads, query.device, max_seq_len)
        block_n, warps = (64 if d_pad <= 128 else 32), (4 if block_m <= 64 else 8)
    else:  # prefill chunks (mixed batches too): 128-row tiles, no split
        block_m, num_splits = 128, 1
        num_tiles = triton.cdiv(rows, block_m)
        block_n, warps = (64 if d_pad <= 128 else 32), (8 if d_pad >= 128 else 4)
    if num_splits > 1:
        part_acc = torch.empty((num_splits, num_tokens, num_heads, head_dim), dtype=torch.float32,
                               device=query.device)
        part_m = torch.empty((num_splits, num_tokens, num_heads), dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
    else:
        part_acc = part_m = part_l = out  # unused
    _attn_kernel[(num_tiles, num_reqs * num_kv_heads, num_splits)](
        query, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out, part_acc, part_m, part_l,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), num_tokens, scale * math.log2(math.e),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, GROUP=group, HEAD_DIM=head_dim, D_PAD=d_pad,
        PAGE=page, WINDOW=sliding_window or 0, BLOCK_M=block_m, BLOCK_N=block_n, NUM_SPLITS=num_splits,
        IEEE=query.dtype == torch.float32, num_warps=warps, num_stages=2,
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_tokens, num_heads)](
            part_acc, part_m, part_l, out, out.stride(0), out.stride(1), num_tokens,
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, D_PAD=d_pad, NUM_SPLITS=num_splits,
            S_PAD=triton.next_power_of_2(num_splits), num_warps=4,
        )
    return out
