"""The EAGLE proposer's catch-up + first draft padded for a captured graph (tokenleap_eagle/catch_up.py,
first_forward.py over tokenleap/speculative/padded_forward.py): which rows a step catches up on, by hand, and the
padded forward (what runs on CPU, eagerly, where CUDA replays a graph) against the unpadded catch-up on the same
inputs: the same head output and first drafts, the same bits of every key and value a request owns, only the runs'
slots written, and the same drafts; steps that do not fit keep the unpadded path."""

from __future__ import annotations

import pytest
import torch
from tokenleap.speculative.padded_inputs import Run
from tokenleap_eagle.catch_up import catch_up
from tokenleap_eagle.chain import BUCKETS
from tokenleap_plugins import ComputedTokens, ProposeBatch, ProposeRequest, SamplingInfo

from tests.helpers.eagle_proposer import HIDDEN, make_proposer, random_kv, verify_batch
from tests.test_draft_first_forward import row_invariant_linear  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

K = 5
# (drafts wanted, rows the step kept) per request: batch 1 with nothing / everything accepted (runs of 1 and
# k + 1 = 6 rows), 3 requests (bucket 4, one with fewer drafts allowed), 9 among non-drafted ones (bucket 16)
BATCHES = [([5], [1]), ([5], [6]), ([5, 1, 3], [2, 6, 3]), ([5, 0, 2, 1, 0, 5, 3, 0, 4], [1, 2, 3, 4, 5, 6, 1, 2, 3])]


def _request(n: int, tokens: list[int], start: int, count: int, drafts: int, row: int) -> ProposeRequest:
    return ProposeRequest(request_id=f"r{n}", token_ids=tokens, num_prompt_tokens=2, max_num_drafts=drafts,
                          computed=ComputedTokens(start, count, hidden_rows=row), num_computed_tokens=start + count,
                          block_ids=[n + 1], sampling=SamplingInfo())


def test_catch_up_by_hand():
    tokens = list(range(10, 20))  # P = 8
    reqs = [
        _request(0, tokens, 6, 3, 4, 0),  # positions 6..8 (feeding tokens 17..19), drafting from P
        _request(1, tokens, 8, 1, 0, 3),  # position 8, no drafts wanted
        _request(2, tokens, 3, 2, 2, 4),  # mid-prefill (positions 3, 4): not at P, not drafting
        _request(3, tokens, 9, 0, 3, 6),  # nothing computed
        _request(4, tokens, 7, 5, 3, 6),  # the count past the known tokens: clipped to positions 7, 8
    ]
    reqs.append(ProposeRequest(request_id="r5", token_ids=tokens, num_prompt_tokens=2, max_num_drafts=3,
                               computed=None, num_computed_tokens=9, block_ids=[6], sampling=SamplingInfo()))
    cu = catch_up(reqs)
    assert cu.caught == [0, 1, 2, 4]
    assert cu.runs == [Run(tokens[7:10], 6, [1]), Run(tokens[9:10], 8, [2]), Run(tokens[4:6], 3, [3]),
                       Run(tokens[8:10], 7, [5])]
    assert cu.hidden_rows == [0, 3, 4, 6]
    assert cu.active == [0, 3]  # indices into runs


@pytest.fixture(scope="module", params=["eagle3", "eagle"])
def proposer(request, tmp_path_factory):
    return make_proposer(tmp_path_factory.mktemp(request.param), request.param, K)


@pytest.fixture
def row_invariant_attention(monkeypatch):
    """The head has one query head per KV head, so the torch attention's scores of a request with fewer than 4
    queries are matrix-vector products on CPU BLAS (other low bits than 4 or more queries, and more queries may
    block differently again), which the padding (q queries a request) would show. Under this fixture its einsums
    run 4 queries at a time (the last chunk zero padded), so that the comparison sees the padding alone (on the GPU
    the Triton kernels are query invariant)."""
    real = torch.einsum

    def einsum(equation, a, b):
        first, out = equation.split(",")[0], equation.split("->")[1]
        if "q" not in first:
            return real(equation, a, b)
        i, m = first.index("q"), a.shape[first.index("q")]
        pad = list(a.shape)
        pad[i] = -m % 4
        chunks = torch.cat([a, a.new_zeros(pad)], dim=i).split(4, dim=i)
        return torch.cat([real(equation, c, b) for c in chunks], dim=out.index("q")).narrow(out.index("q"), 0, m).contiguous()

    monkeypatch.setattr(torch, "einsum", einsum)


