"""The EAGLE proposer's catch-up + first draft of decode / verify steps as captured CUDA graphs (one per bucket)
drafts exactly what the same padded forward drafts eagerly and what the unpadded catch-up drafts, with the same
head output, first drafts and head KV cache (GPU machine only: `python -m pytest tests/gpu -q`)."""

from __future__ import annotations

import pytest
import torch
from helpers.eagle_proposer import make_proposer, random_kv, verify_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (tests/gpu)")

K = 5
# (drafts wanted, rows the step kept) per request: batch 1 with nothing / everything accepted (runs of 1 and
# k + 1 = 6 rows), 3 requests (bucket 4, one with fewer drafts allowed), 9 among non-drafted ones (bucket 16)
BATCHES = [([5], [1]), ([5], [6]), ([5, 1, 3], [2, 6, 3]), ([5, 0, 2, 1, 0, 5, 3, 0, 4], [1, 2, 3, 4, 5, 6, 1, 2, 3])]


def _propose(proposer, batch, mode: str):
    """Drafts, (g, first drafts) of the catch-up and the head's KV after the step; mode: graphed / eager (padded) /
    unpadded."""
    random_kv(proposer)
    first = proposer.first
    seen = []
    run = first.run

    def recording(*args):
        g, first_drafts = run(*args)
        seen.append((g.clone(), first_drafts.clone()))
        return g, first_drafts

    first.run = recording
    first.graphed = mode == "graphed"
    if mode == "unpadded":
        proposer.first = None
    try:
        drafts = [list(d) for d in proposer.propose(batch).token_ids]
    finally:
        proposer.first = first
        first.graphed = True
        del first.run
    torch.cuda.synchronize()
    assert len(seen) == (mode != "unpadded")
    return drafts, (seen[0] if seen else None), [t.clone() for t in proposer.kv]


def _owned(cache: torch.Tensor) -> torch.Tensor:
    return cache.reshape(-1, *cache.shape[2:])[1:]  # all but the null slot


@pytest.mark.parametrize("kind", ["eagle3", "eagle"])
def test_graphed_catch_up_equals_the_eager_one(tmp_path, kind):
    proposer = make_proposer(tmp_path, kind, K, device="cuda", backend="triton")
    assert proposer.first is not None and proposer.first.graphed
    for seed in (0, 1):
        for max_drafts, kept in BATCHES:
            batch = verify_batch(proposer, max_drafts, kept, seed=seed)
            graphed, (graphed_g, graphed_first), graphed_kv = _propose(proposer, batch, "graphed")
            eager, (eager_g, eager_first), eager_kv = _propose(proposer, batch, "eager")
            unpadded, _, _ = _propose(proposer, batch, "unpadded")
            assert [len(d) for d in graphed] == max_drafts
            assert graphed == eager == unpadded, (seed, max_drafts)
            assert torch.equal(graphed_first, eager_first), (seed, max_drafts)
            # the same kernels replayed; cuBLAS may pick its kernels otherwise under capture: close, not bits
            torch.testing.assert_close(graphed_g, eager_g, rtol=1e-5, atol=1e-5)
            for g, e in zip(graphed_kv, eager_kv, strict=True):
                torch.testing.assert_close(_owned(g), _owned(e), rtol=1e-5, atol=1e-5)
    assert proposer.first.captured() == [1, 4, 16]  # one graph per bucket, replayed
    assert len({t for d in graphed for t in d}) > 3  # varied drafts
