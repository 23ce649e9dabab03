"""The draft_model proposer's padded first forward on the Triton kernels (what its CUDA graph runs), in the Triton
interpreter on CPU, against the unpadded forward on the same kernels: the attention reads the padded layout's query
starts and sequence lengths from the device, and gives the same bits. Where the padding takes a step past the
few-row linears' MAX_ROWS and the unpadded step does not, the linears differ in low bits: the drafts stay equal."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.draft_proposer import decode_batch, make_draft_proposer  # noqa: E402
from tests.helpers.triton_marks import TRITON_MARKS  # noqa: E402
from tests.test_draft_first_forward import BATCHES, _first, _owned, _runs  # noqa: E402

pytestmark = [*TRITON_MARKS, pytest.mark.usefixtures("torch_one_thread")]

K = 5


def test_padded_first_forward_on_the_triton_kernels(tmp_path):
    from tokenleap.kernels.triton_linear import MAX_ROWS

    proposer = make_draft_proposer(tmp_path, K, backend="triton")
    q = proposer.first.q
    for max_drafts, kept in BATCHES:
        runs, drafting = _runs(decode_batch(proposer, max_drafts, kept, seed=0))
        bucket = proposer.first.bucket(runs)
        padded_logits, padded_kv = _first(proposer, runs, drafting, padded=True)
        logits, kv = _first(proposer, runs, drafting, padded=False)
        assert padded_logits.argmax(-1).tolist() == logits.argmax(-1).tolist(), max_drafts
        rows = sum(len(r.token_ids) for r in runs)
        if (rows <= MAX_ROWS) == (bucket * q <= MAX_ROWS):  # the same linear kernels on both sides
            assert torch.equal(padded_logits, logits), max_drafts
            for (pk, pv), (k, v) in zip(padded_kv, kv, strict=True):
                assert torch.equal(_owned(pk), _owned(k)) and torch.equal(_owned(pv), _owned(v)), max_drafts
        else:
            torch.testing.assert_close(padded_logits, logits, rtol=1e-4, atol=1e-4)
