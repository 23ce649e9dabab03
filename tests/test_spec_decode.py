"""Speculative decoding on SmolLM2-135M-Instruct (CPU): greedy output with n-gram speculation equals the
output without it, token for token, at batch size 1 and 8, k in {1, 3, 5}; in batches that mix drafted,
undrafted and prefilling requests; with stop conditions inside an accepted run; near max_model_len.
Acceptance metrics are checked against a count made by the test itself (an oracle proposer registered
through ``ProposerManager.register``).

Each engine configuration is built once per module (``smollm2_llm_factory`` shares the loaded weights);
every configuration runs all of its prompts in one ``generate`` call.
"""

from __future__ import annotations

import random

import pytest
from helpers.spec_prompts import all_prompts, chat_token_ids, code_prompts, summary_prompts
from tokenleap import SamplingParams
from tokenleap_plugins import Drafts, ProposerBase, ProposerManager, ProposerSpec, hookimpl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]  # see tests/conftest.py

MAX_TOKENS = 32
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
KV_BYTES = 96 << 20  # 130 blocks of 16 tokens: room for 8 requests of ~250 tokens


def ngram(k: int) -> dict:
    return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_max": 3, "prompt_lookup_min": 1}




@pytest.fixture(scope="module")
def engines(smollm2_llm_factory):
    """``engines(name, **llm_kwargs)``: an LLM built once per distinct name in this module."""
    cache: dict[str, object] = {}

    def get(name: str, **kwargs):
        if name not in cache:
            kwargs.setdefault("kv_cache_memory_bytes", KV_BYTES)
            cache[name] = smollm2_llm_factory(**kwargs)
        return cache[name]

    yield get
    cache.clear()


@pytest.fixture(scope="module")
def prompts(smollm2_llm):
    return chat_token_ids(smollm2_llm.get_tokenizer(), all_prompts())


@pytest.fixture(scope="module")
def runs(engines, prompts):
    """``runs(batch, k)`` -> (outputs, spec metrics) of greedy generation over the 20 prompts; k=0: no
    speculation. Cached: each (batch, k) runs once."""
    cache: dict[tuple[int, int], tuple] = {}

    def get(batch: int, k: int):
        if (batch, k) not in cache:
            llm = engines(f"b{batch}-k{k}", max_num_seqs=batch, speculative_config=ngram(k) if k else None)
            outs = llm.generate(prompts, GREEDY, use_tqdm=False)
            cache[batch, k] = (outs, spec_metrics(llm))
        return cache[batch, k]

    return get


def spec_metrics(llm) -> dict:
    out = {}
    for m in llm.get_metrics():
        if m.name.startswith("tokenleap:spec_decode_"):
            out[m.name.removeprefix("tokenleap:spec_decode_")] = m.values if hasattr(m, "values") else m.value
    return out


def assert_same_outputs(got, want, what: str) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g, w = g.outputs[0], w.outputs[0]
        pairs = zip(g.token_ids, w.token_ids, strict=False)
        first = next((j for j, (a, b) in enumerate(pairs) if a != b), None)
        assert g.token_ids == w.token_ids, (
            f"{what}: prompt {i}: token ids differ at index {first}"
            f"\n speculative: {g.text!r}\n plain:       {w.text!r}"
        )
        assert (g.text, g.finish_reason, g.stop_reason) == (w.text, w.finish_reason, w.stop_reason), (
            f"{what}: {i}"
        )


def assert_metrics_consistent(metrics: dict, outputs) -> None:
    """Global invariants, and the global counters are the sums of the per-request ones."""
    drafts, tokens, accepted = (
        metrics["num_drafts"],
        metrics["num_draft_tokens"],
        metrics["num_accepted_tokens"],
    )
    per_pos = metrics["num_accepted_tokens_per_pos"] or []
    assert 0 <= accepted <= tokens and drafts <= tokens
    assert all(a >= b for a, b in zip(per_pos, per_pos[1:], strict=False)), per_pos
    assert sum(per_pos) == accepted
    assert not per_pos or per_pos[0] <= drafts
    stats = [o.metrics.spec_decode for o in outputs]
    assert sum(s.num_drafts for s in stats) == drafts
    assert sum(s.num_draft_tokens for s in stats) == tokens
    assert sum(s.num_accepted_tokens for s in stats) == accepted
    for s in stats:
        assert s.mean_acceptance_length == pytest.approx(1 + s.num_accepted_tokens / max(s.num_drafts, 1))
        assert s.num_accepted_tokens <= s.num_draft_tokens
        assert sum(s.num_accepted_tokens_per_pos) == s.num_accepted_tokens


