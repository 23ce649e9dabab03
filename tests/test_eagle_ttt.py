"""Training-time test (the unrolled dense forward) computes exactly what drafting computes on the paged cache."""

import torch
from tokenleap.kernels.ops import layer_ops
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import LlamaForCausalLM
from tokenleap.model.loader import load_checkpoint
from tokenleap_eagle.checkpoint import load_head
from tokenleap_eagle.train.data import capture_hidden_states
from tokenleap_eagle.train.ttt import ttt_forward

from tests.helpers.eagle_heads import write_eagle3_head
from tests.helpers.tiny_models import TINY_VOCAB, make_tiny_checkpoint

BS = 4


def _meta(slots, qlen, seqlen, blocks):
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots), block_tables=torch.tensor([blocks], dtype=torch.int32),
        query_start_loc=torch.tensor([0, qlen], dtype=torch.int32), seq_lens=torch.tensor([seqlen], dtype=torch.int32),
        query_lens_host=[qlen], seq_lens_host=[seqlen], max_query_len=qlen, max_seq_len=64)


def test_ttt_steps_equal_paged_drafting(tmp_path):
    target_dir = make_tiny_checkpoint(tmp_path, "llama", num_hidden_layers=4)
    ckpt = load_checkpoint(target_dir)
    target = LlamaForCausalLM(ckpt.arch, 128, layer_ops("torch"))
    target.load_hf_weights(ckpt.weights)
    head = load_head(write_eagle3_head(tmp_path / "head", 64, TINY_VOCAB, 50), max_model_len=128)
    layers = (2, 2, 1)
    seq = [1, 17, 40, 99, 5, 230, 12, 8, 77, 150, 3, 19, 250, 61]
    aux, final = capture_hidden_states(target, [seq], layers)
    tokens = torch.tensor([seq])
    aux_cat = torch.cat([aux[i] for i in layers], dim=-1)[None]
    steps = 3
    lm_rows = target.lm_head.weight[head.target_ids()]
    with torch.no_grad():
        res = ttt_forward(head, target.embed_tokens, lm_rows, tokens, aux_cat, final[None],
                          torch.ones_like(tokens, dtype=torch.bool), steps, keep_logits=True)
    assert len(res.step_logits) == steps
    blocks = list(range(1, 9))
    kv = (torch.zeros(10, BS, 2, 16), torch.zeros(10, BS, 2, 16))
    slot = lambda p: blocks[p // BS] * BS + p % BS  # noqa: E731
    with torch.no_grad():
        for p in (0, 4, 9):
            n = p + 1  # catch-up rows 0..p: (embed(x_{q+1}), fc(aux_q))
            out = head(target.embed_tokens(tokens[0, 1:n + 1]), head.combine(aux_cat[0, :n]), torch.arange(n), kv,
                       _meta([slot(q) for q in range(n)], n, n, blocks))
            torch.testing.assert_close(head.draft_logits(out), res.step_logits[0][0, :n], atol=2e-4, rtol=1e-4)
            g = out[p:p + 1]
            for j in range(1, steps):
                pos = p + j
                g = head(target.embed_tokens(tokens[0, pos + 1:pos + 2]), g, torch.tensor([pos]), kv,
                         _meta([slot(pos)], 1, pos + 1, blocks))
                torch.testing.assert_close(head.draft_logits(g)[0], res.step_logits[j][0, p], atol=2e-4, rtol=1e-4)
