"""Fused small ops in Triton; references (HF Llama numerics) in ``fused_ref.py``.

All return NEW tensors and leave their inputs untouched (``rope_and_write_kv`` also writes the KV cache);
the allocation depends only on shapes, so they are safe inside CUDA-graph capture. Math is done in fp32 with
the HF roundings reproduced where cheap (the RMSNorm cast to the input dtype before the weight multiply; silu
output rounded before the multiply). RoPE computes ``x*cos + rotate_half(x)*sin`` in fp32 and rounds once,
where HF rounds after each op: at most a couple of ulps apart in bf16, identical in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tokenleap.kernels import triton_compat  # noqa: F401  (interpreter fixes, under TRITON_INTERPRET=1)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, new_res_ptr, stride_x, stride_r, eps,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)  # rounded like HF's add
        tl.store(new_res_ptr + row * N + cols, x, mask=mask)
    h = x.to(tl.float32)
    var = tl.sum(h * h, axis=0) / N
    h = (h * tl.rsqrt(var + eps)).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + cols, (w * h).to(out_ptr.dtype.element_ty), mask=mask)


def _rms(x, residual, weight, eps):
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    r2 = new_res = None
    if residual is not None:
        r2 = residual.reshape(-1, n)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        new_res = torch.empty_like(x2, memory_format=torch.contiguous_format)
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(x2.shape[0],)](
        x2, r2 if r2 is not None else x2, weight, out, new_res if new_res is not None else out,
        x2.stride(0), r2.stride(0) if r2 is not None else 0, eps,
        N=n, BLOCK=block, HAS_RESIDUAL=residual is not None, num_warps=min(16, max(1, block // 256)),
    )
    return out.view(x.shape), (new_res.view(x.shape) if new_res is not None else None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [..., hidden]; weight: [hidden] -> [..., hidden]
    return _rms(x, None, weight, eps)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # -> (normed = rms_norm(x + residual), new_residual = x + residual), both [..., hidden]
    return _rms(x, residual, weight, eps)


@triton.jit
def rotate_half_pair(x1, x2, cos, sin):
    """fp32 halves of x -> the halves of x * cos + rotate_half(x) * sin (rotate_half(x) = cat(-x2, x1)), fp32.
    Also the qkv projection's RoPE epilogue (``triton_linear``): one definition, the same bits."""
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


@triton.jit
def silu_times(g, u, DTYPE: tl.constexpr):
    """fp32 gate and up -> silu(gate), rounded to DTYPE as HF rounds silu's output, times up (fp32). Also the
    gate/up projection's SwiGLU epilogue (``triton_linear``): one definition, the same bits."""
    return (g / (1.0 + tl.exp(-g))).to(DTYPE).to(tl.float32) * u


