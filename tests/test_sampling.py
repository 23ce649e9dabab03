"""Sampling: the pure functions (logits processing, counter-based noise) against brute force and
statistics, and the engine's sampling behaviour (seeds, n, stop conditions, logprobs, penalties) against
transformers' logits on the same weights."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from helpers.tiny_models import EOS_ID, make_tiny_tokenizer
from tokenleap import LLM, SamplingParams
from tokenleap.sample import noise
from tokenleap.sample.logits import RowParams, apply_penalties, ban_tokens, to_probs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def chi2_critical(dof: int, z: float = 3.719) -> float:
    """Upper quantile of chi-square(dof) by the Wilson-Hilferty approximation; z=3.719 is p = 1e-4."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + z * math.sqrt(c)) ** 3


# ---- tokenleap.sample.logits against brute force -------------------------------------------------


def brute_force_probs(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float
) -> np.ndarray:
    """The documented order, one row, float64: temperature -> min_p -> top_k -> top_p -> renormalise."""
    if temperature == 0:
        out = np.zeros_like(logits, dtype=np.float64)
        out[int(np.argmax(logits))] = 1.0
        return out
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if min_p > 0:
        p = np.where(p < min_p * p.max(), 0.0, p)
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep = set(order[:top_k]) if top_k > 0 else set(range(len(p)))
    p = np.array([p[i] if i in keep else 0.0 for i in range(len(p))])
    if top_p < 1:
        q = p / p.sum()
        mass, chosen = 0.0, set()
        for i in order:  # the smallest most-likely set whose mass reaches top_p
            if mass >= top_p or q[i] == 0:
                break
            chosen.add(i)
            mass += q[i]
        p = np.array([p[i] if i in chosen else 0.0 for i in range(len(p))])
    return p / p.sum()


ROWS = [  # temperature, top_k, top_p, min_p
    (0.7, 0, 1.0, 0.0),
    (1.0, 5, 1.0, 0.0),
    (1.3, 0, 0.8, 0.0),
    (0.9, 0, 1.0, 0.1),
    (0.8, 50, 0.9, 0.0),
    (0.0, 0, 1.0, 0.0),
    (1.0, 1, 1.0, 0.0),
    (2.0, 10, 0.5, 0.05),
    (0.5, 0, 0.3, 0.0),
]


def row_params(rows, n_rows=None) -> RowParams:
    t = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    k = torch.tensor([r[1] for r in rows], dtype=torch.int64)
    p = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    m = torch.tensor([r[3] for r in rows], dtype=torch.float32)
    z = torch.zeros(len(rows), dtype=torch.int64)
    return RowParams(
        temperature=t,
        top_k=k,
        top_p=p,
        min_p=m,
        seeds=z,
        streams=z,
        positions=z,
        any_top_k=bool((k > 0).any()),
        any_top_p=bool((p < 1).any()),
        any_min_p=bool((m > 0).any()),
        any_greedy=bool((t == 0).any()),
        all_greedy=bool((t == 0).all()),
    )


@pytest.mark.parametrize("trial", range(4))
def test_to_probs_matches_brute_force(trial):
    gen = torch.Generator().manual_seed(trial)
    logits = torch.randn(len(ROWS), 200, generator=gen) * 3.0
    got = to_probs(logits, row_params(ROWS)).double().numpy()
    for i, (t, k, p, m) in enumerate(ROWS):
        want = brute_force_probs(logits[i].numpy(), t, k, p, m)
        assert np.array_equal(got[i] > 0, want > 0), f"row {i} {ROWS[i]}: support differs"
        np.testing.assert_allclose(got[i], want, atol=2e-6, err_msg=f"row {i} {ROWS[i]}")
        assert got[i].sum() == pytest.approx(1.0, abs=1e-5)
        if k > 0:
            assert (got[i] > 0).sum() <= k


def test_to_probs_single_row_kinds_alone():
    """Each filter alone (the any_* fast-path flags off for the others)."""
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(1, 64, generator=gen) * 2
    for row in [(1.0, 7, 1.0, 0.0), (1.0, 0, 0.6, 0.0), (1.0, 0, 1.0, 0.2), (0.0, 0, 1.0, 0.0)]:
        got = to_probs(logits, row_params([row]))[0].double().numpy()
        np.testing.assert_allclose(
            got, brute_force_probs(logits[0].numpy(), *row), atol=2e-6, err_msg=str(row)
        )


