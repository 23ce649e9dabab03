"""Torch references for the fused small ops, numerically the Hugging Face Llama semantics.

Each op rounds where HF rounds, so that the Triton versions (``triton_fused.py``) can be checked
against them and the engine's CPU path gives the same numbers as ``transformers``:

- RMSNorm (``LlamaRMSNorm``): normalize in fp32, cast back to the input dtype, THEN multiply by the
  weight (in the weight's dtype): ``weight * (x.float() * rsqrt(mean(x.float()**2) + eps)).to(dtype)``.
- Residual add (decoder layer): ``residual + x`` in the activation dtype, then RMSNorm of that sum.
- RoPE (``apply_rotary_pos_emb``, neox style ``rotate_half``): cos/sin are built in fp32, cast to
  the activation dtype, and ``q * cos + rotate_half(q) * sin`` is computed in the activation dtype.
- RoPE + KV write: the rotated keys and the values go to their paged-cache slots (``write_kv_ref``).
- SwiGLU (``LlamaMLP``): ``silu(gate) * up`` in the activation dtype.
- Embedding of a graphed step's tokens, where a request flagged to feed takes its token from the device
  (the previous step's argmax) instead of the staged id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenleap.kernels.attention_ref import write_kv_ref


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [..., hidden]; weight: [hidden] -> [..., hidden]
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # x, residual: [..., hidden] -> (normed [..., hidden], new_residual = x + residual [..., hidden])
    new_residual = residual + x
    return rms_norm_ref(new_residual, weight, eps), new_residual



def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [T, H, D]; cos, sin: [T, 1, D] in x.dtype. rotate_half(x) = cat(-x2, x1).
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos) + (rotated * sin)


def rotary_embedding_ref(
    positions: torch.Tensor,  # [T] int
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, KVH, D]
    cos_sin_cache: torch.Tensor,  # [max_pos, D]: cos half | sin half
) -> tuple[torch.Tensor, torch.Tensor]:  # new tensors (q_rot, k_rot); the inputs are not modified
    half = q.shape[-1] // 2
    cs = cos_sin_cache[positions.long()]  # [T, D]
    cos = torch.cat([cs[:, :half], cs[:, :half]], dim=-1)[:, None, :].to(q.dtype)  # [T, 1, D]
    sin = torch.cat([cs[:, half:], cs[:, half:]], dim=-1)[:, None, :].to(q.dtype)
    return _rotate(q, cos, sin), _rotate(k, cos.to(k.dtype), sin.to(k.dtype))


def rope_and_write_kv_ref(
    positions: torch.Tensor,  # [T] int
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,  # [T, KVH, D]
    cos_sin_cache: torch.Tensor,  # [max_pos, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [T] int64
) -> torch.Tensor:  # q_rot [T, H, D]; rotated k and v written to the cache
    q_rot, k_rot = rotary_embedding_ref(positions, q, k, cos_sin_cache)
    write_kv_ref(k_rot, v, k_cache, v_cache, slot_mapping)
    return q_rot


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    # x: [T, 2*I] (gate | up) -> [T, I]
    inter = x.shape[-1] // 2
    return F.silu(x[..., :inter]) * x[..., inter:]


def embed_fed_ref(
    weight: torch.Tensor,  # [vocab, hidden]
    ids: torch.Tensor,  # [b * q] int64
    feed: torch.Tensor | None = None,  # [b] int64: nonzero -> request i's first row takes fed[i]
    fed: torch.Tensor | None = None,  # [b] int64
) -> torch.Tensor:  # [b * q, hidden]
    tokens = ids
    if feed is not None:
        b = feed.shape[0]
        tokens = ids.clone().view(b, -1)
        tokens[:, 0] = torch.where(feed != 0, fed[:b], tokens[:, 0])
        tokens = tokens.view(-1)
    return weight[tokens]