@triton.jit
def _rope_rows(src, dst, src_stride_h, dst_stride_h, cos, sin,
               H: tl.constexpr, HALF: tl.constexpr, H_PAD: tl.constexpr, HALF_PAD: tl.constexpr):
    """Rotate the ``H`` head rows of one token from ``src`` into ``dst`` (pointers to the token's rows)."""
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, HALF_PAD)[None, :]
    mask = (h < H) & (d < HALF)
    x1 = tl.load(src + h * src_stride_h + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + h * src_stride_h + HALF + d, mask=mask, other=0.0).to(tl.float32)
    out = dst + h * dst_stride_h + d
    o1, o2 = rotate_half_pair(x1, x2, cos, sin)
    tl.store(out, o1.to(dst.dtype.element_ty), mask=mask)
    tl.store(out + HALF, o2.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _rope_write_kv_kernel(
    pos_ptr, q_ptr, k_ptr, v_ptr, cs_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cos,
    stride_cb, stride_cslot, stride_ch,
    H: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr,
    H_PAD: tl.constexpr, KVH_PAD: tl.constexpr, HALF_PAD: tl.constexpr, PAGE: tl.constexpr,
):
    """One program per token: q rotated into ``q_out``; k rotated and v copied straight to the token's cache
    slot (skipped for slots < 0), so RoPE and the KV write are one kernel."""
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF_PAD)[None, :]
    cmask = d < HALF
    # HF casts cos/sin to the activation dtype before using them.
    cos = tl.load(cs_ptr + pos * stride_cos + d, mask=cmask, other=0.0).to(q_ptr.dtype.element_ty)
    sin = tl.load(cs_ptr + pos * stride_cos + HALF + d, mask=cmask, other=0.0).to(q_ptr.dtype.element_ty)
    cos = cos.to(tl.float32)
    sin = sin.to(tl.float32)
    _rope_rows(q_ptr + t * stride_qt, q_out_ptr + t * (H * 2 * HALF), stride_qh, 2 * HALF, cos, sin,
               H, HALF, H_PAD, HALF_PAD)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        row = (slot // PAGE) * stride_cb + (slot % PAGE) * stride_cslot
        _rope_rows(k_ptr + t * stride_kt, k_cache_ptr + row, stride_kh, stride_ch, cos, sin,
                   KVH, HALF, KVH_PAD, HALF_PAD)
        h = tl.arange(0, KVH_PAD)[:, None]
        dv = tl.arange(0, 2 * HALF_PAD)[None, :]
        vmask = (h < KVH) & (dv < 2 * HALF)
        v = tl.load(v_ptr + t * stride_vt + h * stride_vh + dv, mask=vmask)
        tl.store(v_cache_ptr + row + h * stride_ch + dv, v.to(v_cache_ptr.dtype.element_ty), mask=vmask)


def rope_and_write_kv(
    positions: torch.Tensor,  # [T] int
    q: torch.Tensor,  # [T, H, D] (last dim contiguous; may be a view into a qkv buffer)
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,  # [T, KVH, D]
    cos_sin_cache: torch.Tensor,  # [max_pos, D]: cos half | sin half
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    slot_mapping: torch.Tensor,  # [T] int64, cache slot per token (< 0: not written)
) -> torch.Tensor:  # new contiguous q_rot [T, H, D]; rotated k and v written to their cache slots
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if any(x.stride(-1) != 1 for x in (q, k, v, cos_sin_cache)):
        raise ValueError("q, k, v and cos_sin_cache need a contiguous last dimension")
    if k_cache.stride() != v_cache.stride() or not k_cache.is_contiguous():
        raise ValueError("k_cache and v_cache must be contiguous with the same layout")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    half = head_dim // 2
    _rope_write_kv_kernel[(num_tokens,)](
        positions, q, k, v, cos_sin_cache, q_out, k_cache, v_cache, slot_mapping,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin_cache.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        H=num_heads, KVH=num_kv_heads, HALF=half, H_PAD=triton.next_power_of_2(num_heads),
        KVH_PAD=triton.next_power_of_2(num_kv_heads), HALF_PAD=triton.next_power_of_2(half),
        PAGE=k_cache.shape[1], num_warps=4,
    )
    return q_out


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, stride_x, INTER: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTER
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * stride_x + INTER + cols, mask=mask, other=0.0).to(tl.float32)
    out = silu_times(g, u, out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * INTER + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [T, 2*I] (gate | up) -> [T, I]
    inter = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], inter), dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(inter))
    if x2.shape[0] > 0:
        grid = (x2.shape[0], triton.cdiv(inter, block))
        _silu_mul_kernel[grid](x2, out, x2.stride(0), INTER=inter, BLOCK=block)
    return out.view(*x.shape[:-1], inter)


@triton.jit
def _embed_kernel(w_ptr, ids_ptr, feed_ptr, fed_ptr, out_ptr, stride_w, Q: tl.constexpr, HIDDEN: tl.constexpr,
                  BLOCK: tl.constexpr, HAS_FEED: tl.constexpr):
    t = tl.program_id(0)
    token = tl.load(ids_ptr + t)
    if HAS_FEED:
        if t % Q == 0:
            if tl.load(feed_ptr + t // Q) != 0:
                token = tl.load(fed_ptr + t // Q)
    cols = tl.arange(0, BLOCK)
    row = tl.load(w_ptr + token.to(tl.int64) * stride_w + cols, mask=cols < HIDDEN)
    tl.store(out_ptr + t.to(tl.int64) * HIDDEN + cols, row, mask=cols < HIDDEN)


def embed_fed(weight: torch.Tensor, ids: torch.Tensor, feed: torch.Tensor | None = None,
              fed: torch.Tensor | None = None) -> torch.Tensor:
    """``fused_ref.embed_fed_ref`` in one kernel (torch's index_select + where took three on a graphed step, and
    its gather of 16 rows cost 6 us on an H100)."""
    if weight.stride(-1) != 1 or ids.dim() != 1:
        raise ValueError("embed_fed needs a weight with a contiguous last dimension and 1-d ids")
    if (feed is None) != (fed is None) or (feed is not None and ids.shape[0] % feed.shape[0]):
        raise ValueError("embed_fed: feed and fed come together, one per request of ids.shape[0] / b rows")
    hidden = weight.shape[1]
    out = torch.empty((ids.shape[0], hidden), dtype=weight.dtype, device=weight.device)
    if ids.shape[0]:
        q = ids.shape[0] // feed.shape[0] if feed is not None else 1
        _embed_kernel[(ids.shape[0],)](weight, ids, feed if feed is not None else ids,
                                       fed if fed is not None else ids, out, weight.stride(0), Q=q, HIDDEN=hidden,
                                       BLOCK=triton.next_power_of_2(hidden), HAS_FEED=feed is not None)
    return out
