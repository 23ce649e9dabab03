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


@pytest.mark.parametrize("kind", ["eagle3", "eagle"])
def test_head_on_triton_ops_equals_its_torch_ops(tmp_path, kind):
    """The head's forward on core's Triton kernels (``head_ops("triton")``: few-row linears, RMSNorm, RoPE with the
    KV write, SiLU-and-mul) gives its torch references' output and writes the same keys and values, to float32
    rounding, for a catch-up of several rows and a one-row chain step."""
    import torch
    from helpers.eagle_proposer import make_proposer
    from tokenleap.model.attention import AttentionMetadata
    from tokenleap_eagle.head import TORCH_OPS, head_ops

    proposer = make_proposer(tmp_path, kind, 3)
    head, hidden = proposer.head, proposer.head.cfg.layer.hidden_size
    g = torch.Generator().manual_seed(0)
    for n, start in ((5, 7), (1, 12)):
        embeds, h = torch.randn(n, hidden, generator=g), torch.randn(n, hidden, generator=g)
        positions = torch.arange(start, start + n)
        bs = proposer.block_size  # position p in block p // bs + 1: slot p + bs
        meta = AttentionMetadata(
            slot_mapping=positions + bs, block_tables=torch.arange(1, 5, dtype=torch.int32)[None],
            query_start_loc=torch.tensor([0, n], dtype=torch.int32),
            seq_lens=torch.tensor([start + n], dtype=torch.int32), query_lens_host=[n], seq_lens_host=[start + n],
            max_query_len=n, max_seq_len=64, backend="torch")
        outs, caches = [], []
        for ops in (TORCH_OPS, head_ops("triton")):
            fill = torch.Generator().manual_seed(n)  # the same earlier keys and values for both
            kv = tuple(torch.zeros_like(t) for t in proposer.kv)
            kv[0][1:5].normal_(generator=fill), kv[1][1:5].normal_(generator=fill)
            head.ops = ops
            outs.append(head(embeds, h, positions, kv, meta))
            caches.append(kv)
        head.ops = TORCH_OPS
        torch.testing.assert_close(outs[1], outs[0], atol=2e-5, rtol=1e-4)
        for a, b in zip(caches[0], caches[1]):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
        if kind == "eagle3":
            torch.testing.assert_close(head_ops("triton").linear(outs[0], head.lm_head.weight, None),
                                       TORCH_OPS.linear(outs[0], head.lm_head.weight, None), atol=2e-5, rtol=1e-4)