# -- 1. greedy equality, batch 1 and 8, k in {1, 3, 5} ---------------------------------------------
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_ngram_equals_plain(runs, batch, k):
    plain, _ = runs(batch, 0)
    spec, metrics = runs(batch, k)
    assert_same_outputs(spec, plain, f"ngram k={k}, max_num_seqs={batch}")
    assert_metrics_consistent(metrics, spec)
    assert len(metrics["num_accepted_tokens_per_pos"]) == k
    # the verification path really ran: drafts were made and accepted, in code editing and summaries alike
    assert metrics["num_accepted_tokens"] > 0 and metrics["num_accepted_tokens"] < metrics["num_draft_tokens"]
    n_code, n_text = len(code_prompts()), len(summary_prompts())
    for name, part in (("code", spec[:n_code]), ("summaries", spec[n_code : n_code + n_text])):
        assert sum(o.metrics.spec_decode.num_accepted_tokens for o in part) > 0, name
    # each sampling step emits accepted + 1 tokens, fewer only when a stop ends a request inside its run
    steps = sum(o.metrics.num_generation_steps for o in spec)
    tokens = sum(len(o.outputs[0].token_ids) for o in spec)
    stopped = sum(o.outputs[0].finish_reason == "stop" for o in spec)
    assert 0 <= steps + metrics["num_accepted_tokens"] - tokens <= k * stopped
    assert steps < tokens


def test_plain_runs_reach_max_tokens_mostly(runs):
    """Sanity of the workload: the outputs are long enough that speculation had room to act."""
    plain, _ = runs(8, 0)
    assert sum(o.outputs[0].finish_reason == "length" for o in plain) >= 10


# -- 2. batches mixing drafted, undrafted and prefilling requests ----------------------------------
def test_mixed_batches_with_chunked_prefill(engines, prompts):
    """max_num_batched_tokens=40: prompts (~60-180 tokens) prefill in chunks over several steps while earlier
    requests decode, some with drafts (code) and some without (chat)."""
    mixed = [prompts[i] for i in (0, 15, 8, 16, 1, 17, 9, 18, 2, 19, 10, 3)]
    outs = {}
    for k in (0, 3):
        llm = engines(
            f"chunked-k{k}",
            max_num_seqs=8,
            max_num_batched_tokens=40,
            speculative_config=ngram(k) if k else None,
        )
        steps = []
        launch = llm.engine.runner.launch

        def recording(scheduled, ahead_of=None, q=1, launch=launch, steps=steps):
            steps.append([(s.num_new_tokens, s.num_spec_tokens, s.samples) for s in scheduled])
            return launch(scheduled, ahead_of, q)

        llm.engine.runner.launch = recording
        outs[k] = llm.generate(mixed, GREEDY, use_tqdm=False)
        if k:
            metrics = spec_metrics(llm)
            mixed_steps = [
                s
                for s in steps
                if any(spec > 0 for _, spec, _ in s)  # verifying drafts
                and any(new == 1 and spec == 0 and smp for new, spec, smp in s)  # plain decode
                and any(not smp for _, _, smp in s)
            ]  # a prefill chunk that does not sample yet
            assert mixed_steps, "no step mixed drafted, undrafted and prefilling requests"
            assert metrics["num_accepted_tokens"] > 0
            assert_metrics_consistent(metrics, outs[k])
        assert max(sum(new + spec for new, spec, _ in s) for s in steps) <= 40
    assert_same_outputs(outs[3], outs[0], "chunked prefill, max_num_batched_tokens=40")


