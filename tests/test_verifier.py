"""The verifier preserves the target distribution (statistically), the fast path equals the reference
token for token, greedy equals the reference with one-hot p, and seeded sampling with speculation is
reproducible and distributed as the target at engine level.

Statistics. Every test draws with fixed seeds, so each is deterministic. The statistic is Pearson's
chi-square of the observed counts against the exact target probabilities (cells with expected count < 5
merged; an observed token outside the target's support fails at once). A correct verifier passes when the
p-value is above ALPHA = 1e-4; negative controls (a verifier that accepts every draft, and one that draws
the recovered token from p instead of normalize(max(p - q, 0))) run through the same statistic and must
give a p-value below 1e-12. The total-variation distance is also bounded (TV_BOUND).
"""

from __future__ import annotations

import random

import pytest
import torch
from tokenleap.sample import noise
from tokenleap.sample import sampler as sampler_mod
from tokenleap.sample.logits import RowParams, to_probs
from tokenleap.sample.sampler import SamplingBatch, sample
from tokenleap.speculative.verify import rejection_sample, verify_greedy, verify_reference

ALPHA = 1e-4  # a correct verifier fails with this probability over seed choices; the seeds are fixed
BIASED_ALPHA = 1e-12
TV_BOUND = 0.012  # sampling noise of 200k draws over <= ~60 cells is ~0.005
V = 12
N = 200_000
TEMPERATURE, TOP_P, TOP_K = 0.7, 0.9, 8


