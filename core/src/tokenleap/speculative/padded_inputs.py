"""Host inputs of a proposer's first forward of a step (the catch-up over the rows the target kept, whose last row
gives the first draft) padded to a fixed shape for a captured graph: ``bucket`` requests of ``q`` query rows each.
Method-agnostic: a run is the tokens fed at consecutive positions of one request (draft_model: the tokens
themselves; EAGLE: the next tokens, with the target's hidden rows of those positions).

Request i owns rows ``i * q .. i * q + q - 1``; its run of ``n`` tokens takes the LAST ``n`` of them, the padding
the first ``q - n``. Its sequence length stays the real one, ``start + n``, so the attention (which puts query
``j`` of a request at ``seq_len - q + j``) puts the real tokens at their own positions ``start ..`` and the padding
queries at the ``q - n`` positions just before them, and sees exactly the keys it sees unpadded:

- a real row attends to the positions up to its own, all written before or by the rows before it, as unpadded:
  the padding rows do not write there (below), so their "positions" hold the request's real keys;
- padding rows feed token 0 at RoPE position 0 (and gather hidden row 0) and write their keys and values to the
  null slot (slot 0 of block 0, which no request owns, ``ProposerKVCache``), which no real row reads; they attend
  to real keys (finite, ignored);
- a padded request (past the runs) has ``q`` queries at positions ``0 .. q - 1`` over an all-null block table.

The layout needs ``start + n >= q`` for every run (no padding query before position 0); ``padded_bucket`` sends
other steps (the first steps of a prompt shorter than ``q``) unpadded. Every row computes finite values, so the
null block stays finite (the torch attention multiplies masked keys' values by 0). With the sequence lengths
unchanged, the torch attention reduces over the same key lengths as unpadded: the padded forward gives the
unpadded forward's bits (``tests/test_draft_first_forward.py``, ``tests/test_eagle_first_forward.py``); on the GPU
the Triton kernels' query invariance does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class Run:
    """Tokens at positions ``start .. start + len(token_ids) - 1`` of one request."""

    token_ids: Sequence[int]
    start: int
    block_ids: Sequence[int]


class FirstInputs(NamedTuple):
    ids: np.ndarray  # [bucket * q] int64: request i's run at the end of rows i * q .. i * q + q - 1, padding token 0
    positions: np.ndarray  # [bucket * q] int64: RoPE positions; padding rows 0
    slots: np.ndarray  # [bucket * q] int64: cache slots; padding rows the null slot 0
    gather: np.ndarray  # [bucket * q] int64: rows of the target's hidden states each row reads; padding rows 0
    last_rows: np.ndarray  # [bucket] int64: row of drafting request a's last token (i * q + q - 1) at a; 0 after
    seq_lens: np.ndarray  # [bucket] int64: start + n (the real one); padded requests q
    query_start: np.ndarray  # [bucket + 1] int64: 0, q, 2q, ..
    tables: np.ndarray  # [bucket, width] int64: block tables, zero padded


FIELDS = FirstInputs._fields


def padded_bucket(runs: Sequence[Run], q: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds the runs when each has at most ``q`` tokens and ends at position ``q - 1`` or
    later; None otherwise (a prefill chunk, a context shorter than ``q``, too many requests): those steps run
    unpadded."""
    if not runs or any(len(r.token_ids) > q or r.start + len(r.token_ids) < q for r in runs):
        return None
    return next((b for b in buckets if b >= len(runs)), None)


def first_inputs(runs: Sequence[Run], drafting: Sequence[int], q: int, bucket: int, block_size: int, width: int,
                 hidden_rows: Sequence[int] | None = None) -> FirstInputs:
    """``runs`` (those ``padded_bucket`` accepts, block tables at most ``width`` long) padded to ``bucket`` requests
    of ``q`` rows; ``drafting``: indices into ``runs`` of those whose last token gives a draft; ``hidden_rows``: per
    run, the row of the target's hidden states its first token reads (its others the rows after it); None: all 0."""
    ids = np.zeros(bucket * q, dtype=np.int64)
    positions = np.zeros(bucket * q, dtype=np.int64)
    slots = np.zeros(bucket * q, dtype=np.int64)
    gather = np.zeros(bucket * q, dtype=np.int64)
    seq_lens = np.full(bucket, q, dtype=np.int64)
    tables = np.zeros((bucket, width), dtype=np.int64)
    for i, r in enumerate(runs):
        n = len(r.token_ids)
        o = i * q + q - n  # the run's first row
        pos = np.arange(r.start, r.start + n, dtype=np.int64)
        blocks = np.asarray(r.block_ids, dtype=np.int64)
        ids[o : o + n] = r.token_ids
        positions[o : o + n] = pos
        slots[o : o + n] = blocks[pos // block_size] * block_size + pos % block_size
        if hidden_rows is not None:
            gather[o : o + n] = np.arange(hidden_rows[i], hidden_rows[i] + n)
        seq_lens[i] = r.start + n
        tables[i, : len(r.block_ids)] = r.block_ids
    last_rows = np.zeros(bucket, dtype=np.int64)
    last_rows[: len(drafting)] = [i * q + q - 1 for i in drafting]
    query_start = np.arange(bucket + 1, dtype=np.int64) * q
    return FirstInputs(ids, positions, slots, gather, last_rows, seq_lens, query_start, tables)


def unpadded_last_rows(run_lengths: Sequence[int], drafting: Sequence[int]) -> list[int]:
    """Rows of the drafting runs' last tokens in the unpadded flat batch (runs one after the other)."""
    ends = np.cumsum(run_lengths)
    return [int(ends[i]) - 1 for i in drafting]


def packed(x: FirstInputs) -> np.ndarray:
    """The inputs as the one int64 array a step copies to the device: the fields in ``FIELDS`` order, flattened."""
    return np.concatenate([a.reshape(-1) for a in x])


def packed_sizes(bucket: int, q: int, width: int) -> list[int]:
    """Field lengths of ``packed``'s array, in ``FIELDS`` order."""
    n = bucket * q
    return [n, n, n, n, bucket, bucket, bucket + 1, bucket * width]