# -- 3. stop conditions inside an accepted run -----------------------------------------------------
def test_stop_conditions_inside_accepted_runs(engines, prompts, runs):
    """For code prompts, find verification steps that accepted >= 2 drafts; put max_tokens, a stop string and
    a stop token id inside such a run; outputs equal the plain ones (text, token ids, finish/stop reason)."""
    llm = engines("b8-k5")
    plain_llm = engines("b8-k0")
    tok = llm.get_tokenizer()
    record: dict[str, list] = {}
    verified = llm.engine.driver.verified

    def recording(results):
        for r in results:
            record.setdefault(r.request_id, []).append(r)
        verified(results)

    llm.engine.driver.verified = recording
    code = prompts[: len(code_prompts())]
    first = llm.generate(code, GREEDY, use_tqdm=False)

    cases: list[tuple[dict, SamplingParams]] = []
    for out in first:
        ids = out.outputs[0].token_ids
        done = 0
        for v in record[out.request_id]:
            if v.num_accepted_tokens >= 2 and done + v.num_accepted_tokens < len(ids):
                inside = done + 1  # the second token of the run: an accepted draft, not the bonus
                cases.append(
                    (
                        {"prompt_token_ids": out.prompt_token_ids},
                        SamplingParams(temperature=0, max_tokens=inside + 1),
                    )
                )
                for j in range(inside, done + v.num_accepted_tokens):
                    piece = tok.decode(ids[j : j + 1]).strip()
                    if len(piece) >= 2 and piece not in tok.decode(ids[:j]):
                        for incl in (False, True):
                            cases.append(
                                (
                                    {"prompt_token_ids": out.prompt_token_ids},
                                    SamplingParams(
                                        temperature=0,
                                        max_tokens=MAX_TOKENS,
                                        stop=piece,
                                        include_stop_str_in_output=incl,
                                    ),
                                )
                            )
                        break
                if ids[inside] not in ids[:inside]:
                    cases.append(
                        (
                            {"prompt_token_ids": out.prompt_token_ids},
                            SamplingParams(
                                temperature=0, max_tokens=MAX_TOKENS, stop_token_ids=[ids[inside]]
                            ),
                        )
                    )
                break
            done += len(v.new_token_ids)
    kinds = {
        ("max_tokens" if p.max_tokens != MAX_TOKENS else "stop" if p.stop else "stop_token_ids")
        for _, p in cases
    }
    assert kinds == {"max_tokens", "stop", "stop_token_ids"}, kinds

    record.clear()
    prompts_, params = [c[0] for c in cases], [c[1] for c in cases]
    spec = llm.generate(prompts_, params, use_tqdm=False)
    plain = plain_llm.generate(prompts_, params, use_tqdm=False)
    assert_same_outputs(spec, plain, "stop conditions")
    truncated = 0
    for out, p in zip(spec, params, strict=True):
        o = out.outputs[0]
        last = record[out.request_id][-1]
        assert o.finish_reason in ("stop", "length")
        if p.max_tokens != MAX_TOKENS:
            assert len(o.token_ids) == p.max_tokens and o.finish_reason == "length"
        else:
            assert o.finish_reason == "stop" and o.stop_reason in (p.stop, *(p.stop_token_ids or []))
        # the stop fell inside the last step's accepted run: fewer tokens kept than accepted + 1
        truncated += len(last.new_token_ids) < last.num_accepted_tokens + 1
    assert truncated >= 2, "no stop condition fell inside an accepted run"


# -- 4. near max_model_len -------------------------------------------------------------------------
def test_speculation_near_max_model_len(engines, prompts):
    """max_model_len just above the prompts: generation runs into it; drafts are capped so that nothing
    exceeds it, and the outputs equal the plain ones."""
    chosen = [p for p in prompts[: len(code_prompts()) + len(summary_prompts())]][:8]
    max_len = max(len(p["prompt_token_ids"]) for p in chosen) + 12
    unlimited = SamplingParams(temperature=0, max_tokens=None)
    outs, record = {}, []
    for k in (0, 5):
        llm = engines(
            f"maxlen-k{k}", max_num_seqs=8, max_model_len=max_len, speculative_config=ngram(k) if k else None
        )
        assert llm.engine.max_model_len == max_len
        if k:
            verified = llm.engine.driver.verified
            llm.engine.driver.verified = lambda results, verified=verified: (
                record.extend(results),
                verified(results),
            )
        outs[k] = llm.generate(chosen, unlimited, use_tqdm=False)
    assert_same_outputs(outs[5], outs[0], f"max_model_len={max_len}")
    for out in outs[5]:
        total = len(out.prompt_token_ids) + len(out.outputs[0].token_ids)
        assert total <= max_len
        if out.outputs[0].finish_reason == "length":
            assert total == max_len
    assert sum(o.outputs[0].finish_reason == "length" for o in outs[5]) >= 4
    assert sum(r.num_accepted_tokens for r in record) > 0


