"""Query invariance on the GPU (bf16): a token's row gets the same bits whether its step decodes it alone or
verifies it among 1 + k queries, through the whole model and in the attention kernel, so greedy speculative
decoding gives plain decoding's tokens bit for bit. (The Triton interpreter cannot show this: it reduces
in another precision and order than the GPU, so these checks live here.) The model-level check is the one that
failed against the previous attention kernel (SmolLM2 shapes); the kernel-level one did not catch it."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch
from helpers.tiny_models import make_tiny_checkpoint
from tokenleap import LLM, SamplingParams


def attention_mismatches(head_dim, group, split_tokens=None, max_seq_len=None, window=None, page=16):
    """(position, q, row) cases where a verify step's row differs in any bit from the same token decoded
    alone; request 0 is checked, request 1 (another length) rides along."""
    from tokenleap.kernels.triton_attention import paged_attention_triton

    g = torch.Generator().manual_seed(head_dim + group)
    kv_heads, num_blocks, dev = 2, 64, "cuda"
    heads = kv_heads * group
    k_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=g).to(torch.bfloat16).to(dev)
    v_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=g).to(torch.bfloat16).to(dev)
    tables = (torch.randperm(num_blocks - 2, generator=g)[:48].view(2, 24) + 1).to(torch.int32).to(dev)
    queries = torch.randn(400, heads, head_dim, generator=g).to(torch.bfloat16).to(dev)  # position p: row p

    def attend(q_rows, ctx, other_len):
        q = torch.cat([q_rows, queries[:1]])
        qsl = torch.tensor([0, len(q_rows), len(q_rows) + 1], dtype=torch.int32, device=dev)
        sl = torch.tensor([ctx + len(q_rows), other_len], dtype=torch.int32, device=dev)
        return paged_attention_triton(q, k_cache, v_cache, tables, qsl, sl, len(q_rows), head_dim**-0.5, window,
                                      max_seq_len=max_seq_len, split_tokens=split_tokens)

    bad = []
    for pos in (5, 63, 64, 130, 333):
        alone = attend(queries[pos : pos + 1], pos, 40)[0]
        for q_len in (2, 5, 9, 16):
            for row in range(min(q_len, pos + 1)):
                ctx = pos - row
                if not torch.equal(attend(queries[ctx : ctx + q_len], ctx, 200)[row], alone):
                    bad.append((pos, q_len, row))
    return bad


@pytest.mark.parametrize("head_dim,group,split_tokens,max_seq_len,window", [
    (64, 3, None, 8192, None),  # SmolLM2's heads, the split count of a captured graph
    (128, 4, None, 4096, None),  # Llama-3-8B's
    (64, 3, None, None, None),  # eager: the bound from seq_lens
    (128, 4, 0, None, None),  # no split (large batches)
    (64, 2, 128, 1024, 100),  # sliding window
])
def test_attention_rows_do_not_depend_on_the_query_count(head_dim, group, split_tokens, max_seq_len, window):
    assert attention_mismatches(head_dim, group, split_tokens, max_seq_len, window) == []


SMOLLM2_SHAPE = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=576,
    intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
)


@pytest.mark.parametrize("shape,context", [("tiny", 112), ("smollm2", 112), ("smollm2", 1200)])
def test_logits_of_a_token_do_not_depend_on_the_query_count(tmp_path, shape, context):
    """Through the whole captured model (bf16): a token's logits from a 1 + 15 verify step have the same bits as
    from the 1-token step that decodes it in the same context."""
    spec = {"method": "ngram", "num_speculative_tokens": 15}
    common = dict(device="cuda", dtype="bfloat16", disable_log_stats=True, max_num_seqs=1, speculative_config=spec)
    if shape == "tiny":  # SmolLM2's grouping (3 query heads per kv head): 48 rows per kv head in a verify step
        ckpt = make_tiny_checkpoint(tmp_path, "llama", hidden_size=192, num_attention_heads=6, num_key_value_heads=2)
        llm = LLM(model=str(ckpt), **common)
    else:  # SmolLM2-135M's shapes, random weights
        (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_SHAPE))
        llm = LLM(model=str(tmp_path), load_format="dummy", **common)
    graphs, bs = llm.engine.runner.graphs, llm.engine.cfg.block_size
    table = (np.arange(graphs.max_blocks) % (llm.engine.blocks.num_blocks - 1) + 1).astype(np.int32)[None, :]
    rng = np.random.default_rng(0)

    def step(tokens, start):  # -> logits [len(tokens), vocab] of a step at positions start.. (a copy)
        q = len(tokens)
        pos = np.arange(start, start + q, dtype=np.int64)
        slots = table[0][pos // bs].astype(np.int64) * bs + pos % bs
        logits, _ = graphs.run(1, q, np.asarray(tokens, dtype=np.int64), pos, slots, np.array([q - 1]), table,
                               np.array([start + q], dtype=np.int32))
        logits = logits.clone()
        torch.cuda.synchronize()  # as the engine does every step: the two staging buffers are used in turn
        return logits

    for start in range(0, context, 16):
        step(rng.integers(3, 300, 16), start)
    tokens = rng.integers(3, 300, 16)
    verified = step(tokens, context)
    differ = [i for i in range(16) if not torch.equal(step(tokens[i : i + 1], context + i)[0], verified[i])]
    llm = graphs = None  # one engine on the GPU at a time
    gc.collect()
    torch.cuda.empty_cache()
    assert differ == []


def test_bf16_random_model_speculative_equals_plain(tmp_path):
    """End to end in bf16 with the longest verify steps the few-row kernels take (k = 15: 16 queries, 48 rows
    per kv head, three attention tiles): ngram gives plain decoding's tokens. (The bit-level property is
    the logits test above; this one also passed against the previous attention kernel.)"""
    # SmolLM2's grouping (3 query heads per kv head): a verify step of 16 queries has 48 rows per kv head
    ckpt = make_tiny_checkpoint(tmp_path, "llama", hidden_size=192, num_attention_heads=6, num_key_value_heads=2)
    prompts = [{"prompt_token_ids": ([7, 8, 9, 10, 11] * 6 + list(range(40, 40 + 9 * i)))[:64]} for i in range(8)]
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    common = dict(model=str(ckpt), device="cuda", dtype="bfloat16", disable_log_stats=True, max_num_seqs=1)
    plain = LLM(**common)
    want = [o.outputs[0].token_ids for o in plain.generate(prompts, params, use_tqdm=False)]
    del plain
    gc.collect()
    torch.cuda.empty_cache()
    spec = LLM(**common, speculative_config={"method": "ngram", "num_speculative_tokens": 15,
                                             "prompt_lookup_min": 1, "prompt_lookup_max": 3})
    got = [o.outputs[0].token_ids for o in spec.generate(prompts, params, use_tqdm=False)]
    assert got == want
    accepted = {m.name: getattr(m, "value", None) for m in spec.get_metrics()}["tokenleap:spec_decode_num_accepted_tokens"]
    assert accepted > 0
