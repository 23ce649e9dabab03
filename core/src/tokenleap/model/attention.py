"""Attention over the paged KV cache, and the per-step metadata that describes the flat batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenleap.kernels.attention_ref import attention_plan, paged_attention_ref


@dataclass
class AttentionMetadata:
    """Describes one step's flat batch of new tokens to every attention layer.

    num_tokens = sum(query_lens_host); num_reqs = len(query_lens_host).
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64, cache slot (block * block_size + offset) per token
    block_tables: torch.Tensor  # [num_reqs, max_blocks_per_req] int32
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32, cu_seqlens of the new tokens
    seq_lens: torch.Tensor  # [num_reqs] int32, context length including this step's tokens
    query_lens_host: list[int]  # [num_reqs] the same lengths as host ints (no device sync needed)
    seq_lens_host: list[int]  # [num_reqs]
    max_query_len: int
    max_seq_len: int  # an upper bound on seq_lens fixed per engine (max_model_len): it sets the KV splits
    backend: str = "torch"  # "torch" (reference, CPU and CUDA), "triton" (CUDA) or "cpu" (CPU, bfloat16)
    # the torch / cpu attention's index tensors and masks, built by the step's first attention layer for the others
    ref_plans: dict = field(default_factory=dict, repr=False, compare=False)


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    if meta.backend == "triton":
        from tokenleap.kernels.triton_attention import paged_attention_triton

        return paged_attention_triton(
            query, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens,
            meta.max_query_len, scale, sliding_window, max_seq_len=meta.max_seq_len,
        )
    if meta.backend == "cpu":
        from tokenleap.kernels.cpu_attention import cpu_plan, paged_attention_cpu

        key = ("cpu", k_cache.shape[1], sliding_window)
        plan = meta.ref_plans.get(key)
        if plan is None:
            plan = meta.ref_plans[key] = cpu_plan(meta.block_tables, meta.query_lens_host, meta.seq_lens_host,
                                                  k_cache.shape[1], sliding_window)
        return paged_attention_cpu(query, k_cache, v_cache, plan, scale)
    key = (query.shape[0], query.shape[1], k_cache.shape[1], sliding_window)
    plan = meta.ref_plans.get(key)
    if plan is None:
        plan = meta.ref_plans[key] = attention_plan(
            query.shape[0], meta.block_tables, meta.query_lens_host, meta.seq_lens_host, k_cache.shape[1],
            query.shape[1], sliding_window,
        )
    return paged_attention_ref(
        query, k_cache, v_cache, meta.block_tables, meta.query_lens_host, meta.seq_lens_host,
        scale, sliding_window, plan=plan,
    )