# -- 5. metrics against the test's own count (oracle proposer) -------------------------------------
class OracleProposer(ProposerBase):
    """Knows the greedy continuation of each prompt; drafts ``a`` right tokens, then (if the draft is longer)
    a wrong one and random ones, with ``a`` and the draft length drawn from a per-(request, step) rng.
    Records what it proposed and what ``on_verified`` reported. ``strict``: every draft is verified as
    proposed (no preemption, enough token budget); else a draft may be dropped (verified with 0 drafts)."""

    def __init__(self, truth: dict[tuple, list[int]], vocab: int, log: dict, strict: bool = True) -> None:
        self.truth, self.vocab, self.log, self.strict = truth, vocab, log, strict
        self.pending: dict[str, tuple[int, int]] = {}  # request -> (drafts, right ones) proposed last

    def propose(self, batch):
        out = []
        for r in batch.requests:
            truth = self.truth[tuple(r.token_ids[: r.num_prompt_tokens])]
            done = len(r.token_ids) - r.num_prompt_tokens
            assert list(r.token_ids[r.num_prompt_tokens :]) == truth[:done]
            rng = random.Random(f"{r.request_id}/{done}")
            n = rng.randint(
                0, min(r.max_num_drafts, len(truth) - done - 1)
            )  # never past the known continuation
            right = rng.randint(0, n)
            draft = truth[done : done + right]
            if right < n:
                draft += [(truth[done + right] + 1 + rng.randrange(self.vocab - 1)) % self.vocab]
                draft += [rng.randrange(self.vocab) for _ in range(n - right - 1)]
            self.pending[r.request_id] = (n, right)
            self.log["proposed"].append((r.request_id, n, right))
            out.append(draft)
        return Drafts(out)

    def on_verified(self, results):
        for v in results:
            n, right = self.pending.pop(v.request_id, (0, 0))
            self.log["verified"].append((v.request_id, v.num_draft_tokens, v.num_accepted_tokens))
            if not self.strict and v.num_draft_tokens == 0:
                continue
            assert (v.num_draft_tokens, v.num_accepted_tokens) == (n, right), v


class OraclePlugin:
    def __init__(self, truth, strict: bool = True):
        self.truth, self.strict, self.log = truth, strict, {"proposed": [], "verified": []}

    @hookimpl
    def tokenleap_register_proposers(self):
        return [
            ProposerSpec(
                method="oracle",
                build=lambda cfg, ctx: OracleProposer(self.truth, ctx.vocab_size, self.log, self.strict),
            )
        ]


def test_metrics_match_own_count(runs, prompts, smollm2_llm_factory):
    plain, _ = runs(8, 0)
    truth = {tuple(o.prompt_token_ids): list(o.outputs[0].token_ids) for o in plain}
    plugin = OraclePlugin(truth)
    manager = ProposerManager(env={})
    manager.register(plugin)
    k = 4
    llm = smollm2_llm_factory(
        max_num_seqs=8,
        kv_cache_memory_bytes=KV_BYTES,
        proposer_manager=manager,
        speculative_config={"method": "oracle", "num_speculative_tokens": k},
    )
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert_same_outputs(outs, plain, "oracle proposer")

    # expected counters from what the proposer itself did
    verified = [v for v in plugin.log["verified"] if v[1] > 0]
    proposed = [p for p in plugin.log["proposed"] if p[1] > 0]
    assert sorted(verified) == sorted(proposed)  # every non-empty draft was verified once, as proposed
    exp = {
        "num_drafts": len(proposed),
        "num_draft_tokens": sum(n for _, n, _ in proposed),
        "num_accepted_tokens": sum(a for _, _, a in proposed),
    }
    per_pos = [sum(a > i for _, _, a in proposed) for i in range(max(n for _, n, _ in proposed))]
    metrics = spec_metrics(llm)
    assert {key: metrics[key] for key in exp} == exp
    assert metrics["num_accepted_tokens_per_pos"] == per_pos
    assert exp["num_accepted_tokens"] > 0 and exp["num_accepted_tokens"] < exp["num_draft_tokens"]
    assert_metrics_consistent(metrics, outs)
    for out in outs:
        mine = [p for p in proposed if p[0] == out.request_id]
        s = out.metrics.spec_decode
        assert (s.num_drafts, s.num_draft_tokens, s.num_accepted_tokens) == (
            len(mine),
            sum(n for _, n, _ in mine),
            sum(a for _, _, a in mine),
        )
        assert s.mean_acceptance_length == pytest.approx(1 + sum(a for _, _, a in mine) / max(len(mine), 1))
        assert s.num_accepted_tokens_per_pos == [
            sum(a > i for _, _, a in mine) for i in range(max((n for _, n, _ in mine), default=0))
        ]
    # the engine's own mean acceptance length (what it logs) is 1 + accepted / drafts
    spec = llm.engine.counters.spec
    assert spec.mean_acceptance_length == pytest.approx(1 + exp["num_accepted_tokens"] / exp["num_drafts"])
    assert spec.per_position_acceptance_rate == pytest.approx([c / exp["num_drafts"] for c in per_pos])


