"""Host inputs of the draft's first forward (catch-up + first draft) padded to a fixed shape for a captured graph:
``bucket`` requests of ``q`` query rows each.

Request i owns rows ``i * q .. i * q + q - 1``; its run of ``n`` tokens takes the LAST ``n`` of them, the padding
the first ``q - n``. Its sequence length stays the real one, ``start + n``, so the attention (which puts query
``j`` of a request at ``seq_len - q + j``) puts the real tokens at their own positions ``start ..`` and the padding
queries at the ``q - n`` positions just before them, and sees exactly the keys it sees unpadded:

- a real row attends to the positions up to its own, all written before or by the rows before it, as unpadded:
  the padding rows do not write there (below), so their "positions" hold the request's real keys;
- padding rows feed token 0 at RoPE position 0 and write their keys and values to the null slot (slot 0 of block
  0, which no request owns, ``ProposerKVCache``), which no real row reads; they attend to real keys (finite,
  ignored);
- a padded request (past the runs) has ``q`` queries at positions ``0 .. q - 1`` over an all-null block table.

The layout needs ``start + n >= q`` for every run (no padding query before position 0); ``padded_bucket`` sends
other steps (the first steps of a prompt shorter than ``q``) unpadded. Every row computes finite values, so the
null block stays finite (the torch attention multiplies masked keys' values by 0). With the sequence lengths
unchanged, the torch attention reduces over the same key lengths as unpadded: the padded forward gives the
unpadded forward's bits (``tests/test_draft_first_forward.py``); on the GPU the Triton kernels' query invariance
does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from tokenleap_draft.forward import Run


class FirstInputs(NamedTuple):
    ids: np.ndarray  # [bucket * q] int64: request i's run at the end of rows i * q .. i * q + q - 1, padding token 0
    positions: np.ndarray  # [bucket * q] int64: RoPE positions; padding rows 0
    slots: np.ndarray  # [bucket * q] int64: cache slots; padding rows the null slot 0
    seq_lens: np.ndarray  # [bucket] int32: start + n (the real one); padded requests q
    query_start: np.ndarray  # [bucket + 1] int32: 0, q, 2q, ..
    tables: np.ndarray  # [bucket, width] int32: block tables, zero padded
    last_rows: np.ndarray  # [bucket] int64: row of drafting request a's last token (i * q + q - 1) at a; 0 after


def padded_bucket(runs: Sequence[Run], q: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds the runs when each has at most ``q`` tokens and ends at position ``q - 1`` or
    later; None otherwise (a prefill chunk, a context shorter than ``q``, too many requests): those steps run
    unpadded."""
    if not runs or any(len(r.token_ids) > q or r.start + len(r.token_ids) < q for r in runs):
        return None
    return next((b for b in buckets if b >= len(runs)), None)


def first_inputs(runs: Sequence[Run], drafting: Sequence[int], q: int, bucket: int, block_size: int,
                 width: int) -> FirstInputs:
    """``runs`` (those ``padded_bucket`` accepts, block tables at most ``width`` long) padded to ``bucket`` requests
    of ``q`` rows; ``drafting``: indices into ``runs`` of those whose last token gives a draft."""
    ids = np.zeros(bucket * q, dtype=np.int64)
    positions = np.zeros(bucket * q, dtype=np.int64)
    slots = np.zeros(bucket * q, dtype=np.int64)
    seq_lens = np.full(bucket, q, dtype=np.int32)
    tables = np.zeros((bucket, width), dtype=np.int32)
    for i, r in enumerate(runs):
        n = len(r.token_ids)
        o = i * q + q - n  # the run's first row
        pos = np.arange(r.start, r.start + n, dtype=np.int64)
        blocks = np.asarray(r.block_ids, dtype=np.int64)
        ids[o : o + n] = r.token_ids
        positions[o : o + n] = pos
        slots[o : o + n] = blocks[pos // block_size] * block_size + pos % block_size
        seq_lens[i] = r.start + n
        tables[i, : len(r.block_ids)] = r.block_ids
    last_rows = np.zeros(bucket, dtype=np.int64)
    last_rows[: len(drafting)] = [i * q + q - 1 for i in drafting]
    query_start = (np.arange(bucket + 1) * q).astype(np.int32)
    return FirstInputs(ids, positions, slots, seq_lens, query_start, tables, last_rows)


def unpadded_last_rows(run_lengths: Sequence[int], drafting: Sequence[int]) -> list[int]:
    """Rows of the drafting runs' last tokens in the unpadded flat batch (runs one after the other)."""
    ends = np.cumsum(run_lengths)
    return [int(ends[i]) - 1 for i in drafting]


def packed(x: FirstInputs) -> tuple[np.ndarray, np.ndarray]:
    """The inputs as the two arrays one step copies to the device: int64 [3 * bucket * q + bucket] (ids, positions,
    slots, last_rows) and int32 [bucket + (bucket + 1) + bucket * width] (seq_lens, query_start, tables)."""
    return (np.concatenate([x.ids, x.positions, x.slots, x.last_rows]),
            np.concatenate([x.seq_lens, x.query_start, x.tables.reshape(-1)]))


def packed_sizes(bucket: int, q: int, width: int) -> tuple[list[int], list[int]]:
    """Field lengths of ``packed``'s two arrays, in order: ([ids, positions, slots, last_rows], [seq_lens,
    query_start, tables])."""
    n = bucket * q
    return [n, n, n, bucket], [bucket, bucket + 1, bucket * width]
