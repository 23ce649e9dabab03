"""The scheduler changes when tokens are computed, never which: prompts of different lengths generated
together (continuous batching, chunked prefill, preemption by recompute, prefix caching, priority order)
give exactly the tokens each prompt gives alone."""

from __future__ import annotations

import random

import pytest
from tokenleap import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("torch_one_thread")

BLOCK = 16
LENGTHS = [3, 7, 12, 20, 33, 47, 60, 75, 90, 110, 5, 140, 9, 25, 160, 66]  # 16 prompts
MAX_TOKENS = [8, 40, 16, 24, 12, 32, 20, 40, 8, 28, 36, 16, 40, 12, 24, 30]


def make_prompts(lengths, seed=0, prefix=()):
    rng = random.Random(seed)
    return [{"prompt_token_ids": list(prefix) + [rng.randrange(3, 300) for _ in range(n)]} for n in lengths]


PROMPTS = make_prompts(LENGTHS)
GREEDY = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
# every other prompt samples (seeded): the noise depends only on (seed, position), so it must survive
# batching and preemption too
MIXED = [
    g
    if i % 2 == 0
    else SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=100 + i, max_tokens=m, ignore_eos=True)
    for i, (g, m) in enumerate(zip(GREEDY, MAX_TOKENS, strict=True))
]
WITH_LOGPROBS = (4, 7, 14)  # a few requests also return logprobs: they must not change either
for _i in WITH_LOGPROBS:
    MIXED[_i] = MIXED[_i].model_copy(update={"logprobs": 3})


def metric(llm: LLM, name: str) -> float:
    return next(m.value for m in llm.get_metrics() if m.name == "tokenleap:" + name)


def token_ids(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):
    return tiny_checkpoint("llama")


def tiny_llm(folder, **kwargs) -> LLM:
    kwargs.setdefault("num_gpu_blocks_override", 256)
    return LLM(model=str(folder), disable_log_stats=True, block_size=BLOCK, **kwargs)


@pytest.fixture(scope="module")
def reference(folder):
    """Each prompt generated alone (one request in the engine at a time), greedy and mixed params."""
    llm = tiny_llm(folder, enable_prefix_caching=False)

    def alone_outputs(prompts, params):
        return [
            llm.generate(p, sp, use_tqdm=False)[0].outputs[0] for p, sp in zip(prompts, params, strict=True)
        ]

    def alone(prompts, params):
        return [c.token_ids for c in alone_outputs(prompts, params)]

    mixed = alone_outputs(PROMPTS, MIXED)
    greedy = [mixed[i].token_ids if i % 2 == 0 else alone([PROMPTS[i]], [GREEDY[i]])[0] for i in range(16)]
    return {"greedy": greedy, "mixed": [c.token_ids for c in mixed], "mixed_outputs": mixed, "alone": alone}


def assert_same_logprobs(outs, reference):
    for i in WITH_LOGPROBS:
        got, want = outs[i].outputs[0], reference["mixed_outputs"][i]
        assert len(got.logprobs) == len(want.logprobs) == len(got.token_ids)
        for g, w in zip(got.logprobs, want.logprobs, strict=True):
            assert set(g) == set(w)
            for t in g:
                assert g[t].rank == w[t].rank and g[t].logprob == pytest.approx(
                    w[t].logprob, abs=1e-4
                )  # float32 noise of batching
        assert got.cumulative_logprob == pytest.approx(want.cumulative_logprob, abs=1e-3)


def test_reference_is_not_degenerate(reference):
    ref = reference["greedy"]
    assert [len(t) for t in ref] == MAX_TOKENS
    assert len({tuple(t[:8]) for t in ref}) == len(ref)
    # the sampled prompts really sample: they differ from greedy
    assert all(reference["mixed"][i] != ref[i] for i in range(1, 16, 2))


