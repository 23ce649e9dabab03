"""The graphed decode path (every request padded to q = 1 + k tokens, greedy verification inside the forward)
and async scheduling (step N + 1 launched before step N is read back, its tokens taken on the device) change
when tokens are computed, never which. On CPU the graphs run eagerly (``DecodeGraphs(use_cuda_graphs=False)``):
the same padded inputs, null-block writes and device-fed tokens as on CUDA, minus the capture."""

from __future__ import annotations

import random
import types

import pytest
import torch
from helpers.padded_path import count_launches, use_padded_path
from helpers.spec_counts import spec_totals, without_attention_output
from tokenleap import LLM, SamplingParams
from tokenleap.engine.cuda_graphs import equal_bounds, segment_bounds
from tokenleap.engine.request import Request
from tokenleap.sampling_params import SamplingParams as SP
from tokenleap_ngram.device.drafter import PromptLookupDrafter
from tokenleap_plugins import Drafts, ProposerBase, ProposerManager, ProposerSpec, hookimpl

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BLOCK = 16
LENGTHS = [3, 7, 12, 20, 33, 47, 5, 60, 9, 25]
MAX_TOKENS = [8, 30, 16, 24, 12, 28, 20, 10, 26, 18]
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}


def make_prompts():
    rng = random.Random(7)
    # a repeated tail gives the n-gram proposer something to find
    return [{"prompt_token_ids": [rng.randrange(3, 300) for _ in range(n)] + [11, 12, 13] * 3} for n in LENGTHS]


PROMPTS = make_prompts()
GREEDY = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]


def tiny_llm(folder, padded: bool, bounds: list[int] | None = None, prefill: tuple[int, ...] = (),
             device_drafting: bool = True, **kwargs) -> LLM:
    """``padded``: decode / verify steps go through the graphed path, run eagerly (``use_padded_path``)."""
    kwargs.setdefault("num_gpu_blocks_override", 256)
    llm = LLM(model=str(folder), disable_log_stats=True, block_size=BLOCK, **kwargs)
    if padded:
        use_padded_path(llm, BLOCK, bounds, prefill, device_drafting)
    return llm


def token_ids(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def eager_greedy(folder):
    return token_ids(tiny_llm(folder, padded=False).generate(PROMPTS, GREEDY, use_tqdm=False))


@pytest.mark.parametrize("max_num_seqs", [1, 3, 16])
def test_async_padded_decode_equals_eager(folder, eager_greedy, max_num_seqs):
    llm = tiny_llm(folder, padded=True, max_num_seqs=max_num_seqs)
    counts = count_launches(llm)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert token_ids(outs) == eager_greedy
    assert [len(t) for t in token_ids(outs)] == MAX_TOKENS
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    # most decode steps were launched ahead of the one before
    decode_steps = sum(MAX_TOKENS) / max_num_seqs
    assert counts["ahead"] > 0.5 * decode_steps
    assert llm.engine._in_flight is None
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


@pytest.mark.parametrize("spec", [None, NGRAM])
def test_prefill_graphs_equal_eager(folder, spec):
    """One-request prefill chunks padded to a bucket (16 / 32 / 64; chunks of at most 40 tokens, so the longer
    prompts take two), then again with the prompts cached (short tails): the same tokens as eager prefill, for
    greedy and seeded sampling requests alike."""
    kw = dict(max_num_seqs=1, max_num_batched_tokens=40, speculative_config=spec)
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) if i % 2 else
              SamplingParams(temperature=0.9, seed=i, max_tokens=m, ignore_eos=True)
              for i, m in enumerate(MAX_TOKENS)]
    want = token_ids(tiny_llm(folder, padded=False, **kw).generate(PROMPTS, params, use_tqdm=False))
    llm = tiny_llm(folder, padded=True, prefill=(16, 32, 64), **kw)
    counts = count_launches(llm)
    for _ in range(2):  # the second time the prompts hit the prefix cache
        assert token_ids(llm.generate(PROMPTS, params, use_tqdm=False)) == want
    longest = max(len(p["prompt_token_ids"]) for p in PROMPTS)
    assert counts["prefill"] >= 2 * len(PROMPTS) + 1 and longest > 40  # one prompt took two chunks
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


