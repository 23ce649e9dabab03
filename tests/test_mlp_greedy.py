"""The MLP speculator's greedy drafts in one padded pass (mlp_speculator/greedy.py): the padded eager path and
the static-buffer path a CUDA graph replays (here with eager stand-ins for the graphs) draft exactly what the
stage-by-stage path drafts, for batches padded to a bucket and requests wanting fewer drafts than k."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_heads import make_tiny_speculator
from tokenleap.speculative.graph_capture import bucket_for, capture_or_eager
from tokenleap_eagle.mlp_speculator.greedy import BUCKETS, padded_index
from tokenleap_plugins import (
    ComputedTokens,
    ProposeBatch,
    ProposerContext,
    ProposeRequest,
    SamplingInfo,
    SpeculativeSettings,
    TargetHandles,
)
from tokenleap_plugins.manager import ProposerManager

HIDDEN, VOCAB = 64, 320


def _final_norm(h: torch.Tensor) -> torch.Tensor:  # a stand-in for the target's: the rows must go through it
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * 1.5


def _proposer(folder, k: int):
    handles = TargetHandles(embed=None, compute_logits=None, final_norm=_final_norm, embedding_weight=None,
                            lm_head_weight=None)
    ctx = ProposerContext(num_speculative_tokens=k, vocab_size=VOCAB, max_model_len=512, seed=0,
                          hidden_size=HIDDEN, speculative=SpeculativeSettings(model=str(folder)), target=handles)
    return ProposerManager(env={}).load("mlp_speculator").build(None, ctx)


def _batch(max_drafts: list[int], seed: int, sampled: bool = False) -> ProposeBatch:
    """One request per entry wanting that many drafts (0: not drafted), each owning 1-3 hidden rows."""
    g = torch.Generator().manual_seed(seed)
    reqs, row = [], 0
    for i, d in enumerate(max_drafts):
        count = int(torch.randint(1, 4, (1,), generator=g))
        tokens = torch.randint(0, VOCAB, (count + 3,), generator=g).tolist()
        reqs.append(ProposeRequest(f"r{i}", token_ids=tokens, num_prompt_tokens=2, max_num_drafts=d,
                                   computed=ComputedTokens(start=2, count=count, hidden_rows=row),
                                   sampling=SamplingInfo(temperature=0.7 if sampled and i == 0 else 0.0, seed=3)))
        row += count
    return ProposeBatch(reqs, {-1: 3 * torch.randn(row, HIDDEN, generator=g)})


def _drafts(proposer, batch, mode: str) -> list[list[int]]:
    greedy = proposer.greedy
    if mode == "stages":
        proposer.greedy = None
    else:
        greedy.graphed = mode == "static"
    try:
        return [list(d) for d in proposer.propose(batch).token_ids]
    finally:
        proposer.greedy = greedy


# 3 drafting requests (bucket 4), 5 among non-drafted ones (bucket 8), 9 (bucket 16), 1 (bucket 1)
BATCHES = [[3, 1, 2], [3, 0, 2, 1, 0, 3, 3, 0], [2, 3, 1, 3, 3, 2, 1, 3, 2], [2]]


@pytest.mark.parametrize("variant", [
    dict(n_predict=3), dict(n_predict=2), dict(n_predict=3, tie_weights=True), dict(n_predict=2, tie_weights=True),
    dict(n_predict=3, scale_input=True), dict(n_predict=2, tie_weights=True, scale_input=True),
])
def test_padded_drafts_equal_the_stage_by_stage_drafts(tmp_path, variant):
    n = variant["n_predict"]
    proposer = _proposer(make_tiny_speculator(tmp_path / "spec", **variant), n)
    seen = set()
    for seed in (0, 1):
        for max_drafts in BATCHES:
            max_drafts = [min(d, n) for d in max_drafts]
            batch = _batch(max_drafts, seed)
            stages = _drafts(proposer, batch, "stages")
            assert [len(d) for d in stages] == max_drafts
            assert _drafts(proposer, batch, "eager") == stages, (seed, max_drafts)
            assert _drafts(proposer, batch, "static") == stages, (seed, max_drafts)
            seen.update(t for d in stages for t in d)
    assert len(seen) > 10  # varied drafts
    assert sorted(b for b, _ in proposer.greedy._graphs) == [1, 4, 8, 16]  # one static set per bucket, reused


def test_sampled_batches_keep_the_stage_by_stage_path(tmp_path):
    """A batch with one sampled request drafts stage by stage (its probabilities come back); its greedy requests
    draft what the padded path drafts for them."""
    proposer = _proposer(make_tiny_speculator(tmp_path / "spec"), 3)
    mixed = _batch([3, 2, 3], seed=4, sampled=True)
    out = proposer.propose(mixed)
    assert out.probs is not None and out.probs[0].shape == (3, VOCAB) and out.probs[1] is None
    greedy = _batch([3, 2, 3], seed=4)  # the same rows and tokens, every request greedy
    assert [list(d) for d in out.token_ids][1:] == _drafts(proposer, greedy, "eager")[1:]


def test_padded_index_puts_padding_on_row_zero():
    index = padded_index([5, 2, 9], [11, 12, 13], 4)
    assert index.tolist() == [[5, 2, 9, 0], [11, 12, 13, 0]]
    assert index.dtype.name == "int64"


def test_bucket_for_picks_the_smallest_bucket():
    assert [bucket_for(n, BUCKETS) for n in (1, 2, 3, 5, 64, 65, 256)] == [1, 2, 4, 8, 64, 128, 256]
    assert bucket_for(257, BUCKETS) is None
    assert bucket_for(65) is None  # the heads' default buckets end at 64


def test_eager_replay_rewrites_the_first_outputs_in_place():
    x = torch.arange(4.0)
    graph, out = capture_or_eager(lambda: (x * 2, x.sum()), torch.device("cpu"))
    first = out[0]
    x.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    graph.replay()
    assert out[0] is first and out[0].tolist() == [2.0] * 4 and out[1].item() == 4.0
    assert graph.pool() is None