# -- statistics ------------------------------------------------------------------------------------
def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float, float]:
    """(statistic, p-value, total variation) of ``counts`` against ``probs`` (same shape, flattened)."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    n = counts.sum()
    outside = counts[probs == 0].sum().item()
    assert outside == 0, f"{outside} draws outside the target's support"
    expected = probs * n
    order = torch.argsort(expected, descending=True)
    exp_s, obs_s = expected[order], counts[order]
    big = exp_s >= 5
    exp_m = torch.cat([exp_s[big], exp_s[~big].sum()[None]]) if (~big).any() else exp_s[big]
    obs_m = torch.cat([obs_s[big], obs_s[~big].sum()[None]]) if (~big).any() else obs_s[big]
    keep = exp_m > 0
    stat = (((obs_m - exp_m) ** 2) / exp_m)[keep].sum()
    df = int(keep.sum()) - 1
    p_value = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2).item()
    tv = 0.5 * (counts / n - probs).abs().sum().item()
    return stat.item(), p_value, tv


def row_params(rows: int, temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K) -> RowParams:
    return RowParams(
        temperature=torch.full((rows,), temperature),
        top_k=torch.full((rows,), top_k, dtype=torch.int64),
        top_p=torch.full((rows,), top_p),
        min_p=torch.zeros(rows),
        seeds=torch.zeros(rows, dtype=torch.int64),
        streams=torch.zeros(rows, dtype=torch.int64),
        positions=torch.zeros(rows, dtype=torch.int64),
        any_top_k=top_k > 0,
        any_top_p=top_p < 1,
        any_min_p=False,
        any_greedy=temperature == 0,
        all_greedy=temperature == 0,
    )


# -- the model: a 2-position target and a draft that differs from it -------------------------------
def tables():
    g = torch.Generator().manual_seed(1234)
    target1 = torch.randn(V, generator=g) * 0.7  # logits of position 0
    target2 = torch.randn(V, V, generator=g) * 0.7  # logits of position i + 1 given token at i (Markov)
    # q: correlated with the target but clearly different (and non-zero where top-k/top-p cut p)
    draft1 = torch.softmax(target1 / 0.7 + torch.randn(V, generator=g) * 0.8, -1)  # q of position 0
    draft2 = torch.softmax(target2 / 0.7 + torch.randn(V, V, generator=g) * 0.8, -1)
    return target1, target2, draft1, draft2


def target_probs(logits: torch.Tensor) -> torch.Tensor:
    return to_probs(logits, row_params(logits.shape[0]))


def exact_distributions():
    t1, t2, _, _ = tables()
    p1 = target_probs(t1[None])[0]  # [V]
    p2 = target_probs(t2)  # [V, V]: row = previous token
    return p1, p1[:, None] * p2  # first token, joint of the first two


def speculative_draws(probabilistic: bool, seed_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """N independent requests (seed = index + offset) through the real sampler: 0, 1 or 2 drafts drawn from
    the draft model, verified; when only one token came out, the next step samples position 1 as the
    engine would (no drafts). Returns the first two emitted tokens [N], [N]."""
    t1, t2, d1, d2 = tables()
    gen = torch.Generator().manual_seed(99 + seed_offset)
    x1 = torch.multinomial(d1, N, replacement=True, generator=gen)  # [N]
    x2 = torch.multinomial(d2[x1], 1, generator=gen)[:, 0]  # [N]
    k = 2
    num_drafts = torch.arange(N) % 3  # 0, 1 or 2 drafts
    draft_ids = torch.stack([x1, x2], 1)
    logits = torch.stack([t1.expand(N, V), t2[x1], t2[x2]], 1).reshape(N * (k + 1), V)
    row_index = torch.arange(N * (k + 1)).view(N, k + 1)
    q = torch.stack([d1.expand(N, V), d2[x1]], 1) if probabilistic else None  # [N, k, V]
    seeds = torch.arange(N, dtype=torch.int64) + 1_000_003 * (1 + seed_offset)
    zeros = torch.zeros(N, dtype=torch.int64)
    batch = SamplingBatch(
        row_index=row_index,
        draft_ids=draft_ids,
        num_drafts=num_drafts,
        draft_probs=q,
        rows=row_params(N * (k + 1)),
        req_seeds=seeds,
        req_streams=zeros,
        req_output_lens=zeros,
    )
    tokens, emitted = sample(logits, batch)
    first = tokens[:, 0]
    second = tokens[:, 1].clone()
    alone = emitted == 1  # the next engine step samples position 1 from the target, no drafts
    m = int(alone.sum())
    nxt = SamplingBatch(
        row_index=torch.arange(m)[:, None],
        draft_ids=torch.zeros(m, 0, dtype=torch.int64),
        num_drafts=torch.zeros(m, dtype=torch.int64),
        draft_probs=None,
        rows=row_params(m),
        req_seeds=seeds[alone],
        req_streams=zeros[:m],
        req_output_lens=torch.ones(m, dtype=torch.int64),
    )
    more, n_more = sample(t2[first[alone]], nxt)
    assert (n_more == 1).all()
    second[alone] = more[:, 0]
    # the drafts really were verified: some accepted, some rejected
    has = num_drafts > 0
    acc = (emitted[has] - 1).float().mean().item()
    assert 0.05 < acc < 1.5, acc
    return first, second


def histograms(first, second):
    h1 = torch.bincount(first, minlength=V)
    h2 = torch.bincount(first * V + second, minlength=V * V).view(V, V)
    return h1, h2


@pytest.mark.parametrize("probabilistic", [True, False], ids=["q-given", "one-hot-drafts"])
def test_speculative_sampling_preserves_the_target(probabilistic):
    p1, joint = exact_distributions()
    assert (p1 > 0).sum() >= 4 and (p1 == 0).any()  # top-k/top-p truncate, several tokens stay
    h1, h2 = histograms(*speculative_draws(probabilistic))
    stat1, pv1, tv1 = chi_square(h1, p1)
    stat2, pv2, tv2 = chi_square(h2, joint)
    assert pv1 > ALPHA and tv1 < TV_BOUND, (stat1, pv1, tv1)
    assert pv2 > ALPHA and tv2 < TV_BOUND, (stat2, pv2, tv2)


def _accept_always(p, draft_ids, num_drafts, q, uniforms, draw):
    return rejection_sample(p, draft_ids, num_drafts, q, torch.zeros_like(uniforms), draw)


def _residual_is_p(p, draft_ids, num_drafts, q, uniforms, draw):
    rows = torch.arange(p.shape[0])
    return rejection_sample(p, draft_ids, num_drafts, q, uniforms, lambda dist, at: draw(p[rows, at], at))


def _coupled_accept_always(target_tokens, draft_ids, num_drafts):
    k = draft_ids.shape[1]
    tokens = target_tokens.clone()
    valid = torch.arange(k)[None, :] < num_drafts[:, None]
    tokens[:, :k] = torch.where(valid, draft_ids, tokens[:, :k])
    tokens[torch.arange(len(tokens)), num_drafts] = target_tokens[torch.arange(len(tokens)), num_drafts]
    return tokens, num_drafts + 1


@pytest.mark.parametrize(("biased", "probabilistic"), [
    (_accept_always, True), (_residual_is_p, True), (_coupled_accept_always, False),
], ids=["q-given-accept-always", "q-given-residual-is-p", "one-hot-drafts-coupled-accept-always"])
def test_the_statistic_detects_a_biased_verifier(monkeypatch, biased, probabilistic):
    """Negative controls: the same draws and statistic reject verifiers with a classic bug (q-given drafts go
    through rejection sampling, one-hot drafts through coupled verification)."""
    monkeypatch.setattr(sampler_mod, "verify_coupled" if biased is _coupled_accept_always else "rejection_sample",
                        biased)
    p1, joint = exact_distributions()
    first, second = speculative_draws(probabilistic)
    if biased in (_accept_always, _coupled_accept_always):  # tokens outside the support: the support check fails
        with pytest.raises(AssertionError, match="outside the target's support"):
            chi_square(*histograms(first, second)[:1], p1)
        h1 = torch.bincount(first, minlength=V)
        h1[p1 == 0] = 0  # and even inside the support the distribution is wrong
        p_in = p1.clone()
        _, pv, _ = chi_square(h1, p_in)
    else:
        h1, h2 = histograms(first, second)
        _, pv1, _ = chi_square(h1, p1)
        _, pv2, _ = chi_square(h2, joint)
        pv = min(pv1, pv2)
    assert pv < BIASED_ALPHA, pv


# -- fast path == reference ------------------------------------------------------------------------
def _random_case(rng: torch.Generator, batch: int, k: int, vocab: int, with_q: bool, greedy_rows: bool):
    logits = torch.randn(batch, k + 1, vocab, generator=rng) * 2
    p = torch.softmax(logits, -1)
    p = torch.where(
        torch.rand(p.shape, generator=rng) < 0.3, torch.zeros_like(p), p
    )  # zeros, as top-k leaves
    p[..., 0] += 1e-3
    p = p / p.sum(-1, keepdim=True)
    if greedy_rows:
        p = torch.nn.functional.one_hot(p.argmax(-1), vocab).float()
    q = torch.softmax(torch.randn(batch, k, vocab, generator=rng) * 2, -1) if with_q else None
    if with_q:
        draft_ids = torch.multinomial(q.reshape(-1, vocab), 1, generator=rng).view(batch, k)
    else:  # deterministic drafters often propose the target's own argmax: mix both
        draft_ids = torch.where(
            torch.rand(batch, k, generator=rng) < 0.5,
            p[:, :k].argmax(-1),
            torch.randint(vocab, (batch, k), generator=rng),
        )
    num_drafts = torch.randint(0, k + 1, (batch,), generator=rng)
    seeds = torch.randint(0, 1 << 62, (batch,), generator=rng)
    return p, draft_ids, num_drafts, q, seeds


@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("greedy_rows", [False, True])
@pytest.mark.parametrize("k", [0, 1, 4])
def test_rejection_sample_equals_reference(with_q, greedy_rows, k):
    rng = torch.Generator().manual_seed(k * 10 + with_q * 2 + greedy_rows)
    batch, vocab = 400, 9
    p, draft_ids, num_drafts, q, seeds = _random_case(rng, batch, k, vocab, with_q and k > 0, greedy_rows)
    streams = torch.zeros(batch, dtype=torch.int64)
    out_len = torch.randint(0, 50, (batch,), generator=rng)
    uniforms = noise.uniform(
        seeds[:, None].expand(-1, k),
        streams[:, None].expand(-1, k),
        out_len[:, None] + torch.arange(k)[None, :],
    )

    def draw(dist, at):
        return noise.sample_from_probs(dist, noise.exponential(seeds, streams, out_len + at, vocab))

    tokens, emitted = rejection_sample(p, draft_ids, num_drafts, q, uniforms, draw)
    outcomes = set()
    for b in range(batch):
        n = int(num_drafts[b])

        def draw_one(dist, i, b=b):
            e = noise.exponential(seeds[b : b + 1], streams[b : b + 1], out_len[b : b + 1] + i, vocab)
            return int(noise.sample_from_probs(dist[None], e)[0])

        qb = q[b, :n] if q is not None else None
        want = verify_reference(p[b, : n + 1], draft_ids[b, :n].tolist(), qb, uniforms[b, :n], draw_one)
        got = tokens[b, : int(emitted[b])].tolist()
        assert got == want, (b, n, got, want)
        outcomes.add("bonus" if len(want) == n + 1 else "recovered")
    if k > 0:
        assert outcomes == {"bonus", "recovered"}  # both branches exercised


@pytest.mark.parametrize("k", [1, 3, 6])
def test_verify_greedy_equals_reference_with_one_hot_p(k):
    rng = torch.Generator().manual_seed(k)
    batch, vocab = 500, 7
    argmax = torch.randint(vocab, (batch, k + 1), generator=rng)
    # drafts: equal to the argmax with probability 0.7 each, so long accepted runs occur
    draft_ids = torch.where(
        torch.rand(batch, k, generator=rng) < 0.7,
        argmax[:, :k],
        (argmax[:, :k] + torch.randint(1, vocab, (batch, k), generator=rng)) % vocab,
    )
    num_drafts = torch.randint(0, k + 1, (batch,), generator=rng)
    tokens, emitted = verify_greedy(argmax, draft_ids, num_drafts)
    p = torch.nn.functional.one_hot(argmax, vocab).float()
    lengths = set()
    for b in range(batch):
        n = int(num_drafts[b])
        u = torch.rand(n, generator=rng).clamp(1e-6, 1 - 1e-6)
        want = verify_reference(
            p[b, : n + 1], draft_ids[b, :n].tolist(), None, u, lambda dist, i: int(dist.argmax())
        )
        assert tokens[b, : int(emitted[b])].tolist() == want, b
        lengths.add(len(want))
    assert lengths == set(range(1, k + 2))


def test_greedy_sampler_path_equals_rejection_path_with_one_hot_p():
    """sample(): the all-greedy shortcut and the general path (greedy rows as one-hot p) agree."""
    rng = torch.Generator().manual_seed(5)
    batch, k, vocab = 300, 3, 11
    logits = torch.randn(batch * (k + 1), vocab, generator=rng)
    row_index = torch.arange(batch * (k + 1)).view(batch, k + 1)
    argmax = logits.argmax(-1)[row_index]
    draft_ids = torch.where(
        torch.rand(batch, k, generator=rng) < 0.6,
        argmax[:, :k],
        torch.randint(vocab, (batch, k), generator=rng),
    )
    num_drafts = torch.randint(0, k + 1, (batch,), generator=rng)
    seeds = torch.arange(batch, dtype=torch.int64)
    zeros = torch.zeros(batch, dtype=torch.int64)

    def run(rows):
        b = SamplingBatch(
            row_index=row_index,
            draft_ids=draft_ids,
            num_drafts=num_drafts,
            draft_probs=None,
            rows=rows,
            req_seeds=seeds,
            req_streams=zeros,
            req_output_lens=zeros,
        )
        return sample(logits, b)

    fast_t, fast_n = run(row_params(batch * (k + 1), temperature=0.0, top_k=0, top_p=1.0))
    general = row_params(batch * (k + 1), temperature=0.0, top_k=0, top_p=1.0)
    general.all_greedy = False  # force the rejection-sampling path
    slow_t, slow_n = run(general)
    assert torch.equal(fast_n, slow_n)
    for b in range(batch):
        assert fast_t[b, : fast_n[b]].tolist() == slow_t[b, : slow_n[b]].tolist()


# -- engine level: seeded sampling with speculation ------------------------------------------------
TINY_VOCAB = 16
ENGINE_TOP_K, ENGINE_TOP_P, ENGINE_TEMP = 5, 0.95, 0.8
PROMPT = [1, 5, 9, 3, 7, 11, 4, 6]


class SampledDraftProposer:
    """Drafts 2 tokens from a fixed distribution q, returning q; its rng is keyed by request id and length, so
    the same requests in a fresh engine get the same drafts."""

    from tokenleap_plugins import ProposerNeeds

    needs = ProposerNeeds()

    def __init__(self, config, context):
        g = torch.Generator().manual_seed(7)
        self.q = torch.softmax(torch.randn(context.vocab_size, generator=g) * 2, -1)
        self.k = context.num_speculative_tokens

    def propose(self, batch):
        from tokenleap_plugins import Drafts

        ids, probs = [], []
        for r in batch.requests:
            n = min(self.k, r.max_num_drafts)
            rng = random.Random(f"{r.request_id}/{len(r.token_ids)}")
            toks = rng.choices(range(len(self.q)), weights=self.q.tolist(), k=n)
            ids.append(toks)
            probs.append(self.q.expand(n, -1).clone() if n else None)
        return Drafts(ids, probs)

    def on_request_added(self, *a): ...
    def on_verified(self, *a): ...
    def on_request_finished(self, *a): ...
    def on_request_aborted(self, *a): ...


class SampledDraftPlugin:
    from tokenleap_plugins import hookimpl

    @hookimpl
    def tokenleap_register_proposers(self):
        from tokenleap_plugins import ProposerSpec

        return [ProposerSpec(method="sampled_draft", build=SampledDraftProposer)]


@pytest.fixture(scope="module")
def tiny_small_vocab(tiny_checkpoint):
    return tiny_checkpoint("llama", vocab_size=TINY_VOCAB)


def exact_first_three(folder) -> torch.Tensor:
    """P(x0, x1, x2 | PROMPT) under temperature/top-k/top-p, from transformers' own model: [V, V, V]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    def probs(prefixes: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            logits = model(torch.tensor([PROMPT + p for p in prefixes])).logits[:, -1].float()
        return to_probs(logits, row_params(len(prefixes), ENGINE_TEMP, ENGINE_TOP_P, ENGINE_TOP_K))

    v = TINY_VOCAB
    p0 = probs([[]])[0]
    p1 = probs([[a] for a in range(v)])  # [V, V]
    p2 = probs([[a, b] for a in range(v) for b in range(v)]).view(v, v, v)
    return p0[:, None, None] * p1[:, :, None] * p2