def test_apply_penalties_and_ban_match_brute_force():
    gen = torch.Generator().manual_seed(1)
    rows, vocab = 4, 30
    logits = torch.randn(rows, vocab, generator=gen) * 2
    counts = torch.randint(0, 3, (rows, vocab), generator=gen).float() * (
        torch.rand(rows, vocab, generator=gen) < 0.3
    )
    seen = (counts > 0) | (
        torch.rand(rows, vocab, generator=gen) < 0.2
    )  # prompt tokens are seen, not counted
    rep = torch.tensor([1.0, 1.5, 0.8, 1.2])
    pres = torch.tensor([0.0, 0.5, -0.3, 1.0])
    freq = torch.tensor([0.0, 0.2, 0.4, -0.5])
    got = apply_penalties(logits, counts, seen, rep, pres, freq).numpy()
    for r in range(rows):
        for v in range(vocab):
            x = float(logits[r, v])
            if seen[r, v]:
                x = x / float(rep[r]) if x > 0 else x * float(rep[r])
            x -= float(freq[r]) * float(counts[r, v])
            x -= float(pres[r]) * (1.0 if counts[r, v] > 0 else 0.0)
            assert got[r, v] == pytest.approx(x, abs=1e-5), (r, v)
    banned = ban_tokens(logits, torch.tensor([0, 0, 2]), torch.tensor([3, 7, 3])).numpy()
    assert np.isneginf(banned[0, 3]) and np.isneginf(banned[0, 7]) and np.isneginf(banned[2, 3])
    assert np.isfinite(banned).sum() == rows * vocab - 3


# ---- tokenleap.sample.noise: uniformity and exact sampling frequencies -------------------------------


def chi2_uniform(u: torch.Tensor, bins: int) -> float:
    counts = torch.bincount((u * bins).long().clamp_max(bins - 1), minlength=bins).double()
    expected = u.numel() / bins
    return float(((counts - expected) ** 2 / expected).sum())


N_DRAWS = 100_000


@pytest.mark.parametrize("vary", ["seed", "stream", "position", "big-seed"])
def test_uniform_is_uniform_over_seeds_streams_positions(vary):
    idx = torch.arange(N_DRAWS, dtype=torch.int64)
    const = torch.full_like(idx, 12345)
    args = {
        "seed": (idx, const * 0, const * 0),
        "stream": (const, idx, const * 0),
        "position": (const, const * 0, idx),
        "big-seed": (idx * 0x9E3779B97F4A7C15 % (1 << 63), const * 0, const * 0),  # 63-bit seeds
    }[vary]
    u = noise.uniform(*args)
    assert u.dtype == torch.float32 and bool(((u > 0) & (u < 1)).all())
    assert chi2_uniform(u, 100) < chi2_critical(99)
    assert float(u.mean()) == pytest.approx(0.5, abs=5 * math.sqrt(1 / 12 / N_DRAWS))
    # neighbours are uncorrelated
    corr = float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])
    assert abs(corr) < 5 / math.sqrt(N_DRAWS)
    # a pure function: recomputed, the same numbers
    assert torch.equal(u, noise.uniform(*args))


