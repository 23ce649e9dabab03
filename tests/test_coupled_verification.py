"""Coupled verification: the batched fast path equals the readable reference; the emitted tokens are the
tokens plain sampling draws, whatever the drafts; a one-hot draft x is accepted with probability p(x); drafts
drawn with ``noise.sample_with_noise`` from the target's own distribution are always accepted; and the sampler
picks coupled or rejection sampling per request."""

from __future__ import annotations

import math

import pytest
import torch
from tokenleap.sample import noise
from tokenleap.sample.logits import RowParams
from tokenleap.sample.sampler import SamplingBatch, sample
from tokenleap.speculative.verify import verify_coupled_reference


def rows(n: int, temperature: float = 1.0) -> RowParams:
    z = torch.zeros(n, dtype=torch.int64)
    return RowParams(temperature=torch.full((n,), temperature), top_k=z, top_p=torch.ones(n), min_p=torch.zeros(n),
                     seeds=z, streams=z, positions=z, any_top_k=False, any_top_p=False, any_min_p=False,
                     any_greedy=temperature == 0, all_greedy=temperature == 0)


def batch_of(logits, draft_ids, num_drafts, seeds, out_lens, draft_probs=None, coupled=None, temperature=1.0):
    b, k = draft_ids.shape
    return SamplingBatch(row_index=torch.arange(b * (k + 1)).view(b, k + 1), draft_ids=draft_ids,
                         num_drafts=num_drafts, draft_probs=draft_probs, rows=rows(b * (k + 1), temperature),
                         req_seeds=seeds, req_streams=torch.zeros(b, dtype=torch.int64), req_output_lens=out_lens,
                         coupled=coupled)


@pytest.mark.parametrize("k", [0, 1, 4])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_coupled_fast_path_equals_reference(k, temperature):
    g = torch.Generator().manual_seed(k + int(temperature))
    b, vocab = 400, 9
    logits = torch.randn(b * (k + 1), vocab, generator=g) * 2
    p = torch.softmax(logits, -1).view(b, k + 1, vocab)
    if temperature == 0:
        p = torch.nn.functional.one_hot(p.argmax(-1), vocab).float()
    likely = (torch.multinomial(p[:, :k].reshape(-1, vocab), 1, generator=g).view(b, k) if k
              else p.new_zeros(b, 0).long())
    draft_ids = torch.where(torch.rand(b, k, generator=g) < 0.7, likely, torch.randint(vocab, (b, k), generator=g))
    num_drafts = torch.randint(0, k + 1, (b,), generator=g)
    seeds = torch.randint(0, 1 << 62, (b,), generator=g)
    out_lens = torch.randint(0, 50, (b,), generator=g)
    tokens, emitted = sample(logits, batch_of(logits, draft_ids, num_drafts, seeds, out_lens, temperature=temperature))
    lengths = set()
    for i in range(b):
        n = int(num_drafts[i])

        def draw(dist, j, i=i):
            e = noise.exponential(seeds[i : i + 1], torch.zeros(1, dtype=torch.int64), out_lens[i : i + 1] + j, vocab)
            return int(noise.sample_from_probs(dist[None], e)[0])

        want = verify_coupled_reference(p[i, : n + 1], draft_ids[i, :n].tolist(), draw)
        assert tokens[i, : int(emitted[i])].tolist() == want, i
        lengths.add((len(want), len(want) == n + 1))
    if k:
        assert {full for _, full in lengths} == {True, False}  # bonus and first-mismatch endings


def test_emitted_tokens_are_plain_sampling_whatever_the_drafts():
    """A Markov target sampled token by token, and the same seeds verified with random, partly right drafts
    (k = 3): the same sequences."""
    g = torch.Generator().manual_seed(3)
    vocab, length, b = 7, 12, 24
    table = torch.randn(vocab, vocab, generator=g) * 1.5  # logits of the next token given the previous one
    seeds = torch.arange(b, dtype=torch.int64) * 7919
    plain = torch.zeros(b, length + 1, dtype=torch.int64)  # column 0: the last prompt token (0)
    for t in range(length):
        tok, _ = sample(table[plain[:, t]], batch_of(None, torch.zeros(b, 0, dtype=torch.int64),
                                                     torch.zeros(b, dtype=torch.int64), seeds,
                                                     torch.full((b,), t)))
        plain[:, t + 1] = tok[:, 0]
    accepted = 0
    for i in range(b):
        seq, k = [0], 3
        while len(seq) <= length:
            done = len(seq) - 1
            n = min(k, length - done - 1)
            right = plain[i, done + 1 : done + 1 + n].tolist()
            drafts = [r if torch.rand(1, generator=g) < 0.6 else int(torch.randint(vocab, (1,), generator=g))
                      for r in right]
            logits = table[torch.tensor([seq[-1]] + drafts)]  # [n + 1, vocab]
            tok, emitted = sample(logits, batch_of(None, torch.tensor([drafts]).view(1, n), torch.tensor([n]),
                                                   seeds[i : i + 1], torch.tensor([done])))
            seq += tok[0, : int(emitted[0])].tolist()
            accepted += int(emitted[0]) - 1
        assert seq[: length + 1] == plain[i].tolist(), i
    assert accepted > 40


