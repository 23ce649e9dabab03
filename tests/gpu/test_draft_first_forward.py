"""The draft_model proposer's first forward (catch-up + first draft) as captured CUDA graphs drafts exactly what the
same padded forward drafts eagerly, with the same bits of logits and KV cache, and what the unpadded forward drafts
(GPU machine only: `python -m pytest tests/gpu -q`)."""

from __future__ import annotations

import torch
from helpers.draft_proposer import decode_batch, make_draft_proposer, random_kv
from tokenleap.kernels.triton_linear import MAX_ROWS
from tokenleap_draft.chain import BUCKETS

K = 5
# (drafts wanted, tokens kept) per request: batch 1 (nothing / everything accepted), 3 requests (bucket 4), 9 among
# non-drafted ones (bucket 16)
BATCHES = [([5], [1]), ([5], [6]), ([5, 1, 3], [2, 6, 3]), ([5, 0, 2, 1, 0, 5, 3, 0, 4], [1, 2, 3, 4, 5, 6, 1, 2, 3])]


def _propose(proposer, batch, mode: str):
    """Drafts, first-draft logits and the KV cache after the step; mode: graphed / eager (padded) / unpadded."""
    random_kv(proposer)
    first = proposer.first
    seen = []  # the first-draft logits of the padded forward
    run = first.run

    def recording(*args):
        logits = run(*args)
        seen.append(logits.clone())
        return logits

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
    return drafts, (seen[0] if seen else None), [(k.clone(), v.clone()) for k, v in proposer.kv]


def _owned(cache: torch.Tensor) -> torch.Tensor:
    return cache.reshape(-1, *cache.shape[2:])[1:]  # all but the null slot


def test_graphed_first_forward_equals_the_eager_one(tmp_path):
    proposer = make_draft_proposer(tmp_path, K, device="cuda", backend="triton")
    assert proposer.first is not None and proposer.first.graphed
    for seed in (0, 1):
        for max_drafts, kept in BATCHES:
            batch = decode_batch(proposer, max_drafts, kept, seed=seed)
            graphed, graphed_logits, graphed_kv = _propose(proposer, batch, "graphed")
            eager, eager_logits, eager_kv = _propose(proposer, batch, "eager")
            unpadded, _, _ = _propose(proposer, batch, "unpadded")
            assert [len(d) for d in graphed] == max_drafts
            assert graphed == eager == unpadded, (seed, max_drafts)
            # the same kernels replayed: the same bits (the few-row linears certainly; cuBLAS past MAX_ROWS rows
            # picks its kernels per shape, which a graph keeps, but that is not checked here)
            bucket = next(b for b in BUCKETS if b >= len(max_drafts))
            same = torch.equal if bucket * proposer.first.q <= MAX_ROWS else torch.allclose
            assert same(graphed_logits, eager_logits), (seed, max_drafts)
            for (gk, gv), (ek, ev) in zip(graphed_kv, eager_kv, strict=True):
                assert same(_owned(gk), _owned(ek)) and same(_owned(gv), _owned(ev)), (seed, max_drafts)
    assert proposer.first.captured() == [1, 4, 16]  # one graph per bucket, replayed
    assert len({t for d in graphed for t in d}) > 3  # varied drafts