def test_exponential_is_exp1_across_vocab_and_rows():
    rows, vocab = 50, 2000
    e = noise.exponential(
        torch.arange(rows), torch.zeros(rows, dtype=torch.int64), torch.zeros(rows, dtype=torch.int64), vocab
    )
    assert e.shape == (rows, vocab) and bool((e > 0).all())
    n = e.numel()
    assert float(e.mean()) == pytest.approx(1.0, abs=5 / math.sqrt(n))
    assert float(e.var()) == pytest.approx(1.0, abs=0.05)
    assert chi2_uniform(1 - torch.exp(-e.double()).flatten(), 100) < chi2_critical(99)
    # the token noise is independent of the acceptance uniform at the same (seed, stream, position)
    u = noise.uniform(
        torch.arange(rows), torch.zeros(rows, dtype=torch.int64), torch.zeros(rows, dtype=torch.int64)
    )
    assert not torch.allclose(torch.exp(-e[:, 0]), 1 - u)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_sample_from_probs_frequencies(scale):
    """100k draws of the exponential race: each frequency within 5 standard errors of its probability
    (and a chi-square test at p = 1e-4); zero-probability entries are never drawn. Unnormalised input
    (scale 3) gives the same distribution."""
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.04, 0.01, 0.0])
    idx = torch.arange(N_DRAWS, dtype=torch.int64)
    exp = noise.exponential(idx, idx % 3, idx // 7, len(p))
    draws = noise.sample_from_probs((p * scale).expand(N_DRAWS, -1), exp)
    freq = torch.bincount(draws, minlength=len(p)).double() / N_DRAWS
    for i, pi in enumerate(p.tolist()):
        tol = 5 * math.sqrt(pi * (1 - pi) / N_DRAWS)
        assert abs(float(freq[i]) - pi) <= tol, (i, float(freq[i]), pi, tol)
    assert freq[-1] == 0
    nz = p > 0
    stat = float((((freq[nz] - p[nz].double()) * N_DRAWS) ** 2 / (p[nz].double() * N_DRAWS)).sum())
    assert stat < chi2_critical(int(nz.sum()) - 1)


# ---- the engine, on a tiny random-weight Llama ---------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def llm(folder):
    return LLM(model=str(folder), disable_log_stats=True, num_gpu_blocks_override=256, seed=0)


@pytest.fixture(scope="module")
def hf(tiny_hf):
    return tiny_hf("llama")


def ids_prompt(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    return {"prompt_token_ids": [rng.randrange(3, 300) for _ in range(n)]}


P = [ids_prompt(n, s) for s, n in enumerate([11, 23, 5, 40, 17, 31])]
SEEDED = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=1234, max_tokens=24, ignore_eos=True)


def gen1(llm, prompt, sp):
    return llm.generate(prompt, sp, use_tqdm=False)[0].outputs[0]


def test_seeded_sampling_is_reproducible_and_batch_independent(llm, folder):
    alone = gen1(llm, P[0], SEEDED).token_ids
    assert gen1(llm, P[0], SEEDED).token_ids == alone
    greedy = gen1(llm, P[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)).token_ids
    assert alone != greedy  # it samples
    assert gen1(llm, P[0], SEEDED.model_copy(update={"seed": 4321})).token_ids != alone  # the seed matters

    others = [
        SamplingParams(temperature=0, max_tokens=30, ignore_eos=True),
        SamplingParams(temperature=1.0, seed=7, max_tokens=10, ignore_eos=True, logprobs=3),
        SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=99, max_tokens=40, ignore_eos=True, n=2),
        SamplingParams(temperature=1.2, min_p=0.05, max_tokens=20, ignore_eos=True, repetition_penalty=1.3),
        SamplingParams(
            temperature=0.5, presence_penalty=0.5, frequency_penalty=0.3, max_tokens=5, ignore_eos=True
        ),
    ]
    prompts = [P[1], P[2], P[0], P[3], P[4], P[5]]
    params = others[:2] + [SEEDED] + others[2:]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert outs[2].outputs[0].token_ids == alone
    # another engine: one request at a time, tiny token budget (chunked prefill), different seed
    other = LLM(
        model=str(folder),
        disable_log_stats=True,
        num_gpu_blocks_override=256,
        seed=77,
        max_num_seqs=2,
        max_num_batched_tokens=16,
    )
    outs2 = other.generate(prompts, params, use_tqdm=False)
    assert outs2[2].outputs[0].token_ids == alone
    # every seeded request is batch-independent, not only the one under test
    for i in (1, 3):
        assert [c.token_ids for c in outs[i].outputs] == [c.token_ids for c in outs2[i].outputs]


def test_n_completions_differ_and_reproduce(llm):
    sp = SamplingParams(n=4, temperature=1.0, seed=5, max_tokens=16, ignore_eos=True)
    out = llm.generate(P[1], sp, use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) == 4
    assert all(len(c.token_ids) == 16 and c.finish_reason == "length" for c in out.outputs)
    again = llm.generate(P[1], sp, use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    unseeded = llm.generate(P[1], sp.model_copy(update={"seed": None, "n": 3}), use_tqdm=False)[0]
    assert len({tuple(c.token_ids) for c in unseeded.outputs}) == 3


def test_unseeded_sampling_follows_the_llm_seed(folder):
    sp = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)

    def run(seed):
        llm = LLM(model=str(folder), disable_log_stats=True, num_gpu_blocks_override=64, seed=seed)
        return [o.outputs[0].token_ids for o in llm.generate(P[:4], sp, use_tqdm=False)]

    a = run(42)
    assert run(42) == a
    assert len({tuple(t) for t in a}) == 4
    assert run(43) != a


