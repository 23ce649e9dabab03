"""Linear layers for a few rows (M <= 16 tokens), optionally with the RMSNorm before them and what follows the
projection fused in.

A decode or verify step multiplies a handful of rows by every weight matrix: the work is streaming the weight
once from memory, and at batch 1 a 576x576 layer is mostly launch and latency (cuBLAS: ~3.6 us on an H100
for 0.2 us of bytes; a separate small kernel costs ~1-2 us). One kernel computes

    linear_small_m:         y = x @ weight.T (+ bias)
    add_rms_norm_linear:    y = rms_norm(x + residual) @ weight.T (+ bias), and new_residual = x + residual
      swiglu=True:          y = silu_and_mul of that (weight = [gate; up])
    add_rms_norm_qkv_rope:  q_rot of the fused qkv projection, k_rot and v written to the paged KV cache

with the roundings of ``triton_fused``'s ops followed by a linear (references in ``linear_ref.py``; the
epilogues give the unfused Triton ops' bits). The two epilogues need a second column tile per program: the up
projection's columns beside the gate's, a head's second-half columns beside the first half's (RoPE rotates
column d with d + D / 2).

Design. Program ``p`` owns the output columns ``[p*BLOCK_N, (p+1)*BLOCK_N)`` for all M rows and walks K in
BLOCK_K chunks: it loads a ``[BLOCK_N, BLOCK_K]`` weight tile (every weight element is read by exactly one
program, once), builds the matching input chunk (loading x, or computing the norm / activation from the raw
rows, which are small and come from L2), and accumulates ``chunk @ tile.T`` on the tensor cores in fp32.
The input chunk always has 16 rows, the smallest tensor-core tile: M = 1 computes its one row and broadcasts
it; 2 <= M <= 16 loads rows ``min(r, M - 1)``, so the extra rows repeat the last one (same cache lines: no
extra traffic) and are never stored. No split-K: small N gets a narrow BLOCK_N instead, so that the grid
still covers the SMs (``tile_for``). A fused prologue is recomputed by every program, N / BLOCK_N times in
all; the RMSNorm needs the whole row first, so its programs read the rows twice (sum of squares, then
normalize + multiply), and the first program also writes ``new_residual`` (a new tensor: the others are
still reading the inputs).

Batch invariance: row m of the result has the same bits whatever M is (1..16) and whatever the other rows
hold. Every ``tl.dot`` is the same [16, BLOCK_K] x [BLOCK_K, BLOCK_N] product whose rows do not mix, and the
K order depends on the weight shape only (BLOCK_K is 256 whatever M; ``tile_for`` picks BLOCK_N, warps and
stages per variant, which leave the bits alone: bench_linear_gpu.py checks both on the GPU). Only two
variants are compiled per shape, one row (M = 1) or 16; their prologues are elementwise per row except the
RMSNorm's sum of squares, which is added in a fixed pairwise order (``_pairwise_row_sum``): ``tl.sum`` would
follow a thread layout that Triton may choose differently for a [1, BLOCK_K] and a [16, BLOCK_K] tile (or for
another number of warps). No atomics, no host syncs; outputs are allocated from shapes only, so the calls can
be captured in a CUDA graph. On Hopper, layers of at most ``pdl.SMALL_WEIGHT_BYTES`` are launched with
programmatic dependent launch (``kernels/pdl.py``): a program first asks L2 for its weight rows, then waits for
the kernel before it, and only then reads activations or writes anything.

When to use: decode / verify steps with at most MAX_ROWS tokens and weights in [N, K] (``nn.Linear``) layout
with a contiguous last dimension; activation rows may be strided. Pick the op per layer, never per M (the
bits would change with M otherwise). The fused RMSNorm pays only for small hidden sizes
(``ops.FUSED_NORM_MAX_HIDDEN``): every program re-reads the rows twice. SiLU-and-mul is offered as the gate/up
projection's epilogue (each program computes matching gate and up columns: no [M, 2 * I] round trip, no second
kernel), not as a prologue, where every program would recompute the activation. Measurements behind these
choices: docs/performance-log.md ("Measurements behind the code").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tokenleap.kernels import pdl, triton_compat  # noqa: F401  (triton_compat: interpreter fixes)
from tokenleap.kernels.triton_fused import rotate_half_pair, silu_times

MAX_ROWS = 16  # rows (tokens) a call may have; also the row count of every tl.dot

_PLAIN, _RMS = 0, 1  # prologue kinds (constexpr)
_STORE, _SWIGLU, _ROPE = 0, 1, 2  # epilogue kinds (constexpr)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MIN_PROGRAMS = 96  # wider tiles stream better, until the grid leaves many of an H100's 132 SMs idle


@triton.jit
def _tile_rows(M, ROWS: tl.constexpr):
    # -> [ROWS, 1] the x row behind each row of an input chunk (ROWS = 1 when M = 1, else 16)
    return tl.minimum(tl.arange(0, ROWS), M - 1)[:, None]


@triton.jit
def _pairwise_row_sum(a, ROWS: tl.constexpr, WIDTH: tl.constexpr, LOG2_WIDTH: tl.constexpr):
    # a: [ROWS, WIDTH] -> [ROWS]: adds neighbours (2j, 2j+1), then neighbouring pairs, ...: one order for any ROWS.
    # Each level is a tl.sum over an axis of 2 (a + b: exact whatever the layout), which the compiler spreads over
    # the threads; a tl.split per level instead forced every thread to hold and add the whole [ROWS, WIDTH] tile
    # (4096 adds per thread at ROWS = 16: ~0.3 us per call on an H100).
    for i in tl.static_range(LOG2_WIDTH):
        a = tl.sum(tl.reshape(a, (ROWS, WIDTH >> (i + 1), 2)), axis=2)
    return tl.reshape(a, (ROWS,))


@triton.jit
def _rows_plus_residual(x_ptr, res_ptr, offs_x, offs_r, mask, HAS_RESIDUAL: tl.constexpr):
    # [ROWS, BLOCK_K] chunk of x, plus the residual when there is one, rounded to x's dtype (HF's add), as fp32
    x = tl.load(x_ptr + offs_x, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + offs_r, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return x.to(tl.float32)


@triton.jit
def _inv_rms(
    x_ptr, res_ptr, new_res_ptr, M, stride_x, stride_r, eps, write_residual,
    K: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
    LOG2_BLOCK_K: tl.constexpr,
):
    # -> [ROWS] fp32 1/sqrt(mean(h^2) + eps) of h = x (+ residual); writes h to new_res if write_residual
    rows = _tile_rows(M, ROWS)
    distinct = tl.arange(0, ROWS)[:, None] < M  # each x row once
    sq = tl.zeros((ROWS, BLOCK_K), tl.float32)  # per-lane partial sums, reduced once at the end
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)[None, :]
        h = _rows_plus_residual(x_ptr, res_ptr, rows * stride_x + k, rows * stride_r + k, k < K, HAS_RESIDUAL)
        if HAS_RESIDUAL:
            keep = distinct & (k < K) & write_residual
            tl.store(new_res_ptr + rows * K + k, h.to(new_res_ptr.dtype.element_ty), mask=keep)
        sq += h * h
    return tl.rsqrt(_pairwise_row_sum(sq, ROWS, BLOCK_K, LOG2_BLOCK_K) / K + eps)


@triton.jit
def _input_chunk(
    x_ptr, res_ptr, nw_ptr, inv_rms, k0, M, stride_x, stride_r,
    K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # -> [ROWS, BLOCK_K] columns k0.. of the GEMV input, in the activation dtype
    dtype = x_ptr.dtype.element_ty
    rows = _tile_rows(M, ROWS)
    k = k0 + tl.arange(0, BLOCK_K)[None, :]
    if PROLOGUE == 1:  # _RMS: normalized, cast to the dtype, THEN times the norm weight (LlamaRMSNorm)
        h = _rows_plus_residual(x_ptr, res_ptr, rows * stride_x + k, rows * stride_r + k, k < K, HAS_RESIDUAL)
        h = (h * inv_rms[:, None]).to(dtype).to(tl.float32)
        nw = tl.load(nw_ptr + k, mask=k < K, other=0.0).to(tl.float32)
        a = (nw * h).to(dtype)
    else:
        a = tl.load(x_ptr + rows * stride_x + k, mask=k < K, other=0.0)
    return a


@triton.jit
def _rope_epilogue(acc, acc2, head, half_cols, M, q_ptr, pos_ptr, cs_ptr, slot_ptr, k_cache_ptr, v_cache_ptr,
                   stride_cos, stride_cb, stride_cs, stride_ch, HEAD_DIM: tl.constexpr, NUM_HEADS: tl.constexpr,
                   NUM_KV_HEADS: tl.constexpr, PAGE: tl.constexpr):
    # acc, acc2: [16, BLOCK_N] columns half_cols of head slot `head` (q heads, then k, then v) in its first and
    # second half. q and k are rotated as triton_fused.rope_and_write_kv rotates them, q goes to q_ptr [M, H, D],
    # k and v to their cache slots (rows whose slot is < 0 are not written).
    dtype = q_ptr.dtype.element_ty
    half: tl.constexpr = HEAD_DIM // 2
    rows = tl.arange(0, 16)[:, None]
    x_rows = tl.minimum(rows, M - 1)
    x1 = acc.to(dtype).to(tl.float32)  # the projection's output, rounded as an unfused step stores it
    x2 = acc2.to(dtype).to(tl.float32)
    if head < NUM_HEADS + NUM_KV_HEADS:
        pos = tl.load(pos_ptr + x_rows).to(tl.int64)  # [16, 1]
        cos = tl.load(cs_ptr + pos * stride_cos + half_cols).to(dtype).to(tl.float32)  # HF casts cos / sin
        sin = tl.load(cs_ptr + pos * stride_cos + half + half_cols).to(dtype).to(tl.float32)
        o1, o2 = rotate_half_pair(x1, x2, cos, sin)
    else:
        o1 = x1
        o2 = x2
    if head < NUM_HEADS:
        out = q_ptr + rows * (NUM_HEADS * HEAD_DIM) + head * HEAD_DIM + half_cols
        tl.store(out, o1.to(dtype), mask=rows < M)
        tl.store(out + half, o2.to(dtype), mask=rows < M)
    else:
        slot = tl.load(slot_ptr + x_rows).to(tl.int64)  # [16, 1]
        ok = (rows < M) & (slot >= 0)
        kv_row = (slot // PAGE) * stride_cb + (slot % PAGE) * stride_cs
        if head < NUM_HEADS + NUM_KV_HEADS:
            out = k_cache_ptr + kv_row + (head - NUM_HEADS) * stride_ch + half_cols
        else:
            out = v_cache_ptr + kv_row + (head - NUM_HEADS - NUM_KV_HEADS) * stride_ch + half_cols
        tl.store(out, o1.to(out.dtype.element_ty), mask=ok)
        tl.store(out + half, o2.to(out.dtype.element_ty), mask=ok)


# M (the row count, 1..16) is not specialized on: Triton would otherwise compile a variant for M == 1, one for
# M % 16 == 0 and one for the rest, and an eager step with a new row count would stall on a compile mid-serving.
# M == 1 still gets its own variant through ROWS (a constexpr).
@triton.jit(do_not_specialize=["M"])
def _small_m_linear_kernel(
    x_ptr, res_ptr, nw_ptr, w_ptr, b_ptr, y_ptr, new_res_ptr,
    M, N, stride_x, stride_r, stride_w, eps,
    pos_ptr, cs_ptr, slot_ptr, k_cache_ptr, v_cache_ptr, stride_cos, stride_cb, stride_cs, stride_ch,
    K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    EPILOGUE: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, LOG2_BLOCK_K: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr, PAGE: tl.constexpr, PDL: tl.constexpr, PF_LINES: tl.constexpr,
):
    # Epilogues with a second column tile (columns n2, the same rows of input):
    # _SWIGLU: the weight holds 2N rows (gate, then up); program p computes columns n of both and writes
    #   silu(gate) * up [M, N] (the projection's output rounded to the dtype first, as an unfused step stores it).
    # _ROPE: a fused qkv projection (N = (H + 2 KVH) * HEAD_DIM columns, head after head); program p computes
    #   BLOCK_N columns of one head's first half and the matching ones of its second half (rotate-half pairs),
    #   then _rope_epilogue.
    pid = tl.program_id(0)
    head = 0
    half_cols = tl.arange(0, BLOCK_N)
    if EPILOGUE == 2:
        per_head: tl.constexpr = HEAD_DIM // 2 // BLOCK_N
        head = pid // per_head
        half_cols = (pid % per_head) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] within the half
        n = head * HEAD_DIM + half_cols
        n2 = n + HEAD_DIM // 2
    else:
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] output columns of this program
        n2 = n + N
    if PDL:  # this program's weight rows into L2 while the kernel before runs (nothing in the step writes them)
        pdl.prefetch_rows(w_ptr, tl.minimum(n, N - 1), stride_w, K, PF_LINES)
        if EPILOGUE != 0:  # (_SWIGLU: rows N..2N-1; _ROPE: n2 < N)
            pdl.prefetch_rows(w_ptr, tl.minimum(n2, 2 * N - 1), stride_w, K, PF_LINES)
    pdl.enter(PDL)
    inv_rms = tl.zeros((ROWS,), tl.float32)
    if PROLOGUE == 1:
        inv_rms = _inv_rms(x_ptr, res_ptr, new_res_ptr, M, stride_x, stride_r, eps, pid == 0,
                           K, HAS_RESIDUAL, ROWS, BLOCK_K, LOG2_BLOCK_K)
    w_rows = w_ptr + n.to(tl.int64)[:, None] * stride_w  # [BLOCK_N, 1]
    w2_rows = w_ptr + n2.to(tl.int64)[:, None] * stride_w  # the second tile's weight rows
    n_ok = n < N  # [BLOCK_N] (_ROPE: N is the projection's width, which its programs cover exactly)
    acc = tl.zeros((16, BLOCK_N), tl.float32)
    acc2 = tl.zeros((16, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = _input_chunk(x_ptr, res_ptr, nw_ptr, inv_rms, k0, M, stride_x, stride_r,
                         K, PROLOGUE, HAS_RESIDUAL, ROWS, BLOCK_K)  # [ROWS, BLOCK_K]
        k = k0 + tl.arange(0, BLOCK_K)[None, :]
        a16 = tl.broadcast_to(a, (16, BLOCK_K))
        w = tl.load(w_rows + k, mask=n_ok[:, None] & (k < K), other=0.0)  # [BLOCK_N, BLOCK_K]
        acc = tl.dot(a16, tl.trans(w), acc, input_precision=DOT_PRECISION)
        if EPILOGUE != 0:
            w2 = tl.load(w2_rows + k, mask=n_ok[:, None] & (k < K), other=0.0)
            acc2 = tl.dot(a16, tl.trans(w2), acc2, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if EPILOGUE != 0:
            acc2 += tl.load(b_ptr + n2, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    dtype = y_ptr.dtype.element_ty
    rows = tl.arange(0, 16)[:, None]  # accumulator row r is x row r (rows >= M repeat another row: not stored)
    if EPILOGUE == 2:
        _rope_epilogue(acc, acc2, head, half_cols[None, :], M, y_ptr, pos_ptr, cs_ptr, slot_ptr, k_cache_ptr,
                       v_cache_ptr, stride_cos, stride_cb, stride_cs, stride_ch, HEAD_DIM, NUM_HEADS,
                       NUM_KV_HEADS, PAGE)
    else:
        if EPILOGUE == 1:  # triton_fused.silu_and_mul of the projection as an unfused step stores it
            acc = silu_times(acc.to(dtype).to(tl.float32), acc2.to(dtype).to(tl.float32), dtype)
        tl.store(y_ptr + rows * N + n[None, :], acc.to(dtype), mask=(rows < M) & n_ok[None, :])


def tile_for(n: int, k: int, prologue: int = _PLAIN, rows: int = MAX_ROWS) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for an [N, K] weight and the kernel variant of ``rows`` input
    rows (1 or MAX_ROWS), tuned on an H100 with tests/benchmarks/bench_linear_gpu.py --sweep. BLOCK_K is 256
    everywhere, so every variant and M runs the same K order (BLOCK_N, warps and stages do not change the bits).
    BLOCK_N is the widest tile that still gives _MIN_PROGRAMS programs, else 16 (the narrowest tensor-core
    tile): small N buys parallelism with narrow tiles. The fused RMSNorm is recomputed by every program, so it
    takes wider tiles (fewer programs). Short K loops keep fewer stages (more programs per SM). Plain layers
    with short rows (K <= 2048: SmolLM2's) run faster on two warps: one input row on 16 columns and five
    stages (o_proj 3.37 -> 3.03 us, down 4.24 -> 3.93, lm_head 23.2 -> 21.3), and 16 rows of a long-K one on
    five stages (down 4.64 -> 4.19 us; all from one sweep run). One row of a fused RMSNorm on a short row
    (K <= 1024) also runs faster on two warps (``bench_linear_gpu.py --engine-variants``, SmolLM2, one run:
    norm + qkv + RoPE 5.96 -> 4.97 us, norm + gate/up + SwiGLU 5.97 -> 5.36); at 16 rows four warps stay the
    fastest. Its 16-row prologue costs more per program, so there (K <= 1024) it takes tiles up to twice as
    wide, half the programs (gate/up + SwiGLU 6.87 -> 6.70 us in one sweep run, 6.84 either way in another)."""
    widths = (64, 32) if prologue == _PLAIN else (128, 64, 32)
    min_programs = _MIN_PROGRAMS // 2 if prologue == _RMS and rows > 1 and k <= 1024 else _MIN_PROGRAMS
    block_n = next((b for b in widths if triton.cdiv(n, b) >= min_programs), 16)
    stages = 5 if prologue == _PLAIN and k > 1024 else 3
    if prologue == _PLAIN and k <= 2048 and rows == 1:
        return 16, 256, 2, 5
    if prologue == _RMS and k <= 1024 and rows == 1:
        return block_n, 256, 2, 3
    if prologue == _PLAIN and 1024 < k <= 2048:
        return block_n, 256, 2, 5
    return block_n, 256, 4, stages


