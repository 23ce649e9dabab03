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


def test_device_drafting_in_captured_graphs_equals_host_drafting(tmp_path):
    """On CUDA an EAGLE-3 head drafts inside the captured verify graphs (catch-up, first draft and chain from the
    previous step's argmax and hidden states) and verify steps are launched behind the step in flight: plain
    decoding's tokens, the draft and accepted counts per position of host drafting (async scheduling off: no
    drafter). A random head on a tiny target (the GPU machine has no ShareGPT to train one on)."""
    from helpers.eagle_heads import write_eagle3_head
    from helpers.padded_path import assert_device_drafting_equals_host
    from helpers.tiny_models import TINY_VOCAB, make_tiny_checkpoint
    from tokenleap import LLM, SamplingParams
    from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter

    target = make_tiny_checkpoint(tmp_path / "target", "llama")
    head = write_eagle3_head(tmp_path / "head", 64, TINY_VOCAB, 96, seed=2)
    prompts = [{"prompt_token_ids": [1, 20 + i, 33, 7 + 2 * i, 40, 41, 42, 43, 44][: 2 + i]} for i in range(8)]
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in (11, 24, 17, 30) * 2]
    spec = {"method": "eagle3", "model": str(head), "num_speculative_tokens": 3}
    common = dict(model=str(target), device="cuda", dtype="float32", max_num_seqs=4, disable_log_stats=True)
    want = [list(o.outputs[0].token_ids) for o in LLM(**common).generate(prompts, params, use_tqdm=False)]

    def make_llm(device_drafting: bool):
        llm = LLM(speculative_config=spec, async_scheduling=device_drafting, **common)
        assert (llm.engine.runner.graphs.drafter is None) != device_drafting
        return llm

    got, _ = assert_device_drafting_equals_host(make_llm, prompts, params, CatchUpChainDrafter)
    assert got == want
