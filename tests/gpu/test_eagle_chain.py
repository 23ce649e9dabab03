"""The EAGLE-3 head's greedy chain as captured CUDA graphs drafts exactly what the same padded steps draft eagerly
(GPU machine only: `python -m pytest tests/gpu -q`)."""

from __future__ import annotations

import torch
from helpers.eagle_proposer import fresh_kv, make_proposer, random_batch

K = 5
# 1 drafting request (bucket 1), 3 (bucket 4), 6 among non-drafted ones (bucket 8)
BATCHES = [[4], [5, 1, 3], [5, 0, 2, 1, 0, 5, 3, 0, 4]]


def _drafts(proposer, batch, graphed: bool):
    fresh_kv(proposer)
    proposer.chain.graphed = graphed
    out = [list(d) for d in proposer.propose(batch).token_ids]
    torch.cuda.synchronize()
    return out


def test_graphed_chain_drafts_equal_eager_chain_drafts(tmp_path):
    proposer = make_proposer(tmp_path, "eagle3", K, device="cuda", backend="triton")
    assert proposer.chain is not None and proposer.chain.graphed
    for seed in (0, 1):
        for max_drafts in BATCHES:
            batch = random_batch(proposer, max_drafts, seed=seed)
            graphed = _drafts(proposer, batch, graphed=True)
            eager = _drafts(proposer, batch, graphed=False)
            assert [len(d) for d in graphed] == max_drafts
            assert graphed == eager, (seed, max_drafts)
    assert sorted(proposer.chain._graphs) == [1, 4, 8]  # one graph per bucket, replayed
    assert len({t for d in graphed for t in d}) > 3  # varied drafts
