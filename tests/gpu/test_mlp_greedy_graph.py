"""The MLP speculator's greedy stages as captured CUDA graphs (one per padded batch size) draft exactly what the same
padded stages draft eagerly, and what the stage-by-stage path drafts (GPU machine only:
`python -m pytest tests/gpu -q`)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_heads import make_tiny_speculator
from test_mlp_speculator import trained  # noqa: F401 (the fixture: a tiny target and a speculator trained for it)
from tokenleap_plugins import (
    ComputedTokens,
    ProposeBatch,
    ProposerContext,
    ProposeRequest,
    SpeculativeSettings,
    TargetHandles,
)
from tokenleap_plugins.manager import ProposerManager

HIDDEN, VOCAB = 64, 320
# 1 drafting request (bucket 1), 3 (bucket 4), 6 among non-drafted ones (bucket 8), 20 (bucket 32)
BATCHES = [[3], [3, 1, 2], [3, 0, 2, 1, 0, 3, 3, 0, 2], [1, 2, 3, 3] * 5]


def _final_norm(h: torch.Tensor) -> torch.Tensor:  # a stand-in for the target's, captured with the stages
    return h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(h.dtype)


def _proposer(folder, k: int, dtype: str):
    handles = TargetHandles(embed=None, compute_logits=None, final_norm=_final_norm, embedding_weight=None,
                            lm_head_weight=None)
    ctx = ProposerContext(num_speculative_tokens=k, vocab_size=VOCAB, max_model_len=512, seed=0, device="cuda",
                          dtype=dtype, hidden_size=HIDDEN, speculative=SpeculativeSettings(model=str(folder)),
                          target=handles)
    return ProposerManager(env={}).load("mlp_speculator").build(None, ctx)


def _batch(max_drafts: list[int], seed: int, dtype: torch.dtype) -> ProposeBatch:
    g = torch.Generator().manual_seed(seed)
    reqs = [ProposeRequest(f"r{i}", token_ids=torch.randint(0, VOCAB, (5,), generator=g).tolist(),
                           num_prompt_tokens=2, max_num_drafts=d,
                           computed=ComputedTokens(start=2, count=2, hidden_rows=2 * i))
            for i, d in enumerate(max_drafts)]
    hidden = 3 * torch.randn(2 * len(reqs), HIDDEN, generator=g)
    return ProposeBatch(reqs, {-1: hidden.to("cuda", dtype)})  # a fresh tensor per step, as the engine's may be


def _drafts(proposer, batch, mode: str):
    greedy = proposer.greedy
    if mode == "stages":
        proposer.greedy = None
    else:
        greedy.graphed = mode == "graph"
    try:
        out = [list(d) for d in proposer.propose(batch).token_ids]
    finally:
        proposer.greedy = greedy
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", [dict(), dict(tie_weights=True, scale_input=True)])
def test_graphed_drafts_equal_eager_drafts(tmp_path, dtype, variant):
    k = 3
    proposer = _proposer(make_tiny_speculator(tmp_path / "spec", n_predict=k, **variant), k, dtype)
    assert proposer.greedy is not None and proposer.greedy.graphed
    seen = set()
    for seed in (0, 1):
        for max_drafts in BATCHES:
            batch = _batch(max_drafts, seed, getattr(torch, dtype))
            graphed = _drafts(proposer, batch, "graph")
            eager = _drafts(proposer, batch, "eager")
            assert [len(d) for d in graphed] == max_drafts
            assert graphed == eager, (seed, max_drafts)
            if dtype == "float32":  # unpadded matmuls: the same bits but for rare float32 rounding ties
                assert graphed == _drafts(proposer, batch, "stages"), (seed, max_drafts)
            seen.update(t for d in graphed for t in d)
    assert sorted(b for b, _ in proposer.greedy._graphs) == [1, 4, 8, 32]  # one graph per bucket, replayed
    assert len(seen) > 10  # varied drafts


def test_device_drafting_in_captured_graphs_equals_host_drafting(trained):  # noqa: F811 (the fixture)
    """On CUDA the MLP speculator drafts inside the captured verify graphs (from the previous step's argmax and
    hidden states) and verify steps are launched behind the step in flight: plain decoding's tokens, and the draft
    and accepted counts per position of host drafting (async scheduling off: no drafter)."""
    from helpers.padded_path import assert_device_drafting_equals_host
    from helpers.spec_counts import spec_totals
    from test_mlp_speculator import KW, _prompts
    from tokenleap import LLM, SamplingParams
    from tokenleap_eagle.mlp_speculator.device import MLPDeviceDrafter

    target, folder, _ = trained
    prompts = _prompts(11, 12)
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in (9, 20, 31, 14) * 3]
    spec = {"method": "mlp_speculator", "model": folder, "num_speculative_tokens": 3}
    common = dict(device="cuda", dtype="float32", max_num_seqs=4, **KW)
    want = [list(o.outputs[0].token_ids) for o in LLM(target, **common).generate(prompts, params, use_tqdm=False)]

    def make_llm(device_drafting: bool):
        llm = LLM(target, speculative_config=spec, async_scheduling=device_drafting, **common)
        assert (llm.engine.runner.graphs.drafter is None) != device_drafting
        return llm

    got, llm = assert_device_drafting_equals_host(make_llm, prompts, params, MLPDeviceDrafter)
    assert got == want and spec_totals(llm)[1] > 0.3 * spec_totals(llm)[0]
