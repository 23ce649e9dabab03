"""``tokenleap.speculative.device_inputs``: the fixed-shape ops a model-based device drafter builds its head's inputs
and the next verify step with equal their row-by-row references, for fed and unfed rows, rows whose drafts a token
limit cuts, previous steps of 1 or q query rows, and padding rows holding stale values."""

from __future__ import annotations

import pytest
import torch
from tokenleap.speculative.device_inputs import (
    catch_up_inputs,
    catch_up_inputs_ref,
    chain_step_inputs,
    chain_step_inputs_ref,
    kept_drafts,
    last_emitted,
    last_emitted_ref,
    write_verify_inputs,
    write_verify_inputs_ref,
)
from tokenleap_plugins import DeviceDraftStep

BS, MAX_BLOCKS, HIDDEN = 4, 12, 8


def _case(seed: int, b: int, q: int, max_rows: int = 8):
    g = torch.Generator().manual_seed(seed)
    w = q + 2
    last = torch.randint(0, 300, (max_rows, w), generator=g)
    last[:, w - 2] = torch.randint(0, q + 1, (max_rows,), generator=g)  # emitted: 0 (padding) .. q
    last[:, w - 1] = torch.randint(0, q, (max_rows,), generator=g)
    ctx_len = torch.randint(1, 20, (max_rows,), generator=g)
    hidden = torch.randn(max_rows, q, HIDDEN, generator=g)
    feed = (torch.rand(b, generator=g) < 0.7).long()
    n = ctx_len[:b] + last[:b, w - 2]
    limits = n + torch.randint(-2, q + 2, (b,), generator=g)  # some rows may take fewer than k drafts, or none
    tables = torch.randint(1, 50, (b, MAX_BLOCKS), generator=g, dtype=torch.int32)

    def step():
        return DeviceDraftStep(
            last=last, feed=feed, limits=limits, tables=tables, ids=torch.full((b * q,), -7, dtype=torch.int64),
            positions=torch.full((b * q,), -7, dtype=torch.int64), slots=torch.full((b * q,), -7, dtype=torch.int64),
            seq_lens=torch.full((b,), -7, dtype=torch.int32), num_drafts=torch.full((b,), -7, dtype=torch.int64),
            q=q, block_size=BS, hidden_states={-1: hidden})

    drafts = torch.randint(0, 300, (b, q - 1), generator=g)
    return last, ctx_len, hidden, step, drafts


@pytest.mark.parametrize("q", [2, 4, 6])
@pytest.mark.parametrize("b", [1, 3, 8])
def test_fast_paths_equal_the_references(b, q):
    for seed in range(6):
        last, ctx_len, hidden, step, drafts = _case(seed * 31 + b * 7 + q, b, q)
        fast = last_emitted(last, ctx_len, b)
        ref = last_emitted_ref(last, ctx_len, b)
        for got, want in zip(fast, ref):
            assert torch.equal(got, want)
        n, token = fast
        got_step, want_step = step(), step()
        write_verify_inputs(got_step, n, token, drafts)
        write_verify_inputs_ref(want_step, n, token, drafts)
        for name in ("ids", "positions", "slots", "seq_lens", "num_drafts"):
            assert torch.equal(getattr(got_step, name), getattr(want_step, name)), (seed, name)


def test_a_row_reads_its_last_emitted_token():
    """Row 0 emitted 3 tokens after knowing 10: it knows 13, the last is its argmax column 2; its inputs are that token and the drafts at positions 12.., its slots from its blocks;
    row 1 (not fed) keeps what was staged."""
    q, w = 4, 6
    last = torch.zeros(2, w, dtype=torch.int64)
    last[0, :4] = torch.tensor([5, 6, 7, 8])
    last[0, w - 2] = 3
    ctx_len = torch.tensor([10, 4])
    n, token = last_emitted(last, ctx_len, 2)
    assert n.tolist()[0] == 13 and token.tolist()[0] == 7
    tables = torch.tensor([[3, 9, 2, 6], [1, 1, 1, 1]], dtype=torch.int32)
    step = DeviceDraftStep(
        last=last, feed=torch.tensor([1, 0]), limits=torch.tensor([15, 99]), tables=tables,
        ids=torch.full((8,), -1, dtype=torch.int64), positions=torch.full((8,), -1, dtype=torch.int64),
        slots=torch.full((8,), -1, dtype=torch.int64), seq_lens=torch.full((2,), -1, dtype=torch.int32),
        num_drafts=torch.full((2,), -1, dtype=torch.int64), q=q, block_size=4)
    write_verify_inputs(step, n, token, torch.tensor([[40, 41, 42], [50, 51, 52]]))
    # limit 15: 13 known, so one draft keeps it within (the verify step emits up to 2 tokens); the sequence
    # length counts all q rows, padding included (as the host stages it)
    assert step.ids.tolist() == [7, 40, 0, 0, -1, -1, -1, -1]
    assert step.positions.tolist() == [12, 13, 14, 15, -1, -1, -1, -1]
    assert step.slots.tolist() == [6 * 4 + 0, 6 * 4 + 1, 0, 0, -1, -1, -1, -1]  # position 12: block 3
    assert step.seq_lens.tolist() == [16, -1] and step.num_drafts.tolist() == [1, -1]


@pytest.mark.parametrize("q", [2, 4, 6])
@pytest.mark.parametrize("b", [1, 3, 8])
def test_head_inputs_equal_the_references(b, q):
    """The catch-up over the kept rows and the chain's one-token steps, fed rows and not, limits cutting drafts."""
    for seed in range(6):
        last, ctx_len, _, step, _ = _case(seed * 17 + b * 5 + q, b, q)
        st = step()
        n = last_emitted(last, ctx_len, b)[0].clamp(min=q + 1)  # contexts of at least q + 1 tokens
        got = catch_up_inputs(last, n, st.tables, st.feed, q, BS)
        want = catch_up_inputs_ref(last, n, st.tables, st.feed, q, BS)
        for name, x, y in zip(got._fields, got, want):
            assert torch.equal(x, y), (seed, name)
        nd = kept_drafts(st.limits, n, q - 1)
        assert nd.tolist() == [min(q - 1, max(0, int(lim) - int(m) - 1)) for lim, m in zip(st.limits, n)]
        for s in range(q - 2):
            for x, y in zip(chain_step_inputs(n, nd, st.tables, s, BS), chain_step_inputs_ref(n, nd, st.tables, s, BS)):
                assert torch.equal(x, y), (seed, s)


def test_catch_up_takes_the_kept_rows_last():
    """A row that knew 10 tokens and emitted 2 (tokens 7, 8) catches up on positions 9 and 10 in its last two rows:
    position 9 (its previous first row) feeds 7, position 10 feeds 8; the rows before are padding."""
    q = 4
    last = torch.zeros(1, q + 2, dtype=torch.int64)
    last[0, :2] = torch.tensor([7, 8])
    last[0, q] = 2
    tables = torch.tensor([[3, 9, 2, 6]], dtype=torch.int32)
    x = catch_up_inputs(last, torch.tensor([12]), tables, torch.tensor([1]), q, 4)
    assert x.ids.tolist() == [0, 0, 7, 8] and x.positions.tolist() == [0, 0, 9, 10]
    assert x.slots.tolist() == [0, 0, 2 * 4 + 1, 2 * 4 + 2] and x.rows.tolist() == [[0, 0, 0, 1]]
    assert x.seq_lens.tolist() == [11] and x.last_rows.tolist() == [3] and x.query_start.tolist() == [0, 4]