def ascii_stop_string(text: str, min_at: int = 4) -> tuple[str, int]:
    """A 2-char printable stop string whose first occurrence in text is at index >= min_at."""
    for at in range(min_at, len(text) - 1):
        s = text[at : at + 2]
        if all(c.isascii() and c.isalnum() for c in s) and text.find(s) == at:
            return s, at
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_strings(llm):
    base = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = gen1(llm, P[3], base)
    stop, at = ascii_stop_string(ref.text)
    out = gen1(llm, P[3], base.model_copy(update={"stop": ["\x00never", stop]}))
    assert out.text == ref.text[:at]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert ref.token_ids[: len(out.token_ids)] == out.token_ids and len(out.token_ids) < len(ref.token_ids)
    incl = gen1(llm, P[3], base.model_copy(update={"stop": stop, "include_stop_str_in_output": True}))
    assert incl.text == ref.text[: at + len(stop)] and incl.token_ids == out.token_ids
    assert incl.finish_reason == "stop" and incl.stop_reason == stop


def test_stop_token_ids(llm):
    base = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = gen1(llm, P[4], base).token_ids
    k = next(i for i in range(5, len(ref)) if ref[i] not in ref[:i])
    out = gen1(llm, P[4], base.model_copy(update={"stop_token_ids": [ref[k]]}))
    assert out.token_ids == ref[: k + 1]  # the stop token is the last token id
    assert out.finish_reason == "stop" and out.stop_reason == ref[k]
    text_before = gen1(llm, P[4], base.model_copy(update={"max_tokens": k})).text
    assert out.text == text_before  # the stop token's text is not in the output
    incl = gen1(
        llm, P[4], base.model_copy(update={"stop_token_ids": [ref[k]], "include_stop_str_in_output": True})
    )
    assert incl.token_ids == out.token_ids and incl.text.startswith(out.text)


@pytest.mark.parametrize("min_tokens", [0, 9, 25])
def test_min_tokens_with_stop_token_equals_transformers(llm, hf, min_tokens):
    base = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = gen1(llm, P[4], base).token_ids
    stop_id = ref[6]  # frequent enough: appears at token 6 without min_tokens
    out = gen1(llm, P[4], base.model_copy(update={"stop_token_ids": [stop_id], "min_tokens": min_tokens}))
    ids = torch.tensor([P[4]["prompt_token_ids"]])
    with torch.no_grad():
        want = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=40,
            min_new_tokens=min_tokens,
            do_sample=False,
            eos_token_id=stop_id,
            pad_token_id=0,
        )[0, ids.shape[1] :].tolist()
    want = want[: want.index(stop_id) + 1] if stop_id in want else want
    assert out.token_ids == want
    assert stop_id not in out.token_ids[:min_tokens]
    assert len(out.token_ids) > min_tokens
    if stop_id in out.token_ids:
        assert out.token_ids[-1] == stop_id and out.finish_reason == "stop" and out.stop_reason == stop_id
    else:
        assert len(out.token_ids) == 40 and out.finish_reason == "length"
    if min_tokens == 0:
        assert len(out.token_ids) <= 7


EOS_PROMPTS = [ids_prompt(n, 100 + s) for s, n in enumerate([6, 14, 9, 20])]


@pytest.fixture(scope="module")
def eos_prone(tmp_path_factory, hf):
    """The tiny Llama with lm_head row EOS set to 1.3x the row of a token t that its greedy outputs of
    EOS_PROMPTS produce early: EOS then wins wherever t would (with a positive logit), so greedy
    outputs end early unless EOS is banned."""
    early: dict[int, int] = {}
    for p in EOS_PROMPTS:
        ids = torch.tensor([p["prompt_token_ids"]])
        with torch.no_grad():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=10,
                min_new_tokens=10,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, ids.shape[1] :].tolist()
        for t in set(out):
            early[t] = early.get(t, 0) + 1
    frequent = max(early, key=lambda t: (early[t], -t))
    model = copy.deepcopy(hf)
    with torch.no_grad():
        model.lm_head.weight[EOS_ID] = 1.3 * model.lm_head.weight[frequent]
    path = tmp_path_factory.mktemp("eos-prone")
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    llm = LLM(model=str(path), disable_log_stats=True, num_gpu_blocks_override=128)
    return llm, model