def test_continuous_batching(folder, reference):
    llm = tiny_llm(folder, max_num_seqs=4)
    outs = llm.generate(PROMPTS, MIXED, use_tqdm=False)
    assert token_ids(outs) == reference["mixed"]
    assert_same_logprobs(outs, reference)
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    m = [o.metrics for o in outs]
    # at most 4 ran at once, and requests joined while others were still running
    events = sorted([(x.first_scheduled_time, 1) for x in m] + [(x.finished_time, -1) for x in m])
    running = peak = 0
    for _, d in events:
        running += d
        peak = max(peak, running)
    assert peak == 4
    joined_late = [
        j
        for j in range(16)
        if any(m[i].first_scheduled_time < m[j].first_scheduled_time < m[i].finished_time for i in range(16))
    ]
    assert len(joined_late) >= 12


@pytest.mark.parametrize("budget", [64, 37])
def test_chunked_prefill(folder, reference, budget):
    llm = tiny_llm(folder, max_num_batched_tokens=budget)
    outs = llm.generate(PROMPTS, MIXED, use_tqdm=False)
    assert token_ids(outs) == reference["mixed"]
    assert_same_logprobs(outs, reference)
    # prompts longer than the budget had to be split over several steps
    assert max(LENGTHS) > budget
    assert llm.engine.counters.num_steps >= -(-sum(LENGTHS) // budget)
    assert all(o.metrics.num_generation_steps == len(o.outputs[0].token_ids) for o in outs)


@pytest.mark.parametrize("prefix_caching, budget", [(False, None), (True, None), (True, 32)])
def test_preemption_by_recompute(folder, reference, prefix_caching, budget):
    # 24 blocks of 16 tokens: the longest request alone needs 12 (160 + 24 tokens), all 16 need ~70;
    # with a 32-token budget, requests are also preempted in the middle of a chunked prefill
    llm = tiny_llm(
        folder,
        num_gpu_blocks_override=24,
        enable_prefix_caching=prefix_caching,
        max_num_batched_tokens=budget,
    )
    outs = llm.generate(PROMPTS, MIXED, use_tqdm=False)
    assert metric(llm, "num_preemptions") > 0
    assert sum(o.metrics.num_preemptions for o in outs) == metric(llm, "num_preemptions")
    assert token_ids(outs) == reference["mixed"]
    assert_same_logprobs(outs, reference)
    assert all(o.outputs[0].finish_reason == "length" for o in outs)
    # the random prompts share no prefix: no prompt token was a cache hit, even though recomputing a
    # preempted request may reuse its own blocks (those hits are not prompt-cache hits)
    assert all(o.num_cached_tokens == 0 for o in outs)
    # nothing is leaked: every block is free (or cached and evictable) again
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


def test_preemption_with_n_completions(folder, reference):
    prompts = [PROMPTS[i] for i in (7, 9, 11, 14)]
    sp = SamplingParams(n=3, temperature=1.0, top_k=40, seed=5, max_tokens=24, ignore_eos=True)
    solo = tiny_llm(folder)
    want = [[c.token_ids for c in solo.generate(p, sp, use_tqdm=False)[0].outputs] for p in prompts]
    assert all(len({tuple(t) for t in w}) == 3 for w in want)
    llm = tiny_llm(folder, num_gpu_blocks_override=20)
    outs = llm.generate(prompts, sp, use_tqdm=False)
    assert metric(llm, "num_preemptions") > 0
    assert [[c.token_ids for c in o.outputs] for o in outs] == want
    assert [[c.index for c in o.outputs] for o in outs] == [[0, 1, 2]] * 4


def test_prefix_caching_reuses_blocks_and_keeps_tokens(folder, reference):
    shared = [random.Random(7).randrange(3, 300) for _ in range(70)]
    prompts = make_prompts([5, 9, 14, 30, 1, 22], seed=3, prefix=shared)
    prompts.append({"prompt_token_ids": list(prompts[0]["prompt_token_ids"])})  # an exact repeat
    params = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)] * len(prompts)
    want = reference["alone"](prompts, params)

    results = {}
    for name, kwargs in {
        "off": {"enable_prefix_caching": False},
        "on": {},
        "on-chunked": {"max_num_batched_tokens": 20},
    }.items():
        llm = tiny_llm(folder, **kwargs)
        first = llm.generate(prompts[0], params[0], use_tqdm=False)  # fills the cache
        rest = llm.generate(prompts[1:], params[1:], use_tqdm=False)
        results[name] = (first + rest, metric(llm, "prefix_cache_hits"))

    off, hits_off = results["off"]
    on, hits_on = results["on"]
    # a cached prefix followed by a chunked prefill of the rest: the same tokens and the same hits
    assert token_ids(results["on-chunked"][0]) == want
    assert [o.num_cached_tokens for o in results["on-chunked"][0]] == [o.num_cached_tokens for o in on]
    assert token_ids(off) == want
    assert token_ids(on) == want
    assert hits_off == 0 and all(o.num_cached_tokens == 0 for o in off)
    assert hits_on > 0
    assert on[0].num_cached_tokens == 0
    for o in on[1:]:
        n = len(o.prompt_token_ids)
        # full shared blocks are reused; at least one prompt token is always computed
        expected = min(len(shared) // BLOCK, (n - 1) // BLOCK) * BLOCK
        if o.prompt_token_ids == prompts[0]["prompt_token_ids"]:
            expected = (n - 1) // BLOCK * BLOCK
        assert o.num_cached_tokens == expected == o.metrics.num_cached_prompt_tokens
    assert hits_on == sum(o.num_cached_tokens for o in on)


@pytest.mark.parametrize("policy", ["priority", "fcfs"])
def test_priority_scheduling_order(folder, reference, policy):
    llm = tiny_llm(folder, scheduling_policy=policy, max_num_seqs=1)
    prio = [3, 0, 2, 1, 0]
    idx = [2, 5, 9, 11, 0]
    kwargs = {"priority": prio} if policy == "priority" else {}
    outs = llm.generate([PROMPTS[i] for i in idx], [GREEDY[i] for i in idx], use_tqdm=False, **kwargs)
    assert token_ids(outs) == [reference["greedy"][i] for i in idx]
    order = sorted(range(len(idx)), key=lambda j: outs[j].metrics.first_token_time)
    if policy == "priority":
        assert order == sorted(range(len(idx)), key=lambda j: (prio[j], j))  # lower value first, then arrival
    else:
        assert order == list(range(len(idx)))
    # max_num_seqs=1: one request at a time
    for a, b in zip(order, order[1:], strict=False):
        assert outs[a].metrics.finished_time <= outs[b].metrics.first_scheduled_time


@pytest.mark.slow
def test_smollm2_batched_chunked_preempted_equals_alone(smollm2_llm, smollm2_llm_factory):
    tok = smollm2_llm.get_tokenizer()
    questions = [
        "Name a fruit.",
        "What is 2 + 2? Explain.",
        "Write one sentence about cats.",
        "Why do we sleep?",
        "Give me a synonym for 'happy'.",
        "What is the boiling point of water?",
    ]
    prompts = []
    for q in questions:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
        )
        prompts.append({"prompt_token_ids": list(ids["input_ids"] if hasattr(ids, "keys") else ids)})
    params = [
        SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0.7, top_p=0.95, seed=11, max_tokens=24, ignore_eos=True),
    ] * 3
    want = [
        smollm2_llm.generate(p, sp, use_tqdm=False)[0].outputs[0].token_ids
        for p, sp in zip(prompts, params, strict=True)
    ]
    small = smollm2_llm_factory(
        num_gpu_blocks_override=14, max_model_len=200, max_num_batched_tokens=48, max_num_seqs=4
    )
    outs = small.generate(prompts, params, use_tqdm=False)
    assert metric(small, "num_preemptions") > 0
    assert token_ids(outs) == want
