"""The device drafters' inputs in two Triton kernels (kernels/triton_draft_inputs.py, in the interpreter on CPU)
write exactly what the torch composition (``speculative.device_inputs.draft_step_inputs``, ``write_drafts``) writes:
counts, catch-up rows, every chain step's row, the verify step's inputs and the moved ``ctx_len``, for fed and
unfed rows, limits cutting the drafts, k from 1 to 5."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.triton_marks import needs_triton  # noqa: E402
from tokenleap.speculative.device_inputs import draft_step_inputs, write_drafts  # noqa: E402
from tokenleap_plugins import DeviceDraftStep  # noqa: E402


def _case(seed: int, b: int, q: int, max_rows: int = 8, max_blocks: int = 12, bs: int = 4):
    g = torch.Generator().manual_seed(seed)
    w = q + 2
    last = torch.randint(0, 300, (max_rows, w), generator=g)
    last[:, w - 2] = torch.randint(0, q + 1, (max_rows,), generator=g)
    ctx_len = torch.randint(q + 1, 25, (max_rows,), generator=g)
    feed = (torch.rand(b, generator=g) < 0.7).long()
    limits = ctx_len[:b] + last[:b, w - 2] + torch.randint(-2, q + 2, (b,), generator=g)
    tables = torch.randint(1, 50, (b, max_blocks), generator=g, dtype=torch.int32)
    drafts = torch.randint(0, 300, (b, q - 1), generator=g)

    def step():
        return DeviceDraftStep(
            last=last, feed=feed, limits=limits, tables=tables, ids=torch.full((b * q,), -7, dtype=torch.int64),
            positions=torch.full((b * q,), -7, dtype=torch.int64), slots=torch.full((b * q,), -7, dtype=torch.int64),
            seq_lens=torch.full((b,), -7, dtype=torch.int32), num_drafts=torch.full((b,), -7, dtype=torch.int64),
            q=q, block_size=bs)

    return ctx_len, step, drafts


@needs_triton
@pytest.mark.parametrize("q", [2, 3, 6])
@pytest.mark.parametrize("b", [1, 5])
def test_kernels_equal_the_torch_composition(b, q):
    from tokenleap.kernels.triton_draft_inputs import draft_step_inputs_triton, write_drafts_triton

    for seed in range(3):
        ctx_len, step, drafts = _case(seed + 10 * b + q, b, q)
        want_step, got_step = step(), step()
        want_ctx, got_ctx = ctx_len.clone(), ctx_len.clone()
        want = draft_step_inputs(want_step, want_ctx, q - 1)
        got = draft_step_inputs_triton(got_step, got_ctx, q - 1)
        for name in ("n", "token", "nd", "chain_positions", "chain_slots", "chain_seq_lens"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (seed, name)
        for name, x, y in zip(want.catch_up._fields, got.catch_up, want.catch_up):
            assert torch.equal(x, y), (seed, name)
        assert torch.equal(got_ctx, want_ctx)
        write_drafts(want_step, want.nd, drafts)
        write_drafts_triton(got_step, got.nd, drafts)
        for name in ("ids", "positions", "slots", "seq_lens", "num_drafts"):
            assert torch.equal(getattr(got_step, name), getattr(want_step, name)), (seed, name)
