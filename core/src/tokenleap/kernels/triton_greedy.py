"""A graphed step's greedy head in two Triton kernels: same contract as ``greedy_ref.greedy_head_ref``.

torch's argmax over a [rows, 49152] logits tensor runs one block per row (13 us on an H100 for SmolLM2's
vocabulary, more than a layer's linears), and greedy verification after it is a dozen small torch kernels.
Here the first kernel splits every row into CHUNK-wide pieces, one program each, and writes each piece's
maximum and the first index where it occurs; the second, one program per request, takes each row's maximum over
its pieces in order (the first piece holding it wins ties, so the index is torch.argmax's: the first index of
the maximum), counts the drafts accepted while equal to the argmax, and writes the greedy result and the
copies a step launched behind this one reads. NaN logits count as +inf (torch's argmax returns a NaN's index;
a model that makes NaN logits has other problems). No host sync, shapes fixed by the arguments: the calls sit
at the end of a captured graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tokenleap.kernels import triton_compat  # noqa: F401  (interpreter fixes, under TRITON_INTERPRET=1)

CHUNK = 2048  # logits per program of the first kernel


@triton.jit
def _chunk_argmax_kernel(logits_ptr, part_val_ptr, part_idx_ptr, V, stride_row, NUM_CHUNKS: tl.constexpr,
                         CHUNK: tl.constexpr):
    row = tl.program_id(0)
    c = tl.program_id(1)
    idx = c * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
    x = tl.where(x != x, float("inf"), x)  # NaN -> +inf
    best = tl.max(x, axis=0)
    first = tl.min(tl.where((x == best) & (idx < V), idx, V), axis=0)
    tl.store(part_val_ptr + row * NUM_CHUNKS + c, best)
    tl.store(part_idx_ptr + row * NUM_CHUNKS + c, first)


@triton.jit
def _verify_kernel(part_val_ptr, part_idx_ptr, ids_ptr, num_drafts_ptr, greedy_ptr, last_tokens_ptr,
                   last_verify_ptr, stride_lv, LV_WIDTH: tl.constexpr, Q: tl.constexpr, Q_POW2: tl.constexpr,
                   NUM_CHUNKS: tl.constexpr, C_POW2: tl.constexpr, WRITE_LAST_TOKENS: tl.constexpr,
                   WRITE_LAST_VERIFY: tl.constexpr):
    i = tl.program_id(0)
    j = tl.arange(0, Q_POW2)  # [Q_POW2] rows of request i
    c = tl.arange(0, C_POW2)  # [C_POW2] chunks
    ok = (j[:, None] < Q) & (c[None, :] < NUM_CHUNKS)
    offs = (i * Q + j)[:, None] * NUM_CHUNKS + c[None, :]
    val = tl.load(part_val_ptr + offs, mask=ok, other=float("-inf"))  # [Q_POW2, C_POW2]
    best = tl.max(val, axis=1)
    first_chunk = tl.min(tl.where((val == best[:, None]) & ok, c[None, :], C_POW2), axis=1)  # [Q_POW2]
    argmax = tl.load(part_idx_ptr + (i * Q + j) * NUM_CHUNKS + first_chunk, mask=j < Q, other=0).to(tl.int64)
    nd = tl.load(num_drafts_ptr + i)
    draft = tl.load(ids_ptr + i * Q + j + 1, mask=j < Q - 1, other=-1)  # draft j sits in row j + 1
    accepted = tl.min(tl.where((j < nd) & (draft == argmax), Q, j), axis=0)  # leading drafts equal to the argmax
    emitted = tl.minimum(accepted, nd) + 1
    out = greedy_ptr + i * (Q + 2)
    tl.store(out + j, argmax, mask=j < Q)
    tl.store(out + Q, emitted)
    tl.store(out + Q + 1, nd)
    if WRITE_LAST_TOKENS:
        tl.store(last_tokens_ptr + i + j, argmax, mask=j == 0)
    if WRITE_LAST_VERIFY:
        lv = last_verify_ptr + i * stride_lv
        tl.store(lv + j, argmax, mask=j < Q)
        tl.store(lv + LV_WIDTH - 2, emitted)
        tl.store(lv + LV_WIDTH - 1, nd)


def greedy_head(
    logits: torch.Tensor, ids: torch.Tensor, num_drafts: torch.Tensor, q: int,
    last_tokens: torch.Tensor | None = None, last_verify: torch.Tensor | None = None,
) -> torch.Tensor:
    rows, vocab = logits.shape
    b = num_drafts.shape[0]
    if rows != b * q or ids.shape != (rows,) or logits.stride(1) != 1:
        raise ValueError(f"greedy_head: logits [{b} * {q}, vocab] with unit column stride and ids [{b * q}] "
                         f"expected; got {tuple(logits.shape)} (strides {logits.stride()}), {tuple(ids.shape)}")
    if last_verify is not None and last_verify.shape[1] < q + 2:
        raise ValueError(f"last_verify needs >= {q + 2} columns; got {tuple(last_verify.shape)}")
    num_chunks = triton.cdiv(vocab, CHUNK)
    part_val = torch.empty((rows, num_chunks), dtype=torch.float32, device=logits.device)
    part_idx = torch.empty((rows, num_chunks), dtype=torch.int32, device=logits.device)
    greedy = torch.empty((b, q + 2), dtype=torch.int64, device=logits.device)
    _chunk_argmax_kernel[(rows, num_chunks)](logits, part_val, part_idx, vocab, logits.stride(0),
                                             NUM_CHUNKS=num_chunks, CHUNK=CHUNK, num_warps=4)
    _verify_kernel[(b,)](
        part_val, part_idx, ids, num_drafts, greedy,
        last_tokens if last_tokens is not None else greedy, last_verify if last_verify is not None else greedy,
        last_verify.stride(0) if last_verify is not None else 0,
        LV_WIDTH=last_verify.shape[1] if last_verify is not None else 0, Q=q, Q_POW2=triton.next_power_of_2(q),
        NUM_CHUNKS=num_chunks, C_POW2=triton.next_power_of_2(num_chunks),
        WRITE_LAST_TOKENS=last_tokens is not None, WRITE_LAST_VERIFY=last_verify is not None, num_warps=4,
    )
    return greedy
