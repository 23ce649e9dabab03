"""Host inputs of a proposer's greedy chain: after the first draft of a step, one-token forwards that each feed the
previous draft, padded to a bucket of rows for a captured graph. Method-agnostic (draft_model's model, an EAGLE
head): a row is (n, block_ids, d) with n the positions already written for the request (its last computed
position + 1) and d the drafts it wants; rows that need no more drafts, and padding rows, write the null slot
(slot 0 of block 0, which no request owns) at position 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def chain_inputs(rows: Sequence[tuple[int, Sequence[int], int]], steps: int, bucket: int, block_size: int,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Host inputs of the chain's ``steps`` forwards for ``rows`` = (n, block_ids, drafts wanted d).

    Step s (0-based) feeds draft s + 1 at position n + s and gives draft s + 2, wanted while s + 2 <= d. Returns
    positions [steps, bucket] int64, slots [steps, bucket] int64, seq_lens [steps, bucket] int32 and block tables
    [bucket, width] int32 (width: the widest row's block count)."""
    width = max(max(len(b) for _, b, _ in rows), 1)
    tables = np.zeros((bucket, width), dtype=np.int32)
    positions = np.zeros((steps, bucket), dtype=np.int64)
    slots = np.zeros((steps, bucket), dtype=np.int64)  # padding and finished rows: the null slot
    seq_lens = np.ones((steps, bucket), dtype=np.int32)
    for i, (n, blocks, d) in enumerate(rows):
        tables[i, : len(blocks)] = blocks
        for s in range(min(steps, d - 1)):
            p = n + s
            positions[s, i] = p
            slots[s, i] = blocks[p // block_size] * block_size + p % block_size
            seq_lens[s, i] = p + 1
    return positions, slots, seq_lens, tables
