"""Device drafting of the next verify step (kernels/ngram_ref.py, kernels/triton_ngram.py).

The reference must write the step of prompt lookup's drafts (``tokenleap_plugins.prompt_lookup``, the definition
tests/test_ngram.py holds the ngram proposer to), and the Triton kernel (in the interpreter on CPU) must write
exactly what the reference writes, on histories with repeats, ragged lengths,
rows not fed, drafts cut by the request's limit and by the history's end.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.triton_marks import needs_triton  # noqa: E402
from tokenleap_ngram.device.lookup_ref import next_verify_inputs_ref  # noqa: E402
from tokenleap_ngram.prompt_lookup import prompt_lookup  # noqa: E402


def _history(rng: random.Random, size: int, vocab: int) -> list[int]:
    """Tokens with copied stretches (what prompt lookup finds) and fresh ones."""
    tokens = [rng.randrange(vocab) for _ in range(min(size, 8))]
    while len(tokens) < size:
        if rng.random() < 0.5 and len(tokens) > 4:
            a = rng.randrange(len(tokens) - 2)
            tokens.extend(tokens[a : a + rng.randrange(2, 12)])
        else:
            tokens.append(rng.randrange(vocab))
    return tokens[:size]


def _case(rng: random.Random, b: int, q: int, block_size: int, max_blocks: int, hist_width: int):
    """Inputs of one call: b rows, each with a history, a previous step's result and limits."""
    hist = torch.full((b + 1, hist_width), -7, dtype=torch.int32)  # one row more than the step: untouched
    hist_len = torch.zeros(b + 1, dtype=torch.int64)
    last = torch.full((b + 1, q + 2), -5, dtype=torch.int64)
    feed = torch.tensor([rng.random() < 0.8 for _ in range(b)], dtype=torch.int64)
    limits = torch.zeros(b, dtype=torch.int64)
    tables = torch.zeros(b, max_blocks, dtype=torch.int32)
    for i in range(b):
        tokens = _history(rng, rng.randrange(1, hist_width - 2 * q), vocab=rng.choice([4, 20, 1000]))
        emitted = rng.randrange(1, q + 1)
        start = len(tokens) - emitted
        if start < 1:
            start, emitted = len(tokens), 0
        hist[i, :start] = torch.tensor(tokens[:start], dtype=torch.int32)
        hist_len[i] = start
        last[i, :emitted] = torch.tensor(tokens[start:], dtype=torch.int64)
        last[i, q] = emitted
        limits[i] = len(tokens) + rng.choice([0, 1, 3, q, 10 * q])
        tables[i] = torch.tensor(rng.sample(range(1, 4 * max_blocks), max_blocks), dtype=torch.int32)
    outs = (torch.full((b * q,), -1, dtype=torch.int64), torch.full((b * q,), -1, dtype=torch.int64),
            torch.full((b * q,), -1, dtype=torch.int64), torch.full((b,), -1, dtype=torch.int32),
            torch.full((b,), -1, dtype=torch.int64))
    return [hist, hist_len, last, feed, limits, tables, *outs]


def test_reference_writes_the_step_of_the_proposers_drafts():
    rng = random.Random(0)
    q, bs = 6, 4
    args = _case(rng, 3, q, bs, 40, 150)
    hist0, len0, last = args[0].clone(), args[1].clone(), args[2]
    feed = args[3]
    next_verify_inputs_ref(*args, q=q, block_size=bs, lookup_min=1, lookup_max=4)
    hist, hist_len, _, _, limits, tables, ids, positions, slots, seq_lens, num_drafts = args
    for i in range(3):
        if not feed[i]:
            assert ids[i * q : (i + 1) * q].tolist() == [-1] * q and int(seq_lens[i]) == -1
            assert int(hist_len[i]) == int(len0[i])
            continue
        e = int(last[i, q])
        tokens = hist0[i, : int(len0[i])].tolist() + last[i, :e].tolist()
        n = len(tokens)
        assert hist[i, :n].tolist() == tokens and int(hist_len[i]) == n
        drafts = prompt_lookup(tokens, max(0, min(q - 1, int(limits[i]) - n - 1)), 1, 4)
        assert int(num_drafts[i]) == len(drafts)
        assert ids[i * q : (i + 1) * q].tolist() == [tokens[-1], *drafts] + [0] * (q - 1 - len(drafts))
        assert positions[i * q : (i + 1) * q].tolist() == list(range(n - 1, n - 1 + q))
        want = [int(tables[i, p // bs]) * bs + p % bs for p in range(n - 1, n + len(drafts))]
        assert slots[i * q : (i + 1) * q].tolist() == want + [0] * (q - len(want))
        assert int(seq_lens[i]) == n - 1 + q
    assert hist[3].tolist() == hist0[3].tolist()  # rows beyond the step are not touched


@needs_triton
@pytest.mark.parametrize("q,lo,hi,block", [(6, 1, 4, 32), (16, 2, 4, 64), (4, 3, 5, 16), (9, 1, 1, 1024)])
def test_triton_kernel_equals_reference(q, lo, hi, block):
    from tokenleap_ngram.device.lookup_triton import next_verify_inputs

    rng = random.Random(q * 100 + hi)
    for trial in range(4):
        args = _case(rng, 4, q, 16, 24, 300)
        ref = [a.clone() for a in args]
        next_verify_inputs_ref(*ref, q=q, block_size=16, lookup_min=lo, lookup_max=hi)
        next_verify_inputs(*args, q=q, block_size=16, lookup_min=lo, lookup_max=hi, block=block)
        for name, got, want in zip(["hist", "hist_len", "last", "feed", "limits", "tables", "ids", "positions",
                                    "slots", "seq_lens", "num_drafts"], args, ref):
            assert torch.equal(got, want), (trial, name, got, want)


@needs_triton
def test_triton_kernel_rejects_a_lookup_it_was_not_built_for():
    from tokenleap_ngram.device.lookup_triton import MAX_LOOKUP, next_verify_inputs

    args = _case(random.Random(1), 1, 4, 16, 8, 64)
    with pytest.raises(ValueError, match=f"lookup_min=1, lookup_max={MAX_LOOKUP + 1}"):
        next_verify_inputs(*args, q=4, block_size=16, lookup_min=1, lookup_max=MAX_LOOKUP + 1)