def _propose(proposer, batch, padded: bool):
    """Drafts, (g, first drafts) the chain starts from, and the head's KV after the step, from the same random
    cache; padded or unpadded catch-up."""
    random_kv(proposer)
    first, seen = proposer.first, []
    greedy = proposer._draft_greedy

    def recording(reqs, drafting, g, first_drafts):
        seen.append((g.clone(), first_drafts.clone()))
        return greedy(reqs, drafting, g, first_drafts)

    ran = []
    run = first.run
    first.run = lambda *a: ran.append(a[2]) or run(*a)
    proposer._draft_greedy = recording
    if not padded:
        proposer.first = None
    try:
        drafts = [list(d) for d in proposer.propose(batch).token_ids]
    finally:
        proposer.first = first
        del proposer._draft_greedy, first.run
    assert len(ran) == padded
    return drafts, seen[0], [t.clone() for t in proposer.kv], (ran[0] if ran else None)


def _owned(cache: torch.Tensor) -> torch.Tensor:
    """Every slot but the null slot (slot 0 of block 0, where padding writes)."""
    return cache.reshape(-1, *cache.shape[2:])[1:]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["eagle3", "eagle"])
def test_padded_catch_up_is_exact(kind, seed, tmp_path, row_invariant_linear, row_invariant_attention):  # noqa: F811
    proposer = make_proposer(tmp_path, kind, K)  # made under the fixtures: its layer ops take the patched linear
    for max_drafts, kept in BATCHES:
        batch = verify_batch(proposer, max_drafts, kept, seed=seed)
        padded, (pg, pfirst), pkv, bucket = _propose(proposer, batch, True)
        unpadded, (g, first), kv, _ = _propose(proposer, batch, False)
        assert bucket == next(b for b in BUCKETS if b >= len(max_drafts))
        assert [len(d) for d in padded] == max_drafts
        assert padded == unpadded, (proposer.kind, max_drafts)
        assert torch.equal(pg, g) and torch.equal(pfirst, first), (proposer.kind, max_drafts)
        for p, u in zip(pkv, kv, strict=True):
            assert torch.equal(_owned(p), _owned(u)), (proposer.kind, max_drafts)
    assert len({t for d in padded for t in d}) > 3  # varied drafts


def test_padded_catch_up_writes_the_runs_slots_only(proposer):
    for max_drafts, kept in BATCHES:
        batch = verify_batch(proposer, max_drafts, kept, seed=3)
        cu = catch_up(batch.requests)
        random_kv(proposer)
        before = [_owned(t).clone() for t in proposer.kv]
        g, first = proposer.first.run(cu.runs, cu.active, proposer.first.bucket(cu.runs), cu.hidden_rows,
                                      batch.hidden_states)
        assert g.shape == (len(cu.active), proposer.head.cfg.hidden_size) and first.shape == (len(cu.active),)
        bs = proposer.block_size
        want = sorted(r.block_ids[p // bs] * bs + p % bs for r in cu.runs
                      for p in range(r.start, r.start + len(r.token_ids)))
        for t, old in zip(proposer.kv, before, strict=True):
            changed = (_owned(t) != old).flatten(1).any(dim=1).nonzero().flatten() + 1
            assert changed.tolist() == want, max_drafts


def test_steps_that_do_not_fit_keep_the_unpadded_path(proposer, monkeypatch):
    monkeypatch.setattr(proposer.first, "run", lambda *a: pytest.fail("the padded catch-up ran"))
    # a prefill run (longer than k + 1 rows)
    out = proposer.propose(verify_batch(proposer, [5, 3], [1, 2], prefill=1))
    assert [len(d) for d in out.token_ids] == [5, 3]
    # sampled requests
    out = proposer.propose(verify_batch(proposer, [3, 2], [2, 6], sampling=SamplingInfo(temperature=0.8, seed=7)))
    assert [len(d) for d in out.token_ids] == [3, 2] and out.probs is not None
    # a context shorter than q = k + 1 (a padding query would fall before position 0)
    hidden = {i: torch.randn(2, HIDDEN) for i in proposer.needs.hidden_state_layers}
    out = proposer.propose(ProposeBatch([_request(0, [1, 5, 6, 7], 1, 2, 2, 0)], hidden))
    assert [len(d) for d in out.token_ids] == [2]


def test_padded_step_reads_back_once(proposer, monkeypatch):
    """The padded step reads the drafts back once: no ``.tolist()`` of device tensors on the way."""
    calls = []
    real = torch.Tensor.tolist

    def counting(self):
        calls.append(tuple(self.shape))
        return real(self)

    batch = verify_batch(proposer, [5, 0, 2, 4], [6, 1, 3, 2], seed=3)
    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    proposer.propose(batch)
    assert calls == [(3, K)]  # [drafting requests, max drafts]
    assert 4 in proposer.first.used()
