"""Rank 0's sharded models, called exactly like whole models: before its own shard runs, each broadcasts the
command (the step, the rows whose logits are wanted, the ids to embed) with the model it is for, so that every
worker runs the same computation on its shard of that model; the vocabulary-parallel logits are gathered."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenleap_plugins import TargetHandles

from tokenleap.distributed import protocol
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM


class TensorParallelModel:
    def __init__(self, shard: LlamaForCausalLM, arch: ModelArchConfig, group, model: int = protocol.TARGET) -> None:
        self.shard = shard  # rank 0's shard (its cfg is the shard's)
        self.cfg = arch  # the whole model's: vocab_size is what the runner samples over
        self.group = group  # launcher.TensorParallelGroup
        self.model_id = model  # protocol.TARGET or protocol.DRAFT: which of the workers' models runs

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: Sequence[KVCache],
                 meta: AttentionMetadata, hidden_state_layers: Sequence[int] = ()):
        with self.group.collective():
            protocol.send_forward(input_ids, positions, meta, self.model_id)
            return self.shard(input_ids, positions, kv_caches, meta, hidden_state_layers)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab] fp32
        return self.raw_logits(hidden).float()

    def raw_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab]
        with self.group.collective():
            protocol.send_hidden(hidden, self.model_id)
            return self.shard.tp.gather_logits(self.shard.raw_logits(hidden))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:  # [n] int64 -> [n, hidden] in the model's dtype
        """The whole embedding rows: each rank looks up its vocabulary slice, an all-reduce sums them."""
        with self.group.collective():
            protocol.send_ids(ids, self.model_id)
            return self.shard.tp.embed(ids, self.shard.embed_tokens.weight)

    def __getattr__(self, name: str):  # layers, final_norm, ... of rank 0's shard
        if name == "shard":
            raise AttributeError(name)
        return getattr(self.shard, name)


def tensor_parallel_handles(model: TensorParallelModel, tokenizer) -> TargetHandles:
    """The target's handles for proposers under tensor parallelism: embedding and LM head run on every rank (each
    holds a vocabulary slice), the final norm (replicated) on rank 0; no weight tensors to share."""
    return TargetHandles(
        embed=model.embed, compute_logits=model.compute_logits,
        final_norm=lambda h: model.shard.final_norm(h, torch.zeros_like(h)),
        embedding_weight=None, lm_head_weight=None, tokenizer=tokenizer,
    )