def test_prefill_buckets():
    from tokenleap.engine.cuda_graphs import prefill_buckets

    assert prefill_buckets(2048) == [32, 64, 128, 256, 512]
    assert prefill_buckets(100) == [32, 64]


def test_prefill_graphs_stay_within_max_model_len(folder):
    """max_model_len (256) below the largest bucket (512): no bucket longer than it, a chunk whose padding would
    end past it runs eagerly, and every shape's capture inputs (positions from 0, sequence length q) stay within
    the RoPE table and the block table, which the torch reference indexes with bound checks (on CUDA the Triton
    kernels do not: capturing the 512 bucket read past both, an illegal memory access)."""
    from tokenleap.engine.cuda_graphs import prefill_buckets

    llm = tiny_llm(folder, padded=True, prefill=tuple(prefill_buckets(2048)), max_num_seqs=2, max_model_len=256)
    graphs = llm.engine.runner.graphs
    assert graphs.prefill_query_lens == [32, 64, 128, 256]
    shapes = [(b, q, False) for b in graphs.batch_sizes for q in graphs.query_lens]
    for b, q, prefill in shapes + [(1, q, True) for q in graphs.prefill_query_lens]:
        graphs._fill_dummy(b, q)
        stages, state = graphs._segments(b, q, [q] * b, prefill=prefill)
        for stage in stages:
            stage()
        assert torch.isfinite(state["logits"]).all(), (b, q)
    assert graphs.pick_prefill(10, start=224) == 32 and graphs.pick_prefill(10, start=225) is None
    assert graphs.pick_prefill(200) == 256 and graphs.pick_prefill(257) is None
    prompt = {"prompt_token_ids": PROMPTS[0]["prompt_token_ids"] * 30}  # 244 tokens: cached 240, then 4 to go
    prompt["prompt_token_ids"] = prompt["prompt_token_ids"][:244]
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    want = token_ids(tiny_llm(folder, padded=False, max_model_len=256).generate([prompt], greedy, use_tqdm=False))
    counts = count_launches(llm)
    for _ in range(2):  # the second time from position 240: 32 padded rows would end at 272
        assert token_ids(llm.generate([prompt], greedy, use_tqdm=False)) == want
    assert counts["prefill"] == 1  # the 256 bucket the first time; the 4-token tail at 240 ran eagerly


def test_segment_bounds():
    assert segment_bounds(1) == [0, 1]
    assert segment_bounds(2) == [0, 1, 2]
    assert segment_bounds(3) == [0, 1, 2, 3]
    assert segment_bounds(30) == [0, 1, 15, 30]  # SmolLM2: one layer, then two equal segments
    assert segment_bounds(32) == [0, 1, 16, 32]  # Llama 3 8B
    assert segment_bounds(80) == [0, 1, 40, 80]
    assert equal_bounds(32, 3) == [0, 11, 21, 32]
    assert equal_bounds(2, 3) == [0, 1, 2]  # never an empty segment


@pytest.mark.parametrize("bounds", [[0, 2], [0, 1, 2]])
def test_forward_split_into_segments_is_unchanged(folder, eager_greedy, bounds):
    llm = tiny_llm(folder, padded=True, bounds=bounds, max_num_seqs=4)
    assert llm.engine.runner.graphs.bounds(1) == llm.engine.runner.graphs.bounds(2) == bounds
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == eager_greedy


def test_async_scheduling_off_launches_nothing_ahead(folder, eager_greedy):
    llm = tiny_llm(folder, padded=True, max_num_seqs=4, async_scheduling=False)
    counts = count_launches(llm)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == eager_greedy
    assert counts["ahead"] == 0 and counts["padded"] > 0