def test_eos_and_min_tokens_equal_transformers(eos_prone):
    llm, model = eos_prone
    lengths = {}
    for min_tokens in (0, 12):
        outs = llm.generate(
            EOS_PROMPTS, SamplingParams(temperature=0, max_tokens=32, min_tokens=min_tokens), use_tqdm=False
        )
        for p, o in zip(EOS_PROMPTS, outs, strict=True):
            ids = torch.tensor([p["prompt_token_ids"]])
            with torch.no_grad():
                want = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=32,
                    min_new_tokens=min_tokens,
                    do_sample=False,
                    eos_token_id=EOS_ID,
                    pad_token_id=0,
                )[0, ids.shape[1] :].tolist()
            if EOS_ID in want:
                want = want[: want.index(EOS_ID) + 1]
            c = o.outputs[0]
            assert c.token_ids == want, (min_tokens, p)
            assert EOS_ID not in c.token_ids[:min_tokens]
            if c.token_ids[-1] == EOS_ID:
                assert c.finish_reason == "stop" and c.stop_reason is None
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == 32
        lengths[min_tokens] = [len(o.outputs[0].token_ids) for o in outs]
    # EOS really is likely: without min_tokens at least two outputs end before 12 tokens, with it none does
    assert sum(n < 12 for n in lengths[0]) >= 2, lengths
    assert all(n > 12 for n in lengths[12]), lengths
    # ignore_eos: the same engine runs to max_tokens
    long = llm.generate(
        EOS_PROMPTS[0], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True), use_tqdm=False
    )[0].outputs[0]
    assert len(long.token_ids) == 32 and long.finish_reason == "length" and long.stop_reason is None


def test_max_tokens_gives_length(llm, folder):
    for m in (1, 7):
        out = gen1(llm, P[2], SamplingParams(temperature=0.9, seed=3, max_tokens=m, ignore_eos=True))
        assert len(out.token_ids) == m and out.finish_reason == "length" and out.stop_reason is None
    # max_tokens=None: up to max_model_len (prompt + output)
    short = LLM(model=str(folder), disable_log_stats=True, num_gpu_blocks_override=32, max_model_len=40)
    out = gen1(short, P[1], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))
    assert len(P[1]["prompt_token_ids"]) + len(out.token_ids) == 40 and out.finish_reason == "length"
    assert (
        out.token_ids
        == gen1(llm, P[1], SamplingParams(temperature=0, max_tokens=17, ignore_eos=True)).token_ids
    )


@torch.no_grad()
def hf_logprobs(hf, prompt: list[int], output: list[int]) -> torch.Tensor:
    """log_softmax of transformers' logits at the positions that predicted each output token [n, vocab]."""
    ids = torch.tensor([prompt + output])
    logits = hf(ids).logits[0, len(prompt) - 1 : len(prompt) + len(output) - 1].float()
    return torch.log_softmax(logits, dim=-1)


def test_logprobs_greedy_match_transformers(llm, hf):
    outs = llm.generate(
        P[:3], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=5), use_tqdm=False
    )
    for p, o in zip(P[:3], outs, strict=True):
        c = o.outputs[0]
        ref = hf_logprobs(hf, p["prompt_token_ids"], c.token_ids)
        assert len(c.logprobs) == len(c.token_ids) == 10
        total = 0.0
        for j, (tok, step) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
            assert tok in step and step[tok].rank == 1  # greedy picks the most likely token
            top_vals, top_ids = ref[j].topk(5)
            assert set(step) == set(top_ids.tolist())
            for tid, lp in step.items():
                assert lp.logprob == pytest.approx(float(ref[j, tid]), abs=1e-4)
            assert [step[t].rank for t in top_ids.tolist()] == [1, 2, 3, 4, 5]
            total += step[tok].logprob
        assert c.cumulative_logprob == pytest.approx(total, abs=1e-5)


def test_logprobs_sampled_include_chosen_token(llm, hf):
    sp = SamplingParams(temperature=1.5, seed=21, max_tokens=24, ignore_eos=True, logprobs=1)
    c = gen1(llm, P[5], sp)
    ref = hf_logprobs(hf, P[5]["prompt_token_ids"], c.token_ids)
    outside_top1 = 0
    for j, (tok, step) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
        assert tok in step
        rank = int((ref[j] > ref[j, tok]).sum()) + 1
        assert step[tok].rank == rank
        assert step[tok].logprob == pytest.approx(float(ref[j, tok]), abs=1e-4)  # raw model logprob
        top1 = int(ref[j].argmax())
        assert top1 in step and step[top1].rank == 1
        assert len(step) == (1 if tok == top1 else 2)
        outside_top1 += tok != top1
    assert outside_top1 > 0  # at temperature 1.5 some sampled tokens are not the top one
    assert c.cumulative_logprob == pytest.approx(
        sum(s[t].logprob for t, s in zip(c.token_ids, c.logprobs, strict=True)), abs=1e-5
    )
    only = gen1(llm, P[5], sp.model_copy(update={"logprobs": 0}))
    assert only.token_ids == c.token_ids
    assert all(list(s) == [t] for t, s in zip(only.token_ids, only.logprobs, strict=True))
    assert gen1(llm, P[5], sp.model_copy(update={"logprobs": None})).logprobs is None


