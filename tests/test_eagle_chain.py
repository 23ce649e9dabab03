"""The EAGLE head's greedy chain (tokenleap_eagle/chain.py) drafts exactly what the step-by-step path drafts.

Same proposer, same batch (random hidden states, scattered blocks, different max_num_drafts per request, some
requests not drafted), the head's KV zeroed between the two runs; drafts must be equal token for token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenleap_eagle.chain import chain_inputs
from tokenleap_plugins import SamplingInfo

from tests.helpers.eagle_proposer import fresh_kv, make_proposer, random_batch

K = 5
# batches: 1 drafting request (bucket 1), 3 (padded to 4), 6 among non-drafted ones (padded to 8)
BATCHES = [[4], [5, 1, 3], [5, 0, 2, 1, 0, 5, 3, 0, 4]]


def test_chain_inputs():
    rows = [(5, [3, 7], 3), (2, [4], 1), (9, [1, 2, 6], 4)]  # (n = P + 1, block_ids, drafts wanted)
    positions, slots, seq_lens, tables = chain_inputs(rows, steps=3, bucket=4, block_size=4)
    # row 0 feeds drafts 0, 1 at 5, 6 (block 7); row 1 wants one draft (no step); row 2 feeds 9..11 (block 6);
    # row 3 is padding; rows past their drafts write the null slot 0 at position 0 with seq_len 1
    assert positions.tolist() == [[5, 0, 9, 0], [6, 0, 10, 0], [0, 0, 11, 0]]
    assert slots.tolist() == [[29, 0, 25, 0], [30, 0, 26, 0], [0, 0, 27, 0]]
    assert seq_lens.tolist() == [[6, 1, 10, 1], [7, 1, 11, 1], [1, 1, 12, 1]]
    assert tables.tolist() == [[3, 7, 0], [4, 0, 0], [1, 2, 6], [0, 0, 0]]
    assert (positions.dtype, slots.dtype, seq_lens.dtype, tables.dtype) == (np.int64, np.int64, np.int32, np.int32)


@pytest.fixture(scope="module", params=["eagle3", "eagle"])
def proposer(request, tmp_path_factory):
    return make_proposer(tmp_path_factory.mktemp(request.param), request.param, K)


def _drafts(proposer, batch, chained: bool):
    fresh_kv(proposer)
    chain = proposer.chain
    if not chained:
        proposer.chain = None  # every draft step by step (choose + tolist per step)
    try:
        return [list(d) for d in proposer.propose(batch).token_ids]
    finally:
        proposer.chain = chain


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_chain_drafts_equal_the_stepwise_drafts(proposer, seed):
    for max_drafts in BATCHES:
        batch = random_batch(proposer, max_drafts, seed=seed)
        stepwise = _drafts(proposer, batch, chained=False)
        chained = _drafts(proposer, batch, chained=True)
        assert [len(d) for d in stepwise] == max_drafts  # every request drafted as many as it may
        assert chained == stepwise, (proposer.kind, max_drafts)
    tokens = {t for d in chained for t in d}
    assert len(tokens) > 3  # the random head drafts varied tokens, not one repeated


def test_sampled_batches_keep_the_stepwise_path(proposer, monkeypatch):
    monkeypatch.setattr(proposer.chain, "run", lambda *a: pytest.fail("the greedy chain ran for sampling"))
    batch = random_batch(proposer, [3, 2], sampling=SamplingInfo(temperature=0.8, seed=7))
    out = proposer.propose(batch)
    assert [len(d) for d in out.token_ids] == [3, 2]
    assert [tuple(p.shape) for p in out.probs] == [(3, proposer.vocab_size), (2, proposer.vocab_size)]


def test_greedy_chain_runs_from_device_tensors(proposer, monkeypatch):
    """The chained path reads the drafts back once: no per-step ``.tolist()`` of device tensors."""
    calls = []
    real = torch.Tensor.tolist

    def counting(self):
        calls.append(tuple(self.shape))
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    proposer.propose(random_batch(proposer, [5, 0, 2, 4], seed=3))
    assert calls == [(3, K)]  # [drafting requests, max drafts]
