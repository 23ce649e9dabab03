"""The next verify step's inputs, drafted on the device by prompt lookup: one Triton kernel.

Same contract as ``lookup_ref.next_verify_inputs_ref`` (shapes and semantics there). One program per row: it
appends the previous step's emitted tokens to the row's history, then walks the history in BLOCK-token chunks;
for each candidate end position e it compares the HI tokens before e with the HI last tokens of the history
(``hist[e - m] == hist[n - m]``, m = 1..HI: the n-gram of size n matches when the first n comparisons hold), and
keeps, per n, the largest matching e below n (the most recent earlier occurrence). The longest n with a match
wins. Then it writes the step's ids, positions, slots, sequence length and draft count. No host sync, fixed
shapes: it sits at the start of a captured verify graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from tokenleap.kernels import triton_compat  # noqa: F401  (interpreter fixes, under TRITON_INTERPRET=1)

from tokenleap_ngram.prompt_lookup import DEVICE_MAX_LOOKUP as MAX_LOOKUP


@triton.jit
def _next_verify_inputs_kernel(
    hist_ptr, hist_len_ptr, last_ptr, feed_ptr, limits_ptr, tables_ptr,
    ids_ptr, pos_ptr, slots_ptr, seq_lens_ptr, num_drafts_ptr,
    stride_hist, stride_last, stride_tables,
    Q: tl.constexpr, Q_POW2: tl.constexpr, KV_BLOCK: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr,
    HI_POW2: tl.constexpr, BLOCK: tl.constexpr,
):
    i = tl.program_id(0)
    if tl.load(feed_ptr + i) != 0:
        row = hist_ptr + i * stride_hist
        r = tl.arange(0, Q_POW2)  # [Q_POW2] query rows of the step
        start = tl.load(hist_len_ptr + i)
        emitted = tl.load(last_ptr + i * stride_last + Q)
        new = tl.load(last_ptr + i * stride_last + r, mask=r < emitted, other=0)
        tl.store(row + start + r, new.to(tl.int32), mask=r < emitted)
        n = start + emitted  # tokens known now; the last one is this step's first input
        tl.store(hist_len_ptr + i, n)
        tl.debug_barrier()  # the appended tokens are read back below by other threads

        sizes = tl.arange(0, HI_POW2) + 1  # [HI_POW2] n-gram size of each slot of `best`
        best = tl.full([HI_POW2], -1, tl.int64)  # per size: the latest end e < n whose n-gram matches
        for e0 in range(0, n, BLOCK):
            e = e0 + tl.arange(0, BLOCK).to(tl.int64)  # [BLOCK] candidate ends
            match = e < n  # e <= n - 1: the n-gram is followed by at least one token
            for m in tl.static_range(1, HI + 1):
                suffix_m = tl.load(row + n - m, mask=n - m >= 0, other=-1)  # hist[n - m]
                # hist[e - m]; -2 off the history, which no token (>= 0) nor a missing suffix (-1) equals
                before_e = tl.load(row + e - m, mask=(e - m >= 0) & (e < n), other=-2)
                match = match & (before_e == suffix_m)
                if m >= LO:
                    latest = tl.max(tl.where(match, e, -1), axis=0)
                    best = tl.maximum(best, tl.where(sizes == m, latest, -1))
        size = tl.max(tl.where((sizes >= LO) & (sizes <= HI) & (best >= 0), sizes, 0), axis=0)
        src = tl.max(tl.where((sizes == size) & (size > 0), best, -1), axis=0)
        room = tl.maximum(tl.load(limits_ptr + i) - n - 1, 0)
        nd = tl.where(src >= 0, tl.minimum(tl.minimum(n - src, room), Q - 1), 0)

        last_token = tl.load(row + n - 1).to(tl.int64)
        draft = tl.load(row + src + r - 1, mask=(r >= 1) & (r <= nd), other=0).to(tl.int64)
        pos = n - 1 + r
        real = r <= nd
        block = tl.load(tables_ptr + i * stride_tables + pos // KV_BLOCK, mask=real & (r < Q), other=0)
        slot = tl.where(real, block.to(tl.int64) * KV_BLOCK + pos % KV_BLOCK, 0)
        out = i * Q + r
        tl.store(ids_ptr + out, tl.where(r == 0, last_token, draft), mask=r < Q)
        tl.store(pos_ptr + out, pos, mask=r < Q)
        tl.store(slots_ptr + out, slot, mask=r < Q)
        tl.store(seq_lens_ptr + i, (n - 1 + Q).to(tl.int32))
        tl.store(num_drafts_ptr + i, nd)


def next_verify_inputs(
    hist: torch.Tensor, hist_len: torch.Tensor, last: torch.Tensor, feed: torch.Tensor, limits: torch.Tensor,
    tables: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, seq_lens: torch.Tensor,
    num_drafts: torch.Tensor, q: int, block_size: int, lookup_min: int, lookup_max: int, block: int = 1024,
) -> None:
    if not 1 <= lookup_min <= lookup_max <= MAX_LOOKUP:
        raise ValueError(f"lookup_min={lookup_min}, lookup_max={lookup_max}: need 1 <= min <= max <= {MAX_LOOKUP}")
    b = feed.shape[0]
    _next_verify_inputs_kernel[(b,)](
        hist, hist_len, last, feed, limits, tables, ids, positions, slots, seq_lens, num_drafts,
        hist.stride(0), last.stride(0), tables.stride(0),
        Q=q, Q_POW2=triton.next_power_of_2(q), KV_BLOCK=block_size, LO=lookup_min, HI=lookup_max,
        HI_POW2=triton.next_power_of_2(lookup_max), BLOCK=block, num_warps=4,
    )
