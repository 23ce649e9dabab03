"""The collectives a sharded model runs inside its forward (one object per process, set on the model by
``LlamaForCausalLM.use_tensor_parallel``): sum of row-parallel outputs, vocabulary-parallel embedding,
and the LM head's logits gathered to rank 0. A model without it (TP = 1) runs none of these."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import functional as F


class TensorParallel:
    def __init__(self, rank: int, world_size: int, vocab_size: int, vocab_shard: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.vocab_size = vocab_size  # the model's, before padding
        self.vocab_start = rank * vocab_shard
        self.vocab_shard = vocab_shard  # rows of the embedding / LM head on each rank

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden] partial sums -> full, in place
        dist.all_reduce(x)
        return x

    def embed(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """ids [T] -> [T, hidden]: each rank looks up the ids in its rows (zeros elsewhere), then a sum."""
        local = ids - self.vocab_start
        inside = (local >= 0) & (local < self.vocab_shard)  # [T]
        x = F.embedding(local.clamp(0, self.vocab_shard - 1), weight) * inside[:, None].to(weight.dtype)
        return self.all_reduce(x)

    def gather_logits(self, local: torch.Tensor) -> torch.Tensor | None:
        """[n, vocab_shard] on every rank -> [n, vocab] on rank 0 (None elsewhere)."""
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(local, parts, dst=0)
        if self.rank != 0:
            return None
        return torch.cat(parts, dim=1)[:, : self.vocab_size]