# -- 6. request options under speculation (tiny model, oracle drafts: many accepted runs) ---------
OPTIONS = {
    "repetition_penalty": SamplingParams(
        temperature=0, max_tokens=40, repetition_penalty=1.3, ignore_eos=True
    ),
    "frequency_presence": SamplingParams(
        temperature=0, max_tokens=40, frequency_penalty=0.5, presence_penalty=0.3, ignore_eos=True
    ),
    "min_tokens": SamplingParams(temperature=0, max_tokens=40, min_tokens=20),
    "stop_token_ids": SamplingParams(
        temperature=0, max_tokens=40, stop_token_ids=[7, 8, 9, 10, 11], ignore_eos=True
    ),
    "logprobs": SamplingParams(temperature=0, max_tokens=24, logprobs=3, ignore_eos=True),
    # the grammar's state and the bans follow the accepted tokens through preemption (docs/sampling.md)
    "structured_outputs": SamplingParams(temperature=0, max_tokens=40, structured_outputs={"regex": "[a-z ]{30,60}"}),
    "token_controls": SamplingParams(
        temperature=0, max_tokens=40, logit_bias={5: 3.0, 17: -50.0}, bad_words=["the", "on"], ignore_eos=True
    ),
}


@pytest.mark.parametrize("preempting", [False, True], ids=["roomy-kv", "preempting-kv"])
def test_request_options_with_drafts_equal_plain(tiny_checkpoint, preempting):
    """Penalties (which see accepted drafts as context), min_tokens bans, stop token ids, logprobs, and
    preemption by recompute (a KV cache too small for the batch): all unchanged by speculation."""
    from tokenleap import LLM

    rng = random.Random(0)
    prompts = [
        {"prompt_token_ids": [rng.randrange(3, 300) for _ in range(rng.randint(5, 40))]} for _ in range(16)
    ]
    truth: dict[tuple, list[int]] = {}
    plugin = OraclePlugin(truth, strict=not preempting)
    manager = ProposerManager(env={})
    manager.register(plugin)
    kw = dict(
        max_model_len=256, disable_log_stats=True, kv_cache_memory_bytes=300_000 if preempting else 8 << 20
    )
    model = str(tiny_checkpoint("llama"))
    plain = LLM(model, **kw)
    spec = LLM(
        model,
        speculative_config={"method": "oracle", "num_speculative_tokens": 4},
        proposer_manager=manager,
        **kw,
    )
    for name, params in OPTIONS.items():
        want = plain.generate(prompts, params, use_tqdm=False)
        truth.clear()
        truth.update({tuple(o.prompt_token_ids): list(o.outputs[0].token_ids) for o in want})
        before = spec.engine.counters.spec.num_accepted_tokens
        got = spec.generate(prompts, params, use_tqdm=False)
        assert_same_outputs(got, want, name)
        assert spec.engine.counters.spec.num_accepted_tokens - before > 100, name
        if params.logprobs is not None:
            for g, w in zip(got, want, strict=True):
                g, w = g.outputs[0], w.outputs[0]
                assert [list(s) for s in g.logprobs] == [list(s) for s in w.logprobs]
                for gs, ws in zip(g.logprobs, w.logprobs, strict=True):
                    for t in gs:
                        assert gs[t].logprob == pytest.approx(ws[t].logprob, abs=1e-4)
                        assert gs[t].rank == ws[t].rank
                assert g.cumulative_logprob == pytest.approx(w.cumulative_logprob, abs=1e-3)
    assert (spec.engine.counters.num_preemptions > 0) == preempting
