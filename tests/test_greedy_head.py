"""A graphed step's greedy head (kernels/greedy_ref.py, kernels/triton_greedy.py): the argmax of every logits
row and greedy verification. The reference must be ``verify_greedy`` over ``torch.argmax`` (first index of the
maximum) with the graphs' row layout, and the Triton kernels (in the interpreter on CPU) must write exactly what
the reference writes: ties inside and across the kernel's chunks, drafts accepted up to the first mismatch or
all of them, padding rows past the drafts, bf16 and fp32 logits, and the copies for a step launched behind."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.triton_marks import needs_triton  # noqa: E402
from tokenleap.kernels.greedy_ref import greedy_head_ref  # noqa: E402


def _case(seed: int, b: int, q: int, vocab: int, dtype: torch.dtype):
    """Logits with planted ties, and input ids whose drafts follow the argmax for a random number of rows."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b * q, vocab, generator=g).to(dtype)
    top = logits.float().max(dim=1).values
    for row in range(0, b * q, 2):  # ties: the same maximum again, later in the row (often another chunk)
        later = int(torch.randint(vocab // 2, vocab, (1,), generator=g))
        logits[row, later] = (top[row] + 1.0).to(dtype)
        first = int(torch.randint(0, vocab // 2, (1,), generator=g))
        logits[row, first] = (top[row] + 1.0).to(dtype)
    argmax = logits.float().argmax(dim=1).view(b, q)
    ids = torch.randint(0, vocab, (b, q), generator=g)
    num_drafts = torch.randint(0, q, (b,), generator=g)
    for i in range(b):
        good = int(torch.randint(0, q, (1,), generator=g))  # drafts 0..good-1 equal the argmax
        ids[i, 1 : 1 + good] = argmax[i, :good]
    return logits, ids.view(-1), num_drafts


def test_reference_is_argmax_then_accept_while_equal():
    logits, ids, num_drafts = _case(1, 3, 6, 300, torch.float32)
    greedy = greedy_head_ref(logits, ids, num_drafts, 6)
    argmax = logits.argmax(dim=1).view(3, 6)
    for i in range(3):
        accepted = 0
        while accepted < num_drafts[i] and ids[i * 6 + 1 + accepted] == argmax[i, accepted]:
            accepted += 1
        assert greedy[i].tolist() == argmax[i].tolist() + [accepted + 1, int(num_drafts[i])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,q,vocab", [(1, 1, 5000), (3, 1, 4100), (1, 16, 5000), (2, 5, 2049)])
@needs_triton
def test_triton_greedy_head_equals_reference(b, q, vocab, dtype):
    from tokenleap.kernels.triton_greedy import greedy_head

    for seed in range(3):
        logits, ids, num_drafts = _case(seed, b, q, vocab, dtype)
        want_tokens, got_tokens = torch.full((b + 1,), -3), torch.full((b + 1,), -3)
        want_verify, got_verify = torch.full((b + 1, 20), -4), torch.full((b + 1, 20), -4)
        want = greedy_head_ref(logits, ids, num_drafts, q, want_tokens if q == 1 else None, want_verify)
        got = greedy_head(logits, ids, num_drafts, q, got_tokens if q == 1 else None, got_verify)
        assert torch.equal(got, want), f"seed {seed}: {got.tolist()} != {want.tolist()}"
        assert torch.equal(got_tokens, want_tokens) and torch.equal(got_verify, want_verify)


@needs_triton
def test_triton_greedy_head_rejects_bad_shapes():
    from tokenleap.kernels.triton_greedy import greedy_head

    with pytest.raises(ValueError, match=r"logits \[2 \* 3, vocab\] .* got \(5, 10\)"):
        greedy_head(torch.zeros(5, 10), torch.zeros(6, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match=r"last_verify needs >= 5 columns; got \(2, 4\)"):
        greedy_head(torch.zeros(6, 10), torch.zeros(6, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), 3,
                    last_verify=torch.zeros(2, 4, dtype=torch.int64))
