"""Model-based device drafting on the Triton backend (in the interpreter on CPU): the drafters' Triton input kernels,
the heads' Triton attention reading only device lengths (as inside a captured graph), the graphed path run eagerly.
Drafting on the device gives host drafting's tokens and counts, and plain decoding's tokens."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import pytest  # noqa: E402
from helpers.padded_path import assert_device_drafting_equals_host, use_padded_path  # noqa: E402
from helpers.triton_marks import TRITON_MARKS  # noqa: E402
from tokenleap import LLM, SamplingParams  # noqa: E402

pytestmark = [*TRITON_MARKS, pytest.mark.usefixtures("torch_one_thread")]

PROMPTS = [{"prompt_token_ids": [5, 9, 14]}, {"prompt_token_ids": [6, 9, 14, 3, 27, 10]}]
PARAMS = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in (6, 9)]


def test_device_drafting_on_triton_equals_host(tmp_path):
    """An EAGLE-3 head (the drafter MTP layers share); the MLP speculator's stages are plain torch ops around the
    same input kernels."""
    from helpers.eagle_heads import write_eagle3_head
    from helpers.tiny_models import TINY_VOCAB, make_tiny_checkpoint
    from tokenleap.speculative.catch_up_drafter import CatchUpChainDrafter

    target = make_tiny_checkpoint(tmp_path / "target", "llama")
    head = write_eagle3_head(tmp_path / "head", 64, TINY_VOCAB, 96, seed=2)
    spec = {"method": "eagle3", "model": str(head), "num_speculative_tokens": 3}
    common = dict(attention_backend="triton", disable_log_stats=True, num_gpu_blocks_override=64, block_size=16)
    plain = LLM(model=str(target), **common)
    want = [list(o.outputs[0].token_ids) for o in plain.generate(PROMPTS, PARAMS, use_tqdm=False)]

    def make_llm(device_drafting: bool) -> LLM:
        llm = LLM(model=str(target), speculative_config=spec, max_num_seqs=4, **common)
        return use_padded_path(llm, 16, device_drafting=device_drafting)

    got, _ = assert_device_drafting_equals_host(make_llm, PROMPTS, PARAMS, CatchUpChainDrafter)
    assert got == want