def _rows_arg(name: str, t: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Check a [M, width] activation (M <= MAX_ROWS) and give it a contiguous last dimension."""
    want = f"[M, {width if width is not None else 'K'}] with M <= {MAX_ROWS}"
    if t.dim() != 2 or t.shape[0] > MAX_ROWS or (width is not None and t.shape[1] != width):
        raise ValueError(f"{name} must be {want}; got shape {tuple(t.shape)}")
    if t.dtype not in _DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16; got {t.dtype}")
    return t if t.stride(-1) == 1 else t.contiguous()


def _weight_arg(name: str, weight: torch.Tensor, k: int, dtype: torch.dtype) -> None:
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"{name} must be [N, {k}] (nn.Linear layout); got shape {tuple(weight.shape)}")
    if weight.dtype != dtype:
        raise ValueError(f"{name} must have the activations' dtype {dtype}; got {weight.dtype}")
    if weight.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension; got strides {weight.stride()}")


def _vector_arg(name: str, v: torch.Tensor | None, n: int) -> None:
    if v is not None and tuple(v.shape) != (n,):
        raise ValueError(f"{name} must be [{n}]; got shape {tuple(v.shape)}")


def _launch(prologue, x, weight, bias=None, residual=None, norm_weight=None, eps=0.0, tile=None, swiglu=False,
            rope=None):
    """Run the kernel on checked arguments -> (y [M, N], new_residual [M, K] or None). K is weight.shape[1];
    N is weight.shape[0], or half of it with ``swiglu`` (y = silu(gate) * up). ``rope``: a dict of the fused
    qkv epilogue's arguments (add_rms_norm_qkv_rope); y is then q_rot [M, H, D]."""
    m, (n, k) = x.shape[0], weight.shape
    epilogue = _ROPE if rope is not None else _SWIGLU if swiglu else _STORE
    out_n = n // 2 if swiglu else n
    if rope is not None:
        y = torch.empty((m, rope["num_heads"], rope["head_dim"]), dtype=x.dtype, device=x.device)
    else:
        y = torch.empty((m, out_n), dtype=x.dtype, device=x.device)
    new_res = torch.empty((m, k), dtype=x.dtype, device=x.device) if residual is not None else None
    if m == 0:
        return y, new_res
    rows = 1 if m == 1 else MAX_ROWS
    block_n, block_k, num_warps, num_stages = tile or tile_for(n, k, prologue, rows)
    if epilogue == _SWIGLU:  # each program computes BLOCK_N columns of the gate and of the up projection
        block_n = max(16, block_n // 2)
    if epilogue == _ROPE:  # 16 columns of a head's first half and 16 of its second
        block_n = 16
        grid = n // 32
    else:
        grid = triton.cdiv(out_n, block_n)
    r = rope or {}
    kc = r.get("k_cache", y)
    use_pdl = pdl.enabled(x.device) and weight.numel() * weight.element_size() <= pdl.SMALL_WEIGHT_BYTES
    _small_m_linear_kernel[(grid,)](
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else x, weight,
        bias if bias is not None else weight, y, new_res if new_res is not None else y,
        m, out_n, x.stride(0), residual.stride(0) if residual is not None else 0, weight.stride(0), eps,
        r.get("positions", y), r.get("cos_sin_cache", y), r.get("slot_mapping", y), kc, r.get("v_cache", y),
        r["cos_sin_cache"].stride(0) if rope else 0, kc.stride(0) if rope else 0, kc.stride(1) if rope else 0,
        kc.stride(2) if rope else 0,
        K=k, PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, EPILOGUE=epilogue,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", ROWS=rows, BLOCK_N=block_n,
        BLOCK_K=block_k, LOG2_BLOCK_K=block_k.bit_length() - 1, HEAD_DIM=r.get("head_dim", 0),
        NUM_HEADS=r.get("num_heads", 0), NUM_KV_HEADS=r.get("num_kv_heads", 0), PAGE=kc.shape[1] if rope else 0,
        PDL=use_pdl, PF_LINES=pdl.prefetch_lines(k, weight.element_size()), num_warps=num_warps,
        num_stages=num_stages, launch_pdl=use_pdl,
    )
    return y, new_res


def linear_small_m(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # x: [M, K], M <= MAX_ROWS (rows may be strided); weight: [N, K]; bias: [N] | None -> new [M, N] in x.dtype
    x = _rows_arg("x", x)
    _weight_arg("weight", weight, x.shape[1], x.dtype)
    _vector_arg("bias", bias, weight.shape[0])
    return _launch(_PLAIN, x, weight, bias)[0]


def _norm_linear_args(x, residual, norm_weight, weight, bias) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check the arguments of a fused RMSNorm + projection -> (x, residual) with contiguous last dimensions."""
    x = _rows_arg("x", x)
    m, k = x.shape
    if residual is not None:
        residual = _rows_arg("residual", residual, k)
        if residual.shape[0] != m or residual.dtype != x.dtype:
            raise ValueError(f"residual must match x ({tuple(x.shape)}, {x.dtype}); "
                             f"got {tuple(residual.shape)}, {residual.dtype}")
    _vector_arg("norm_weight", norm_weight, k)
    if norm_weight.dtype != x.dtype:
        raise ValueError(f"norm_weight must have x's dtype {x.dtype}; got {norm_weight.dtype}")
    _weight_arg("weight", weight, k, x.dtype)
    _vector_arg("bias", bias, weight.shape[0])
    return x, residual


def add_rms_norm_linear(
    x: torch.Tensor,  # [M, K], M <= MAX_ROWS
    residual: torch.Tensor | None,  # [M, K] or None (plain rms_norm)
    norm_weight: torch.Tensor,  # [K]
    eps: float,
    weight: torch.Tensor,  # [N, K]
    bias: torch.Tensor | None = None,  # [N]
    swiglu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (y = linear(rms_norm(x + residual)) [M, N], new_residual = x + residual [M, K] or None), in one
    kernel, with the roundings of triton_fused.fused_add_rms_norm (or rms_norm) + linear_small_m; the sum of
    squares is added in another order, so a normalized value can differ from that pair's in the last bit.
    ``swiglu``: weight is a fused [gate; up] projection [2 * I, K] and y is triton_fused.silu_and_mul of the
    linear, [M, I] (each program computes matching columns of both halves: no [M, 2 * I] round trip, no
    second kernel)."""
    x, residual = _norm_linear_args(x, residual, norm_weight, weight, bias)
    if swiglu and weight.shape[0] % 2:
        raise ValueError(f"swiglu needs a [gate; up] weight with an even number of rows; got {weight.shape[0]}")
    return _launch(_RMS, x, weight, bias, residual, norm_weight, eps, swiglu=swiglu)


def rope_epilogue_fits(head_dim: int) -> bool:
    """Whether ``add_rms_norm_qkv_rope`` takes this head size: each program owns 16 columns of a head's first half
    and their partners in the second, so D / 2 must be a multiple of 16."""
    return head_dim % 32 == 0


def add_rms_norm_qkv_rope(
    x: torch.Tensor,  # [M, K], M <= MAX_ROWS
    residual: torch.Tensor | None,  # [M, K] or None
    norm_weight: torch.Tensor,  # [K]
    eps: float,
    weight: torch.Tensor,  # [(H + 2 * KVH) * D, K]: q, k, v projections, head after head
    bias: torch.Tensor | None,  # [(H + 2 * KVH) * D]
    positions: torch.Tensor,  # [M] int
    cos_sin_cache: torch.Tensor,  # [max_pos, D] fp32: cos half | sin half
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    slot_mapping: torch.Tensor,  # [M] int64, cache slot per row (< 0: not written)
    num_heads: int,
    num_kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (q_rot [M, H, D], new_residual): ``add_rms_norm_linear`` of the fused qkv projection followed by
    ``triton_fused.rope_and_write_kv`` (same roundings), in one kernel: each program computes 16 columns of one
    head's first half and the 16 they rotate with in its second half, rotates q and k, writes q_rot and puts k
    and v in their cache slots. Needs D / 2 to be a multiple of 16."""
    x, residual = _norm_linear_args(x, residual, norm_weight, weight, bias)
    m = x.shape[0]
    heads = num_heads + 2 * num_kv_heads
    head_dim = weight.shape[0] // heads
    if weight.shape[0] != heads * head_dim or not rope_epilogue_fits(head_dim):
        raise ValueError(f"weight must have (num_heads + 2 * num_kv_heads) * head_dim rows with head_dim a multiple "
                         f"of 32; got {weight.shape[0]} rows for {num_heads} + 2 * {num_kv_heads} heads")
    want_cache = (num_kv_heads, head_dim)
    if k_cache.dim() != 4 or tuple(k_cache.shape[2:]) != want_cache or k_cache.stride() != v_cache.stride() or \
            k_cache.stride(-1) != 1:
        raise ValueError(f"k_cache / v_cache must be [blocks, block_size, {num_kv_heads}, {head_dim}] with one layout "
                         f"and a contiguous last dimension; got {tuple(k_cache.shape)}, strides {k_cache.stride()}")
    if tuple(cos_sin_cache.shape[1:]) != (head_dim,) or cos_sin_cache.stride(-1) != 1:
        raise ValueError(f"cos_sin_cache must be [max_pos, {head_dim}]; got {tuple(cos_sin_cache.shape)}")
    if positions.shape != (m,) or slot_mapping.shape != (m,):
        raise ValueError(f"positions and slot_mapping must be [{m}]; got {tuple(positions.shape)}, "
                         f"{tuple(slot_mapping.shape)}")
    rope = dict(positions=positions, cos_sin_cache=cos_sin_cache, slot_mapping=slot_mapping, k_cache=k_cache,
                v_cache=v_cache, head_dim=head_dim, num_heads=num_heads, num_kv_heads=num_kv_heads)
    return _launch(_RMS, x, weight, bias, residual, norm_weight, eps, rope=rope)
