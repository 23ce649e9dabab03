"""One forward of a model over runs of consecutive positions of several requests, on a paged KV cache that
shares the engine's block tables. Each run writes its keys and values at its positions' slots and attends to
everything before it in its request."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM
from tokenleap.speculative.padded_inputs import Run

__all__ = ["Run", "paged_forward"]


def paged_forward(model: LlamaForCausalLM, kv_caches: Sequence[KVCache], runs: Sequence[Run], block_size: int,
                  max_seq_len: int, backend: str, device: torch.device) -> torch.Tensor:
    """Final-norm hidden states [sum of run lengths, hidden], run after run."""
    width = max(len(r.block_ids) for r in runs)
    tables = np.zeros((len(runs), width), dtype=np.int32)
    ids, positions, slots, query_lens, seq_lens = [], [], [], [], []
    for i, r in enumerate(runs):
        n = len(r.token_ids)
        pos = np.arange(r.start, r.start + n, dtype=np.int64)
        blocks = np.asarray(r.block_ids, dtype=np.int64)
        ids.extend(r.token_ids)
        positions.append(pos)
        slots.append(blocks[pos // block_size] * block_size + pos % block_size)
        tables[i, : len(r.block_ids)] = r.block_ids
        query_lens.append(n)
        seq_lens.append(r.start + n)

    def dev(a, dtype):
        return torch.as_tensor(np.asarray(a), dtype=dtype).to(device)

    meta = AttentionMetadata(
        slot_mapping=dev(np.concatenate(slots), torch.int64), block_tables=dev(tables, torch.int32),
        query_start_loc=dev(np.cumsum([0] + query_lens), torch.int32), seq_lens=dev(seq_lens, torch.int32),
        query_lens_host=query_lens, seq_lens_host=seq_lens, max_query_len=max(query_lens), max_seq_len=max_seq_len,
        backend=backend,
    )
    hidden, _ = model(dev(ids, torch.int64), dev(np.concatenate(positions), torch.int64), kv_caches, meta)
    return hidden
