"""Programmatic dependent launch changes when kernels start, never what they compute (GPU machine only)."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch
from test_query_invariance import SMOLLM2_SHAPE
from tokenleap import LLM
from tokenleap.kernels import pdl

pytestmark = pytest.mark.skipif(not pdl.enabled(torch.device("cuda")), reason="PDL needs compute capability 9.0+")


def captured_logits(folder) -> list[torch.Tensor]:
    """Logits of a 16-token verify step, then of a 1-token step, each after 112 tokens of context, through the
    captured graphs of a SmolLM2-shaped bf16 model with random weights (the same seed every time)."""
    torch.manual_seed(0)
    llm = LLM(model=str(folder), load_format="dummy", device="cuda", dtype="bfloat16", disable_log_stats=True,
              max_num_seqs=1, seed=0, speculative_config={"method": "ngram", "num_speculative_tokens": 15})
    graphs, bs = llm.engine.runner.graphs, llm.engine.cfg.block_size
    table = (np.arange(graphs.max_blocks) % (llm.engine.blocks.num_blocks - 1) + 1).astype(np.int32)[None, :]
    rng = np.random.default_rng(0)
    out = []
    for start, q in [(0, 16), (16, 16), (32, 16), (48, 16), (64, 16), (80, 16), (96, 16), (112, 16), (128, 1)]:
        pos = np.arange(start, start + q, dtype=np.int64)
        slots = table[0][pos // bs].astype(np.int64) * bs + pos % bs
        logits, _ = graphs.run(1, q, rng.integers(3, 300, q).astype(np.int64), pos, slots, np.array([q - 1]),
                               table, np.array([start + q], dtype=np.int32))
        out.append(logits.clone())
        torch.cuda.synchronize()
    llm = graphs = None  # one engine on the GPU at a time
    gc.collect()
    torch.cuda.empty_cache()
    return out


def test_logits_with_and_without_pdl_are_the_same_bits(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_SHAPE))
    with_pdl = captured_logits(tmp_path)
    monkeypatch.setattr(pdl, "enabled", lambda device: False)
    without = captured_logits(tmp_path)
    assert len(with_pdl) == len(without) == 9
    assert [i for i, (a, b) in enumerate(zip(with_pdl, without)) if not torch.equal(a, b)] == []
    assert all(torch.isfinite(t.float()).all() for t in with_pdl)
