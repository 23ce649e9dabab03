"""CUDA-only checks, run on the GPU machine (`python -m pytest tests/gpu -q`); CI has no GPU and does
not collect this folder (tests/conftest.py)."""

from __future__ import annotations

import gc

import pytest
import torch
from helpers.spec_counts import spec_totals, without_attention_output
from helpers.tiny_models import make_tiny_checkpoint
from tokenleap import LLM, SamplingParams

PROMPTS = [
    {"prompt_token_ids": [5, 6, 7, 8, 9, 10, 11, 12] * 3},
    {"prompt_token_ids": list(range(20, 90))},
    {"prompt_token_ids": [3, 4, 3, 4, 3, 4, 30, 31, 32]},
]
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("cuda"), "llama")


def _tokens(llm, prompts=PROMPTS, params=GREEDY, release=True):
    out = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    if release:  # one engine on the GPU at a time
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    return out


def test_graphs_triton_match_cpu_reference(tiny):
    cpu = _tokens(LLM(model=str(tiny), device="cpu", dtype="float32", disable_log_stats=True))
    eager = LLM(model=str(tiny), device="cuda", dtype="float32", enforce_eager=True, disable_log_stats=True)
    assert eager.engine.backend == "triton"
    assert _tokens(eager, release=False) == cpu
    del eager
    graphed = LLM(model=str(tiny), device="cuda", dtype="float32", disable_log_stats=True)
    assert graphed.engine.runner.graphs is not None
    assert _tokens(graphed, release=False) == cpu
    del graphed
    torch_ref = LLM(model=str(tiny), device="cuda", dtype="float32", attention_backend="torch", disable_log_stats=True)
    assert _tokens(torch_ref) == cpu


@pytest.mark.parametrize("k", [1, 3, 5])
def test_ngram_on_gpu_equals_plain(tiny, k):
    plain = _tokens(LLM(model=str(tiny), device="cuda", dtype="float32", disable_log_stats=True))
    spec = LLM(model=str(tiny), device="cuda", dtype="float32", disable_log_stats=True,
               speculative_config={"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": 1,
                                   "prompt_lookup_max": 3})
    assert _tokens(spec, release=False) == plain
    drafted = {m.name: getattr(m, "value", None) for m in spec.get_metrics()}["tokenleap:spec_decode_num_draft_tokens"]
    assert drafted > 0


def test_seeded_sampling_on_gpu_is_batch_invariant(tiny):
    llm = LLM(model=str(tiny), device="cuda", dtype="float32", disable_log_stats=True)
    sp = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=7, max_tokens=30, ignore_eos=True)
    alone = _tokens(llm, PROMPTS[:1], sp, release=False)
    together = _tokens(llm, PROMPTS, release=False, params=[sp, SamplingParams(temperature=1.0, seed=1, max_tokens=30),
                                      SamplingParams(temperature=0, max_tokens=12)])
    assert alone[0] == together[0]


def test_async_scheduling_with_real_graphs_equals_cpu(tiny):
    """Steps launched ahead on the GPU (tokens fed on the device from the step in flight) give the CPU
    reference's tokens, including requests that stop inside a step already launched for them."""
    cpu = _tokens(LLM(model=str(tiny), device="cpu", dtype="float32", disable_log_stats=True))
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop_token_ids=[t[len(t) // 2]])
              for t in cpu]
    cpu_stopped = _tokens(LLM(model=str(tiny), device="cpu", dtype="float32", disable_log_stats=True),
                          params=params)
    llm = LLM(model=str(tiny), device="cuda", dtype="float32", disable_log_stats=True)
    assert llm.engine.cfg.async_scheduling and llm.engine.runner.graphs is not None
    launched_ahead = []
    launch = llm.engine.runner.launch

    def counting(scheduled, ahead_of=None, q=1):
        launched_ahead.append(ahead_of is not None)
        return launch(scheduled, ahead_of, q)

    llm.engine.runner.launch = counting
    assert _tokens(llm, release=False) == cpu
    assert sum(launched_ahead) > 20
    assert _tokens(llm, params=params, release=False) == cpu_stopped
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


@pytest.mark.parametrize("cycling", [False, True])
def test_device_drafting_in_captured_graphs_equals_host_drafting(tiny, cycling):
    """ngram declares prompt lookup: on CUDA the captured verify graphs draft with the Triton kernel and are
    launched behind the step in flight. Tokens are plain decoding's; draft and accepted counts (per position)
    are those of host drafting (async scheduling off); most verify steps went ahead. ``cycling`` zeroes every
    o_proj, so the tiny model cycles and drafts are often accepted (several tokens appended per step)."""
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
    common = dict(model=str(tiny), device="cuda", dtype="float32", disable_log_stats=True, max_num_seqs=2)

    def build(**kw):
        llm = LLM(**common, **kw)
        return without_attention_output(llm) if cycling else llm

    plain = _tokens(build())
    host = build(speculative_config=spec, async_scheduling=False)
    assert host.engine.runner.graphs.drafter is None
    assert _tokens(host, release=False) == plain
    host_counts = spec_totals(host)
    del host
    gc.collect()
    torch.cuda.empty_cache()
    dev = build(speculative_config=spec)
    assert (dev.engine.runner.graphs.drafter.lo, dev.engine.runner.graphs.drafter.hi) == (1, 3)
    launch, ahead = dev.engine.runner.launch, []

    def noting(scheduled, ahead_of=None, q=1):
        ahead.append(ahead_of is not None and q > 1)
        return launch(scheduled, ahead_of, q)

    dev.engine.runner.launch = noting
    assert _tokens(dev, release=False) == plain
    assert spec_totals(dev) == host_counts and host_counts[0] > 0
    if cycling:
        assert host_counts[1] > 0.25 * host_counts[0] and host_counts[2][-1] > 0
    assert sum(ahead) > 0.5 * len(ahead)


def test_draft_model_drafting_in_captured_graphs_equals_host_drafting(tiny):
    """The draft model (here the target drafting for itself: drafts accepted unless the two KV caches differ) drafts
    inside the captured verify graphs, verify steps launched behind the step in flight: plain decoding's tokens,
    host drafting's draft and accepted counts per position (async scheduling off: no drafter)."""
    from helpers.padded_path import assert_device_drafting_equals_host
    from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter

    spec = {"method": "draft_model", "model": str(tiny), "num_speculative_tokens": 3}
    common = dict(model=str(tiny), device="cuda", dtype="float32", disable_log_stats=True, max_num_seqs=2)
    plain = _tokens(LLM(**common))

    def make_llm(device_drafting: bool):
        llm = LLM(speculative_config=spec, async_scheduling=device_drafting, **common)
        assert (llm.engine.runner.graphs.drafter is None) != device_drafting
        return llm

    got, llm = assert_device_drafting_equals_host(make_llm, PROMPTS, [GREEDY] * len(PROMPTS), CatchUpChainDrafter)
    assert got == [list(t) for t in plain] and spec_totals(llm)[1] > 0.5 * spec_totals(llm)[0]