def test_one_hot_draft_is_accepted_with_probability_p_of_x():
    """10000 seeds, one draft x at each: acceptance frequency within 4.5 standard errors of p(x)."""
    vocab, n = 6, 10_000
    logits = torch.tensor([[1.0, 0.2, -0.5, 0.7, 0.0, -1.0], [0.0] * vocab]).repeat(n, 1)  # [2n, vocab]
    p = torch.softmax(logits[0], -1)
    for x in (0, 2, 3):
        drafts = torch.full((n, 1), x)
        _, emitted = sample(logits, batch_of(None, drafts, torch.ones(n, dtype=torch.int64),
                                             torch.arange(n, dtype=torch.int64) + 10 * n * x,
                                             torch.zeros(n, dtype=torch.int64)))
        rate = (emitted == 2).float().mean().item()
        se = math.sqrt(p[x] * (1 - p[x]) / n)
        assert abs(rate - p[x].item()) < 4.5 * se, (x, rate, p[x].item())


def test_drafts_drawn_with_the_same_noise():
    """A drafter drawing with ``sample_with_noise``: q = p is always accepted; for q != p the coupled acceptance
    is at least Daliri et al.'s (1 - TV) / (1 + TV) bound and above drafting with independent noise."""
    g = torch.Generator().manual_seed(11)
    vocab, n = 10, 10_000
    p_logits = torch.randn(vocab, generator=g)
    q = torch.softmax(p_logits + torch.randn(vocab, generator=g) * 0.7, -1)
    p = torch.softmax(p_logits, -1)
    seeds, zeros = torch.arange(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
    logits = p_logits.expand(2 * n, vocab).contiguous()  # rows: draft position, bonus position (same p)

    def acceptance(draft: torch.Tensor) -> float:
        _, emitted = sample(logits, batch_of(None, draft[:, None], torch.ones(n, dtype=torch.int64), seeds, zeros))
        return (emitted == 2).float().mean().item()

    assert acceptance(noise.sample_with_noise(p.expand(n, vocab), seeds, zeros, zeros)) == 1.0
    shared = acceptance(noise.sample_with_noise(q.expand(n, vocab), seeds, zeros, zeros))
    independent = acceptance(noise.sample_with_noise(q.expand(n, vocab), seeds + 10**9, zeros, zeros))
    tv = 0.5 * (p - q).abs().sum().item()
    assert shared >= (1 - tv) / (1 + tv) - 0.01 and shared > independent + 0.1, (shared, independent, tv)


def test_sampler_picks_coupled_or_rejection_per_request():
    g = torch.Generator().manual_seed(5)
    b, k, vocab = 200, 3, 8
    logits = torch.randn(b * (k + 1), vocab, generator=g)
    q = torch.softmax(torch.randn(b, k, vocab, generator=g), -1)
    draft_ids = torch.multinomial(q.view(-1, vocab), 1, generator=g).view(b, k)
    num_drafts = torch.randint(0, k + 1, (b,), generator=g)
    seeds, out_lens = torch.arange(b, dtype=torch.int64), torch.zeros(b, dtype=torch.int64)
    coupled = torch.rand(b, generator=g) < 0.5
    got_t, got_n = sample(logits, batch_of(logits, draft_ids, num_drafts, seeds, out_lens, q, coupled))
    cou_t, cou_n = sample(logits, batch_of(logits, draft_ids, num_drafts, seeds, out_lens))  # one-hot: coupled
    rej_t, rej_n = sample(logits, batch_of(logits, draft_ids, num_drafts, seeds, out_lens, q, None))
    for i in range(b):
        t, n = (cou_t, cou_n) if coupled[i] else (rej_t, rej_n)
        assert got_t[i, : got_n[i]].tolist() == t[i, : n[i]].tolist(), i
    assert not torch.equal(cou_n, rej_n)  # the two rules differ on these drafts
