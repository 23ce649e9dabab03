"""A device drafter's inputs in two Triton kernels: same contract as ``speculative.device_inputs.draft_step_inputs``
and ``write_drafts``.

The torch composition is a few small kernels per torch op (gathers, clamps and selects over [b, q] tensors for
the catch-up, each chain step and the verify step), each a few microseconds of a captured graph whose whole
forward is under a millisecond on SmolLM2. Here one program per row computes everything that does not depend on
the drafts (the row's counts, the catch-up rows, every chain step's row, the verify step's frame) and a second
kernel, after drafting, writes the drafts' ids. No host sync, shapes fixed by the arguments: both sit inside a
captured verify graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from tokenleap_plugins import DeviceDraftStep

from tokenleap.kernels import triton_compat  # noqa: F401  (interpreter fixes, under TRITON_INTERPRET=1)
from tokenleap.speculative.device_inputs import CatchUpInputs, DraftStepInputs


@triton.jit
def _draft_step_inputs_kernel(
    last_ptr, stride_last, ctx_ptr, feed_ptr, limits_ptr, tables_ptr, stride_tables, max_blocks,
    ids_ptr, pos_ptr, slots_ptr, seq_ptr, num_drafts_ptr,
    n_ptr, token_ptr, nd_ptr, rows_ptr, cu_ids_ptr, cu_pos_ptr, cu_slots_ptr, cu_seq_ptr,
    ch_pos_ptr, ch_slots_ptr, ch_seq_ptr, b,
    W: tl.constexpr, Q: tl.constexpr, Q_POW2: tl.constexpr, K: tl.constexpr, C_POW2: tl.constexpr,
    BS: tl.constexpr, SHIFT: tl.constexpr,
):
    i = tl.program_id(0)
    row = last_ptr + i.to(tl.int64) * stride_last
    table = tables_ptr + i.to(tl.int64) * stride_tables
    fed = tl.load(feed_ptr + i) != 0
    e_raw = tl.load(row + W - 2)
    token = tl.load(row + tl.minimum(tl.maximum(e_raw - 1, 0), W - 3))
    n = tl.load(ctx_ptr + i) + e_raw
    nd = tl.minimum(tl.maximum(tl.load(limits_ptr + i) - n - 1, 0), K)
    tl.store(n_ptr + i, n)
    tl.store(token_ptr + i, token)
    tl.store(nd_ptr + i, nd)
    # the catch-up: the e kept rows last among the row's Q
    j = tl.arange(0, Q_POW2)
    in_q = j < Q
    e = tl.minimum(tl.maximum(e_raw, 1), Q)
    src = j - (Q - e)
    real = (src >= 0) & fed
    rows = tl.where(real, src, 0)
    cu_ids = tl.where(real, tl.load(row + rows, mask=in_q, other=0), 0)
    cu_pos = tl.where(real, n - e - 1 + SHIFT + rows, 0)
    blk = tl.minimum(tl.maximum(cu_pos // BS, 0), max_blocks - 1)
    cu_slot = tl.where(real, tl.load(table + blk, mask=in_q, other=0).to(tl.int64) * BS + cu_pos % BS, 0)
    out = i * Q + j
    tl.store(rows_ptr + out, rows, mask=in_q)
    tl.store(cu_ids_ptr + out, cu_ids, mask=in_q)
    tl.store(cu_pos_ptr + out, cu_pos, mask=in_q)
    tl.store(cu_slots_ptr + out, cu_slot, mask=in_q)
    tl.store(cu_seq_ptr + i, tl.where(fed, n - 1 + SHIFT, Q).to(tl.int32))
    # the chain: step s feeds draft s + 1 at n - 1 + SHIFT + s, wanted while s + 2 <= nd
    s = tl.arange(0, C_POW2)
    in_chain = s < K - 1
    wanted = nd >= s + 2
    ch_pos = tl.where(wanted, n - 1 + SHIFT + s, 0)
    ch_blk = tl.minimum(tl.maximum(ch_pos // BS, 0), max_blocks - 1)
    ch_slot = tl.where(wanted, tl.load(table + ch_blk, mask=in_chain, other=0).to(tl.int64) * BS + ch_pos % BS, 0)
    tl.store(ch_pos_ptr + s * b + i, ch_pos, mask=in_chain)
    tl.store(ch_slots_ptr + s * b + i, ch_slot, mask=in_chain)
    tl.store(ch_seq_ptr + s * b + i, tl.where(wanted, ch_pos + 1, 1).to(tl.int32), mask=in_chain)
    # the verify step's frame (fed rows): the last token, then token 0 until the drafts are written
    v_pos = n - 1 + j
    v_blk = tl.minimum(tl.maximum(v_pos // BS, 0), max_blocks - 1)
    v_slot = tl.where(j <= nd, tl.load(table + v_blk, mask=in_q & fed, other=0).to(tl.int64) * BS + v_pos % BS, 0)
    put = in_q & fed
    tl.store(ids_ptr + out, tl.where(j == 0, token, 0), mask=put)
    tl.store(pos_ptr + out, v_pos, mask=put)
    tl.store(slots_ptr + out, v_slot, mask=put)
    tl.store(seq_ptr + i, (n - 1 + Q).to(tl.int32), mask=fed)
    tl.store(num_drafts_ptr + i, nd, mask=fed)
    tl.store(ctx_ptr + i, n, mask=fed)


@triton.jit
def _write_drafts_kernel(feed_ptr, nd_ptr, drafts_ptr, stride_drafts, ids_ptr, Q: tl.constexpr,
                         K_POW2: tl.constexpr):
    i = tl.program_id(0)
    j = tl.arange(0, K_POW2)
    put = (j < tl.load(nd_ptr + i)) & (j < Q - 1) & (tl.load(feed_ptr + i) != 0)
    d = tl.load(drafts_ptr + i.to(tl.int64) * stride_drafts + j, mask=put, other=0)
    tl.store(ids_ptr + i * Q + 1 + j, d, mask=put)


def draft_step_inputs_triton(step: DeviceDraftStep, ctx_len: torch.Tensor, k: int, shift: int = 0) -> DraftStepInputs:
    b, q = step.feed.shape[0], step.q
    dev = ctx_len.device
    as_long = lambda *shape: torch.empty(shape, dtype=torch.int64, device=dev)  # noqa: E731
    n, token, nd = as_long(b), as_long(b), as_long(b)
    rows, cu_ids, cu_pos, cu_slots = as_long(b, q), as_long(b * q), as_long(b * q), as_long(b * q)
    cu_seq = torch.empty(b, dtype=torch.int32, device=dev)
    chain = max(k - 1, 0)
    ch_pos, ch_slots = as_long(chain, b), as_long(chain, b)
    ch_seq = torch.empty((chain, b), dtype=torch.int32, device=dev)
    last, tables = step.last, step.tables
    _draft_step_inputs_kernel[(b,)](
        last, last.stride(0), ctx_len, step.feed, step.limits, tables, tables.stride(0), tables.shape[1],
        step.ids, step.positions, step.slots, step.seq_lens, step.num_drafts,
        n, token, nd, rows, cu_ids, cu_pos, cu_slots, cu_seq, ch_pos, ch_slots, ch_seq, b,
        W=last.shape[1], Q=q, Q_POW2=triton.next_power_of_2(q), K=k, C_POW2=triton.next_power_of_2(max(chain, 1)),
        BS=step.block_size, SHIFT=shift, num_warps=1,
    )
    query_start = (torch.arange(b + 1, device=dev) * q).to(torch.int32)
    last_rows = torch.arange(b, device=dev) * q + q - 1
    return DraftStepInputs(n, token, nd, CatchUpInputs(cu_ids, cu_pos, cu_slots, rows, cu_seq, query_start, last_rows),
                           ch_pos, ch_slots, ch_seq)


def write_drafts_triton(step: DeviceDraftStep, nd: torch.Tensor, drafts: torch.Tensor) -> None:
    b, q = step.feed.shape[0], step.q
    _write_drafts_kernel[(b,)](step.feed, nd, drafts, drafts.stride(0), step.ids, Q=q,
                               K_POW2=triton.next_power_of_2(max(q - 1, 1)), num_warps=1)
