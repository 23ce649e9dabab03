"""The draft_model proposer's first forward (catch-up + first draft) padded for a captured graph
(tokenleap/speculative/padded_inputs.py, padded_forward.py; tokenleap_draft/first_forward.py): the host index
maths by hand, and the padded forward (which is what runs on CPU, eagerly, where CUDA replays a graph) against the
unpadded one on the same inputs: the same bits of first-draft logits and of every key and value a request owns,
only the runs' slots written, and the same greedy and sampled drafts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenleap.speculative.padded_inputs import (
    FIELDS,
    Run,
    first_inputs,
    packed,
    packed_sizes,
    padded_bucket,
    unpadded_last_rows,
)
from tokenleap_draft.chain import BUCKETS
from tokenleap_plugins import SamplingInfo

from tests.helpers.draft_proposer import decode_batch, make_draft_proposer, random_kv

pytestmark = pytest.mark.usefixtures("torch_one_thread")

K = 5
# (drafts wanted, tokens the verify step kept) per request: batch 1 with nothing / everything accepted (runs of
# 2 and k + 2 = 7 tokens), 3 requests (bucket 4), 9 among non-drafted ones (bucket 16)
BATCHES = [([5], [1]), ([5], [6]), ([5, 1, 3], [2, 6, 3]), ([5, 0, 2, 1, 0, 5, 3, 0, 4], [1, 2, 3, 4, 5, 6, 1, 2, 3])]


def test_first_inputs_by_hand():
    runs = [Run([11, 12], 5, [3, 7]), Run([21], 2, [4]), Run([31, 32, 33], 9, [1, 2, 6])]
    x = first_inputs(runs, drafting=[0, 2], q=3, bucket=4, block_size=4, width=3)
    # request i owns rows 3i .. 3i + 2, its run at their end: run 0 at positions 5, 6 (block 7: slots 29, 30); run 1
    # at 2 (block 4: slot 18), not drafting; run 2 at 9..11 (block 6: slots 25..27); request 3 is padding; padding
    # rows feed token 0 at position 0 into the null slot 0
    assert x.ids.tolist() == [0, 11, 12, 0, 0, 21, 31, 32, 33, 0, 0, 0]
    assert x.positions.tolist() == [0, 5, 6, 0, 0, 2, 9, 10, 11, 0, 0, 0]
    assert x.slots.tolist() == [0, 29, 30, 0, 0, 18, 25, 26, 27, 0, 0, 0]
    # the real lengths: the attention puts query j of request i at seq_len - 3 + j, so request 0's padding query at
    # 4 and its run at 5, 6; request 1's padding at 0, 1 and its run at 2; request 3's queries at 0..2
    assert x.seq_lens.tolist() == [7, 3, 12, 3]
    assert x.query_start.tolist() == [0, 3, 6, 9, 12]
    assert x.tables.tolist() == [[3, 7, 0], [4, 0, 0], [1, 2, 6], [0, 0, 0]]
    assert x.last_rows.tolist() == [2, 8, 0, 0]  # drafting runs 0 and 2: the last rows of theirs
    assert x.gather.tolist() == [0] * 12  # no hidden rows given
    assert [a.dtype for a in x] == [np.int64] * len(FIELDS)
    # hidden rows (EAGLE): run i's tokens read rows hidden_rows[i] .. at their own rows, padding row 0
    x = first_inputs(runs, drafting=[0, 2], q=3, bucket=4, block_size=4, width=3, hidden_rows=[0, 2, 3])
    assert x.gather.tolist() == [0, 0, 1, 0, 0, 2, 3, 4, 5, 0, 0, 0]


def test_padded_bucket_and_unpadded_rows():
    def runs(*spans):  # (start, tokens)
        return [Run([5] * n, start, [1]) for start, n in spans]

    assert padded_bucket(runs((5, 2), (2, 1), (9, 3)), 3, BUCKETS) == 4
    assert padded_bucket(runs((20, 7)), 7, BUCKETS) == 1
    assert padded_bucket(runs((20, 2), (0, 8)), 7, BUCKETS) is None  # a prefill chunk: unpadded
    assert padded_bucket(runs((3, 2)), 7, BUCKETS) is None  # a context shorter than q: unpadded
    assert padded_bucket(runs((5, 2)), 7, BUCKETS) == 1  # ends at position q - 1
    assert padded_bucket(runs(*[(20, 2)] * 64), 7, BUCKETS) == 64
    assert padded_bucket(runs(*[(20, 2)] * 65), 7, BUCKETS) is None
    assert padded_bucket([], 7, BUCKETS) is None
    assert unpadded_last_rows([2, 1, 3], [0, 2]) == [1, 5]


def test_packed_fields_follow_packed_sizes():
    runs = [Run([11, 12], 5, [3, 7]), Run([31, 32, 33], 9, [1, 2, 6])]
    x = first_inputs(runs, [1], q=3, bucket=2, block_size=4, width=4, hidden_rows=[4, 0])
    flat = packed(x)
    sizes = packed_sizes(2, 3, 4)
    assert flat.dtype == np.int64 and len(sizes) == len(FIELDS)
    for got, want in zip(np.split(flat, np.cumsum(sizes)[:-1]), x, strict=True):
        assert got.tolist() == want.reshape(-1).tolist()


def _runs(batch) -> tuple[list[Run], list[int]]:
    """The proposer's runs (kept tokens, plus the last one when drafting) and the drafting ones' indices."""
    runs, drafting = [], []
    for r in batch.requests:
        c = r.computed
        stop = len(r.token_ids) if r.max_num_drafts else c.start + c.count
        runs.append(Run(r.token_ids[c.start : stop], c.start, r.block_ids))
        if r.max_num_drafts:
            drafting.append(len(runs) - 1)
    return runs, drafting


def _first(proposer, runs, drafting, padded: bool):
    """First-draft logits [d, vocab] and the KV cache after the first forward, from the same random cache."""
    random_kv(proposer)
    first = proposer.first
    if not padded:
        proposer.first = None
    try:
        logits = proposer._first_logits(runs, drafting).clone()
    finally:
        proposer.first = first
    return logits, [(k.clone(), v.clone()) for k, v in proposer.kv]


def _owned(cache: torch.Tensor) -> torch.Tensor:
    """Every slot but the null slot (slot 0 of block 0, where padding writes)."""
    return cache.reshape(-1, *cache.shape[2:])[1:]


@pytest.fixture
def row_invariant_linear(monkeypatch):
    """CPU BLAS picks its kernel by the row count (1 to 3 rows: matrix-vector kernels; more: others, whose blocking
    may change with the count too, as MKL's does on Intel), so a row's low bits depend on how many rows came with
    it, which the padding (more rows) would show. Under this fixture the torch ops (built by proposers made after
    it) compute every linear 4 rows at a time (the last chunk zero padded), so that the comparison sees the
    padding alone."""
    real = torch.nn.functional.linear

    def linear(x, weight, bias=None):
        m = x.shape[0]
        padded = torch.cat([x, x.new_zeros(-m % 4, x.shape[1])])
        return torch.cat([real(c, weight, bias) for c in padded.split(4)])[:m]

    monkeypatch.setattr(torch.nn.functional, "linear", linear)


def test_padded_first_forward_is_exact(row_invariant_linear, tmp_path):
    proposer = make_draft_proposer(tmp_path, K)
    for max_drafts, kept in BATCHES:
        runs, drafting = _runs(decode_batch(proposer, max_drafts, kept, seed=1))
        bucket = proposer.first.bucket(runs)
        assert bucket == next(b for b in BUCKETS if b >= len(runs))
        padded_logits, padded_kv = _first(proposer, runs, drafting, padded=True)
        logits, kv = _first(proposer, runs, drafting, padded=False)
        assert torch.equal(padded_logits, logits), max_drafts
        for (pk, pv), (k, v) in zip(padded_kv, kv, strict=True):
            assert torch.equal(_owned(pk), _owned(k)) and torch.equal(_owned(pv), _owned(v)), max_drafts
        assert bucket in proposer.first._buckets
        # what changed in the cache is exactly the runs' slots (random keys before, computed ones after)
        random_kv(proposer)
        before = _owned(proposer.kv[0][0]).clone()
        changed = (_owned(padded_kv[0][0]) != before).flatten(1).any(dim=1).nonzero().flatten() + 1
        bs = proposer.block_size
        assert changed.tolist() == sorted(r.block_ids[p // bs] * bs + p % bs for r in runs
                                          for p in range(r.start, r.start + len(r.token_ids)))


@pytest.fixture(scope="module")
def proposer(tmp_path_factory):
    return make_draft_proposer(tmp_path_factory.mktemp("draft"), K)


def _propose(proposer, batch, padded: bool, chained: bool = True):
    random_kv(proposer)
    first, chain = proposer.first, proposer.chain
    if not padded:
        proposer.first = None
    if not chained:
        proposer.chain = None
    try:
        return proposer.propose(batch)
    finally:
        proposer.first, proposer.chain = first, chain


@pytest.mark.parametrize("chained", [True, False])
def test_padded_first_forward_gives_the_unpadded_greedy_drafts(proposer, chained):
    for seed in (0, 1):
        for max_drafts, kept in BATCHES:
            batch = decode_batch(proposer, max_drafts, kept, seed=seed)
            padded = _propose(proposer, batch, padded=True, chained=chained).token_ids
            unpadded = _propose(proposer, batch, padded=False, chained=chained).token_ids
            assert [len(d) for d in padded] == max_drafts
            assert padded == unpadded, (seed, max_drafts)
    assert len({t for d in padded for t in d}) > 3  # varied drafts


def test_padded_first_forward_gives_the_unpadded_sampled_drafts(proposer):
    sampling = SamplingInfo(temperature=0.8, top_k=50, seed=7)
    for max_drafts, kept in BATCHES[2:]:
        batch = decode_batch(proposer, max_drafts, kept, seed=2, sampling=sampling)
        padded = _propose(proposer, batch, padded=True)
        unpadded = _propose(proposer, batch, padded=False)
        assert padded.token_ids == unpadded.token_ids
        for p, u in zip(padded.probs, unpadded.probs, strict=True):
            assert (p is None) == (u is None)
            if p is not None:
                torch.testing.assert_close(p, u, rtol=1e-5, atol=1e-6)


def test_prefill_chunks_take_the_unpadded_forward(proposer, monkeypatch):
    """A run longer than k + 2 (here a whole prompt) sends the whole step down the unpadded forward."""
    batch = decode_batch(proposer, [5, 3], [1, 2], prefill=1)
    monkeypatch.setattr(proposer.first, "run", lambda *a: pytest.fail("the padded forward ran for a prefill"))
    assert [len(d) for d in _propose(proposer, batch, padded=True).token_ids] == [5, 3]
