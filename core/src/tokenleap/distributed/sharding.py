"""How a Llama-family model is split over ``tp`` ranks, as pure functions on the architecture and on
Hugging Face-named tensors.

Column-parallel (output rows split): q/k/v by heads, gate and up by columns (each split on its own, then
fused by ``load_hf_weights``), the embedding and LM head by vocabulary rows. Row-parallel (input columns
split, outputs summed by an all-reduce): o_proj and down_proj. Norms are replicated. A rank's shard is
the same ``LlamaForCausalLM`` built from ``shard_arch``: fewer heads, a slice of the MLP and the vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from tokenleap.model.arch import ModelArchConfig


def check_divisible(arch: ModelArchConfig, tp: int, setting: str = "tensor_parallel_size",
                    whose: str = "the model's", where: str = "") -> None:
    """Raise naming the first dimension ``tp`` ranks cannot share (before any process starts). ``setting``,
    ``whose`` and ``where`` word the message for a draft model (``speculative_config.draft_tensor_parallel_size``,
    "the draft's", which checkpoint)."""
    heads, kv, inter = arch.num_attention_heads, arch.num_key_value_heads, arch.intermediate_size
    if heads % tp:
        raise ValueError(f"{setting}={tp} must divide {whose} num_attention_heads={heads}{where}")
    if kv % tp and tp % kv:
        raise ValueError(
            f"{setting}={tp} and {whose} num_key_value_heads={kv}: one must divide the other "
            f"(KV heads are split when tp divides them, replicated when they divide tp){where}")
    if inter % tp:
        raise ValueError(f"{setting}={tp} must divide {whose} intermediate_size={inter}{where}")


def vocab_shard_size(vocab_size: int, tp: int) -> int:
    """Rows of the embedding / LM head per rank; the last rank's tail is padded with zero rows."""
    return -(-vocab_size // tp)


def shard_arch(arch: ModelArchConfig, tp: int) -> ModelArchConfig:
    """The architecture one rank runs: its heads, KV heads (at least one, replicated past their count),
    MLP columns and vocabulary rows. head_dim stays the model's."""
    return dataclasses.replace(
        arch,
        num_attention_heads=arch.num_attention_heads // tp,
        num_key_value_heads=max(1, arch.num_key_value_heads // tp),
        intermediate_size=arch.intermediate_size // tp,
        vocab_size=vocab_shard_size(arch.vocab_size, tp),
    )


def kv_head_range(arch: ModelArchConfig, rank: int, tp: int) -> tuple[int, int]:
    """The KV heads rank ``rank`` holds: its ``kv // tp`` heads, or (tp > kv) the one head its query heads
    use, shared with the ``tp // kv`` ranks around it."""
    kv = arch.num_key_value_heads
    if kv >= tp:
        n = kv // tp
        return rank * n, (rank + 1) * n
    head = rank // (tp // kv)
    return head, head + 1


def shard_weights(weights: dict[str, Any], arch: ModelArchConfig, rank: int, tp: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s slice of every HF-named tensor (same names, shard shapes). The values may be tensors or
    safetensors' lazy slices (indexed the same way; only the indexed part is read)."""
    d = arch.head_dim
    q = arch.num_attention_heads // tp
    kv_lo, kv_hi = kv_head_range(arch, rank, tp)
    inter = arch.intermediate_size // tp
    vocab = vocab_shard_size(arch.vocab_size, tp)
    out: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            out[name] = w[rank * q * d : (rank + 1) * q * d]
        elif name.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")):
            out[name] = w[kv_lo * d : kv_hi * d]
        elif name.endswith("o_proj.weight"):  # [hidden, heads * d]: the columns of this rank's heads
            out[name] = w[:, rank * q * d : (rank + 1) * q * d]
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            out[name] = w[rank * inter : (rank + 1) * inter]
        elif name.endswith("down_proj.weight"):  # [hidden, intermediate]
            out[name] = w[:, rank * inter : (rank + 1) * inter]
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = w[rank * vocab : (rank + 1) * vocab]
            if rows.shape[0] < vocab:  # the last rank's padding: zero rows, never looked up, logits trimmed
                rows = torch.cat([rows, rows.new_zeros(vocab - rows.shape[0], rows.shape[1])])
            out[name] = rows
        else:  # norms: replicated
            out[name] = w[:]
    return {name: t.contiguous() for name, t in out.items()}
