"""Rank 0's sharded model, called by the model runner exactly like the whole model: before its own shard
runs, it broadcasts the step (or the rows whose logits are wanted) so that every worker runs the same
forward, and it gathers the vocabulary-parallel logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tokenleap.distributed import protocol
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM


class TensorParallelModel:
    def __init__(self, shard: LlamaForCausalLM, arch: ModelArchConfig, group) -> None:
        self.shard = shard  # rank 0's shard (its cfg is the shard's)
        self.cfg = arch  # the whole model's: vocab_size is what the runner samples over
        self.group = group  # launcher.TensorParallelGroup

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: Sequence[KVCache],
                 meta: AttentionMetadata, hidden_state_layers: Sequence[int] = ()):
        with self.group.collective():
            protocol.send_forward(input_ids, positions, meta)
            return self.shard(input_ids, positions, kv_caches, meta, hidden_state_layers)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab] fp32
        return self.raw_logits(hidden).float()

    def raw_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab]
        with self.group.collective():
            protocol.send_hidden(hidden)
            return self.shard.tp.gather_logits(self.shard.raw_logits(hidden))

    def __getattr__(self, name: str):  # embed_tokens, layers, ... of rank 0's shard
        if name == "shard":
            raise AttributeError(name)
        return getattr(self.shard, name)