def test_stops_inside_a_step_launched_ahead(folder, eager_greedy):
    """Each request stops on a token id it emits mid-run: the step already launched for it is ignored."""
    params = [
        SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, stop_token_ids=[toks[len(toks) // 2]])
        for m, toks in zip(MAX_TOKENS, eager_greedy, strict=True)
    ]
    eager = tiny_llm(folder, padded=False).generate(PROMPTS, params, use_tqdm=False)
    llm = tiny_llm(folder, padded=True, max_num_seqs=4)
    counts = count_launches(llm)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert token_ids(outs) == token_ids(eager)
    assert [o.outputs[0].finish_reason for o in outs] == ["stop"] * len(PROMPTS)
    assert all(len(o.outputs[0].token_ids) <= len(e) // 2 + 1 for o, e in zip(outs, eager_greedy, strict=True))
    assert counts["ahead"] > 0
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


def test_stop_strings_and_text_match_eager(folder):
    llm_eager = tiny_llm(folder, padded=False)
    free = llm_eager.generate(PROMPTS[:4], GREEDY[:4], use_tqdm=False)
    texts = [o.outputs[0].text for o in free]
    assert all(len(t) >= 4 for t in texts)
    # a stop string taken from the middle of each text
    params = [
        SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, stop=[t[len(t) // 2 : len(t) // 2 + 2]])
        for m, t in zip(MAX_TOKENS[:4], texts, strict=True)
    ]
    eager = llm_eager.generate(PROMPTS[:4], params, use_tqdm=False)
    padded = tiny_llm(folder, padded=True, max_num_seqs=2).generate(PROMPTS[:4], params, use_tqdm=False)
    assert [(o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in padded] == [
        (o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in eager
    ]
    assert {o.outputs[0].finish_reason for o in eager} == {"stop"}


def test_mixed_sampling_batch_equals_eager(folder):
    """Seeded sampling and logprobs run after the padded forward, from its logits; such steps are not
    launched ahead but the greedy ones beside them are unchanged."""
    params = [
        g if i % 2 == 0 else SamplingParams(temperature=0.8, top_p=0.9, seed=10 + i, max_tokens=g.max_tokens,
                                            ignore_eos=True, logprobs=2 if i == 3 else None)
        for i, g in enumerate(GREEDY)
    ]
    eager = tiny_llm(folder, padded=False).generate(PROMPTS, params, use_tqdm=False)
    llm = tiny_llm(folder, padded=True, max_num_seqs=4)
    counts = count_launches(llm)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert token_ids(outs) == token_ids(eager)
    assert [lp.keys() for lp in outs[3].outputs[0].logprobs] == [lp.keys() for lp in eager[3].outputs[0].logprobs]
    assert counts["padded"] > 0


class OracleDrafts(ProposerBase):
    """Drafts the known greedy continuation with one token spoiled at a position that cycles through 0..k, so
    verification inside the padded forward accepts every possible number of drafts."""

    def __init__(self, expected: dict[tuple[int, ...], list[int]]) -> None:
        self.expected = expected
        self.calls = 0

    def propose(self, batch):
        drafts = []
        for r in batch.requests:
            prompt, done = tuple(r.token_ids[: r.num_prompt_tokens]), len(r.token_ids) - r.num_prompt_tokens
            d = list(self.expected[prompt][done : done + r.max_num_drafts])
            self.calls += 1
            spoil = self.calls % (r.max_num_drafts + 1)
            if spoil < len(d):
                d[spoil] = (d[spoil] + 1) % 300
            drafts.append(d)
        return Drafts(drafts)


def oracle_manager(proposer: OracleDrafts) -> ProposerManager:
    plugin = types.SimpleNamespace()
    plugin.tokenleap_register_proposers = hookimpl(lambda: [ProposerSpec("oracle", lambda cfg, ctx: proposer)])
    mgr = ProposerManager()
    mgr.register(plugin, name="oracle-drafts")
    return mgr


@pytest.mark.parametrize("k", [1, 4])
def test_verification_in_padded_path_equals_plain(folder, eager_greedy, k):
    expected = {tuple(p["prompt_token_ids"]): t for p, t in zip(PROMPTS, eager_greedy, strict=True)}
    llm = tiny_llm(folder, padded=True, max_num_seqs=4, proposer_manager=oracle_manager(OracleDrafts(expected)),
                   speculative_config={"method": "oracle", "num_speculative_tokens": k})
    counts = count_launches(llm)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == eager_greedy
    per_pos = llm.engine.counters.spec.num_accepted_tokens_per_pos
    assert len(per_pos) == k and all(n > 0 for n in per_pos)  # every draft position was accepted sometimes
    assert llm.engine.counters.spec.num_accepted_tokens < llm.engine.counters.spec.num_draft_tokens
    assert counts["ahead"] == 0 and counts["padded"] > 0  # a proposer needs each step's tokens first


def test_ngram_in_padded_path_equals_plain(folder, eager_greedy):
    llm = tiny_llm(folder, padded=True, max_num_seqs=4, speculative_config=NGRAM)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == eager_greedy
    assert llm.engine.counters.spec.num_draft_tokens > 0


@pytest.mark.parametrize("cycling", [False, True])
@pytest.mark.parametrize("max_num_seqs", [1, 4])
def test_device_drafting_equals_plain_and_host_drafting(folder, eager_greedy, max_num_seqs, cycling):
    """ngram declares prompt lookup, so verify steps draft on the device and are launched behind the verify step
    before them: the tokens of plain decoding, and the drafts of host drafting (same draft and accepted counts,
    per position), with most verify steps launched ahead. Drafts near each request's max_tokens are cut as the
    host cuts them (the limits of MAX_TOKENS fall inside the runs). ``cycling``: a model whose drafts are
    often accepted (several tokens appended to the device's history per step)."""
    prep = without_attention_output if cycling else (lambda llm: llm)
    want = eager_greedy
    if cycling:
        want = token_ids(prep(tiny_llm(folder, padded=False)).generate(PROMPTS, GREEDY, use_tqdm=False))
    host = prep(tiny_llm(folder, padded=True, max_num_seqs=max_num_seqs, speculative_config=NGRAM,
                         device_drafting=False))
    assert token_ids(host.generate(PROMPTS, GREEDY, use_tqdm=False)) == want
    llm = prep(tiny_llm(folder, padded=True, max_num_seqs=max_num_seqs, speculative_config=NGRAM))
    drafter = llm.engine.runner.graphs.drafter
    assert isinstance(drafter, PromptLookupDrafter) and (drafter.lo, drafter.hi) == (1, 3)
    counts = count_launches(llm)
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == want
    assert spec_totals(llm) == spec_totals(host) and spec_totals(llm)[0] > 0
    if cycling:
        assert spec_totals(llm)[1] > 0.25 * spec_totals(llm)[0] and spec_totals(llm)[2][-1] > 0  # all 3, at times
    assert counts["ahead"] > 0.5 * counts["padded"]
    assert llm.engine._in_flight is None and llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


def test_device_drafting_stops_like_plain_decoding(folder, eager_greedy):
    """Stop token ids and stop strings met inside a verify step with the next one already launched behind it:
    that step is ignored; tokens, text and finish reasons are plain decoding's."""
    plain = tiny_llm(folder, padded=False).generate(PROMPTS, GREEDY, use_tqdm=False)
    texts = [o.outputs[0].text for o in plain]
    params = [
        SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, stop_token_ids=[toks[len(toks) // 2]])
        if i % 2 else
        SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, stop=[t[len(t) // 2 : len(t) // 2 + 2]])
        for i, (m, toks, t) in enumerate(zip(MAX_TOKENS, eager_greedy, texts, strict=True))
    ]
    want = tiny_llm(folder, padded=False).generate(PROMPTS, params, use_tqdm=False)
    llm = tiny_llm(folder, padded=True, max_num_seqs=3, speculative_config=NGRAM)
    counts = count_launches(llm)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert [(o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs] == [
        (o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in want]
    assert {o.outputs[0].finish_reason for o in outs} == {"stop"} and counts["ahead"] > 0
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


@pytest.mark.parametrize("spec", [None, NGRAM])
def test_step_launched_behind_a_finishing_one_is_not_waited_for(folder, eager_greedy, spec):
    """A request that stops (here at a stop token) inside a step with the next one already launched behind it is
    handed back without waiting for that next step: generate() returns with it still "on the device"; the next
    launch waits for it first (its staging and read-back buffers get reused), and nothing else changes."""
    one = [PROMPTS[1]]
    params = [SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[eager_greedy[1][20]])]
    want = token_ids(tiny_llm(folder, padded=False).generate(one, params, use_tqdm=False))
    llm = tiny_llm(folder, padded=True, max_num_seqs=1, speculative_config=spec)
    eng, events = llm.engine, []
    assert token_ids(llm.generate(one, params, use_tqdm=False)) == want
    orphan = eng._orphan
    assert orphan is not None and eng._in_flight is None and orphan.result is None  # never read back
    assert eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks and not eng.has_unfinished_requests()
    wait, launch = orphan.wait, eng.runner.launch
    orphan.wait = lambda: (events.append("orphan waited"), wait())[1]
    eng.runner.launch = lambda *a, **kw: (events.append("launch"), launch(*a, **kw))[1]
    assert token_ids(llm.generate(one, params, use_tqdm=False)) == want
    assert events[:2] == ["orphan waited", "launch"] and events.count("orphan waited") == 1


def test_device_drafting_off_by_batch_size(folder, eager_greedy):
    """disable_by_batch_size switches drafting off for large batches: then nothing drafts on the device either
    (with 4 running requests and the limit at 2, no verify step is launched ahead while 2 or more run)."""
    spec = dict(NGRAM, disable_by_batch_size=2)
    llm = tiny_llm(folder, padded=True, max_num_seqs=4, speculative_config=spec)
    launch = llm.engine.runner.launch
    sizes = []

    def noting(scheduled, ahead_of=None, q=1):
        if ahead_of is not None and q > 1:
            sizes.append(len(scheduled))
        return launch(scheduled, ahead_of, q)

    llm.engine.runner.launch = noting
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == eager_greedy
    assert sizes and max(sizes) == 1


def test_verify_steps_launched_before_the_text(folder, eager_greedy):
    """With a proposer, the next verify step is launched as soon as the drafts are in, and this step's text is
    made while it runs: most steps return with the next one in flight; tokens, text and finish reasons are
    those of plain decoding (one token per step, text token by token)."""
    plain = tiny_llm(folder, padded=False).generate(PROMPTS, GREEDY, use_tqdm=False)
    expected = {tuple(p["prompt_token_ids"]): t for p, t in zip(PROMPTS, eager_greedy, strict=True)}
    llm = tiny_llm(folder, padded=True, max_num_seqs=16, proposer_manager=oracle_manager(OracleDrafts(expected)),
                   speculative_config={"method": "oracle", "num_speculative_tokens": 4})
    eng = llm.engine
    step, returned = eng.step, []

    def noting_step():
        done = step()
        returned.append(eng._in_flight is not None)
        return done

    eng.step = noting_step
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert token_ids(outs) == eager_greedy
    assert [o.outputs[0].text for o in outs] == [o.outputs[0].text for o in plain]
    assert all(o.outputs[0].text for o in outs)
    assert eng.counters.spec.num_accepted_tokens > 0.3 * eng.counters.spec.num_draft_tokens  # text of many at once
    assert sum(returned) > 0.5 * len(returned)
    assert eng._in_flight is None and eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks


def test_add_and_abort_while_a_verify_step_is_in_flight(folder, eager_greedy):
    """A request added while a verify step is in flight joins at the step after it; aborting every request of
    the step in flight drops it; the engine is clean afterwards."""
    llm = tiny_llm(folder, padded=True, max_num_seqs=4, speculative_config=NGRAM)
    eng = llm.engine

    def add(i):
        eng.add_request(Request(f"r{i}", PROMPTS[i]["prompt_token_ids"], SP(temperature=0, max_tokens=40,
                                ignore_eos=True), 0, 0, 40, frozenset()))

    add(0)
    while eng._in_flight is None:
        eng.step()
    assert [s.request.request_id for s in eng._in_flight.scheduled] == ["r0"]
    add(1)
    eng.step()  # reads back the step in flight; r1 waits, so nothing is launched ahead of it
    assert eng._in_flight is None and eng.requests["r1"].num_computed_tokens == 0
    while eng._in_flight is None or len(eng._in_flight.scheduled) < 2:
        eng.step()
    eng.abort_request("r0")
    assert eng._in_flight is not None  # r1 still continues in it
    eng.abort_request("r1")
    assert eng._in_flight is None and not eng.has_unfinished_requests()
    assert eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == eager_greedy


def test_tight_kv_cache_falls_back_without_preempting(folder, eager_greedy):
    """With few blocks the step launched ahead cannot always get its slots: it is then not launched, and
    preemption by recompute happens in the normal schedule."""
    llm = tiny_llm(folder, padded=True, max_num_seqs=10, num_gpu_blocks_override=12)
    outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert token_ids(outs) == eager_greedy
    assert llm.engine.counters.num_preemptions > 0


def test_abort_while_a_step_is_in_flight(folder, eager_greedy):
    llm = tiny_llm(folder, padded=True, max_num_seqs=4)
    eng = llm.engine
    for i in range(2):
        eng.add_request(Request(f"r{i}", PROMPTS[i]["prompt_token_ids"], SP(temperature=0, max_tokens=50,
                                ignore_eos=True), 0, 0, 50, frozenset()))
    while eng._in_flight is None:
        eng.step()
    assert eng._in_flight.result is None  # launched, not read back yet
    eng.abort_request("r0")
    assert eng._in_flight is not None  # r1 still continues in it
    eng.abort_request("r1")
    assert eng._in_flight is None
    assert not eng.has_unfinished_requests()
    assert eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks
    # the engine is clean: the next batch gives the reference tokens
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == eager_greedy


def _decoding_request(rid: str, num_tokens: int, blocks, block_size: int) -> Request:
    """A running request whose first ``num_tokens - 1`` tokens are in the cache (the next step decodes)."""
    req = Request(rid, list(range(3, 3 + num_tokens)), SP(temperature=0, max_tokens=50), 0, 0, 50, frozenset())
    req.num_computed_tokens = num_tokens - 1
    req.block_ids = blocks.allocate(-(-(num_tokens) // block_size))
    return req


def test_schedule_ahead_reserves_the_next_slot_without_preempting():
    from tokenleap.engine.kv_cache import BlockManager
    from tokenleap.engine.request import RequestStatus
    from tokenleap.engine.scheduler import Scheduler

    blocks = BlockManager(num_blocks=6, block_size=4)
    sched = Scheduler(blocks, max_num_seqs=2, max_num_batched_tokens=64)
    a = _decoding_request("a", 4, blocks, 4)  # 1 block, full after this step's token
    b = _decoding_request("b", 6, blocks, 4)  # 2 blocks, room left
    for r in (a, b):
        r.status = RequestStatus.RUNNING
        sched.running.append(r)
    step = sched.schedule()
    assert [(s.request, s.num_new_tokens) for s in step.scheduled] == [(a, 1), (b, 1)]
    free = blocks.num_free_blocks
    ahead = sched.schedule_ahead(step.scheduled)
    assert [(s.request, s.num_new_tokens, s.num_spec_tokens) for s in ahead] == [(a, 1, 0), (b, 1, 0)]
    assert len(a.block_ids) == 2 and len(b.block_ids) == 2  # a's next token starts a new block
    assert blocks.num_free_blocks == free - 1
    # a waiting request that could be admitted: nothing is launched ahead (it is scheduled next instead)
    sched.running.remove(b)
    sched.waiting.append(b)
    assert sched.schedule_ahead([step.scheduled[0]]) is None
    # running at max_num_seqs: the waiting one could not be admitted anyway, so the step goes ahead
    sched.max_num_seqs = 1
    assert sched.schedule_ahead([step.scheduled[0]]) is not None


def test_schedule_ahead_gives_up_when_blocks_run_out():
    from tokenleap.engine.kv_cache import BlockManager
    from tokenleap.engine.request import RequestStatus
    from tokenleap.engine.scheduler import Scheduler

    blocks = BlockManager(num_blocks=3, block_size=4)  # 2 usable blocks
    sched = Scheduler(blocks, max_num_seqs=2, max_num_batched_tokens=64)
    a = _decoding_request("a", 4, blocks, 4)
    b = _decoding_request("b", 4, blocks, 4)
    for r in (a, b):
        r.status = RequestStatus.RUNNING
        sched.running.append(r)
    step = sched.schedule()
    assert sched.schedule_ahead(step.scheduled) is None  # both need a new block, none is free
    assert sched.running == [a, b] and not sched.waiting  # nobody was preempted for it