PENALTIES = {
    "repetition": dict(repetition_penalty=1.8),
    "presence": dict(presence_penalty=1.5),
    "frequency": dict(frequency_penalty=2.0),
    "all": dict(repetition_penalty=1.3, presence_penalty=0.7, frequency_penalty=0.6),
}


def penalised_argmax(
    logits: np.ndarray,
    prompt: list[int],
    output: list[int],
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
) -> int:
    x = logits.astype(np.float64).copy()
    for t in set(prompt) | set(output):  # repetition: every token seen in the prompt or the output
        x[t] = x[t] / repetition_penalty if x[t] > 0 else x[t] * repetition_penalty
    for t in set(output):  # presence / frequency: output tokens only
        x[t] -= presence_penalty + frequency_penalty * output.count(t)
    return int(np.argmax(x))


@pytest.mark.parametrize("kind", list(PENALTIES))
def test_penalties_match_transformers_logits(llm, hf, kind):
    pen = PENALTIES[kind]
    n = 16
    prompt = P[1]["prompt_token_ids"]
    plain = gen1(llm, P[1], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)).token_ids
    got = gen1(llm, P[1], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **pen)).token_ids
    assert got != plain  # the penalty changes the output
    # reference: transformers' logits along our tokens; each of our tokens must be the penalised argmax
    # (by induction, the whole sequence is the penalised greedy sequence)
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + got])).logits[0, len(prompt) - 1 :].numpy()
    want = [penalised_argmax(logits[j], prompt, got[:j], **pen) for j in range(n)]
    assert got == want
    if kind == "repetition":  # transformers' own RepetitionPenaltyLogitsProcessor (prompt + output)
        ids = torch.tensor([prompt])
        with torch.no_grad():
            hf_out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                repetition_penalty=pen["repetition_penalty"],
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()
        assert got == hf_out


@pytest.mark.slow
def test_smollm2_stop_string_across_token_boundary(smollm2_llm):
    """A stop string that starts inside one token and ends inside the next (real byte-level BPE text)."""
    tok = smollm2_llm.get_tokenizer()
    conv = [{"role": "user", "content": "Describe a sunny morning in a small town."}]
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
    prompt = {"prompt_token_ids": list(ids["input_ids"] if hasattr(ids, "keys") else ids)}
    base = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = smollm2_llm.generate(prompt, base, use_tqdm=False)[0].outputs[0]
    assert ref.text == tok.decode(ref.token_ids, skip_special_tokens=True)
    # token boundaries in the text; pick one (after token 5) where a 4-char window straddling it first
    # occurs there and neither side of it is a space-only piece
    ends = [
        len(tok.decode(ref.token_ids[: j + 1], skip_special_tokens=True)) for j in range(len(ref.token_ids))
    ]
    stop = at = None
    for j in range(5, len(ends) - 2):
        b = ends[j]
        window = ref.text[b - 2 : b + 2]
        if ends[j] - ends[j - 1] >= 2 and ends[j + 1] - b >= 2 and ref.text.find(window) == b - 2:
            stop, at = window, b - 2
            break
    assert stop is not None, ref.text
    out = smollm2_llm.generate(prompt, base.model_copy(update={"stop": [stop]}), use_tqdm=False)[0].outputs[0]
    assert out.text == ref.text[:at] and out.finish_reason == "stop" and out.stop_reason == stop
    assert out.token_ids == ref.token_ids[: j + 2]  # generation ended with the token that completed it
    incl = smollm2_llm.generate(
        prompt, base.model_copy(update={"stop": stop, "include_stop_str_in_output": True}), use_tqdm=False
    )[0].outputs[0]
    assert incl.text == ref.text[: at + len(stop)] and incl.token_ids == out.token_ids