@pytest.mark.parametrize("method", ["sampled_draft", "echo"])
def test_engine_seeded_speculative_sampling(tiny_small_vocab, method):
    """Same seeds -> the same tokens in two engines of the same configuration; the first three tokens of 3000
    seeded requests follow the target's exact joint distribution with speculation (probabilistic drafts, or
    one-hot drafts echoing the context), as they do without it. (max_tokens=4 leaves room for 2 drafts
    after the first token, so tokens 1 and 2 come out of verification.)"""
    from tokenleap import LLM, SamplingParams
    from tokenleap_plugins import ProposerManager
    from tokenleap_plugins.testing import echo_spec

    manager = ProposerManager(env={})
    if method == "echo":
        plugin = type(
            "EchoPlugin",
            (),
            {
                "tokenleap_register_proposers": __import__("tokenleap_plugins").hookimpl(
                    lambda self: [echo_spec("echo")]
                )
            },
        )()
    else:
        plugin = SampledDraftPlugin()
    manager.register(plugin)
    common = dict(max_model_len=64, kv_cache_memory_bytes=8 << 20, max_num_seqs=512, disable_log_stats=True)
    spec = {"method": method, "num_speculative_tokens": 2}
    if method == "sampled_draft":  # seeded requests would be coupled by default; this test is of rejection sampling
        spec["draft_verification"] = "rejection"
    spec_llm = LLM(str(tiny_small_vocab), speculative_config=spec, proposer_manager=manager, **common)
    n = 3000
    params = [
        SamplingParams(
            temperature=ENGINE_TEMP,
            top_p=ENGINE_TOP_P,
            top_k=ENGINE_TOP_K,
            max_tokens=4,
            ignore_eos=True,
            seed=10_000 + i,
        )
        for i in range(n)
    ]
    prompts = [{"prompt_token_ids": PROMPT}] * n
    outs = spec_llm.generate(prompts, params, use_tqdm=False)
    stats = spec_llm.engine.counters.spec
    assert stats.num_draft_tokens > 1000 and 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    twin = LLM(str(tiny_small_vocab), speculative_config=spec, proposer_manager=manager, **common)
    again = twin.generate(prompts[:500], params[:500], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs[:500]]

    exact = exact_first_three(tiny_small_vocab)
    v = TINY_VOCAB
    counts = torch.zeros(v * v * v)
    for o in outs:
        a, b, c = o.outputs[0].token_ids[:3]
        counts[(a * v + b) * v + c] += 1
    stat, pv, tv = chi_square(counts, exact)
    assert pv > ALPHA, (stat, pv, tv)
    if method == "echo":
        return
    plain = LLM(str(tiny_small_vocab), **common)  # the same statistic without speculation
    plain_outs = plain.generate(
        prompts, [p.model_copy(update={"seed": p.seed + 7 * n}) for p in params], use_tqdm=False
    )
    counts_plain = torch.zeros(v * v * v)
    for o in plain_outs:
        a, b, c = o.outputs[0].token_ids[:3]
        counts_plain[(a * v + b) * v + c] += 1
    stat_p, pv_p, _ = chi_square(counts_plain, exact)
    assert pv_p > ALPHA, (stat_p, pv_p)
