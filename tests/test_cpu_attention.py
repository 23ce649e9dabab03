"""The CPU fast path's paged attention (kernels/cpu_attention.py), bfloat16.

- ``attend`` gives transformers' own eager attention in bfloat16 (``eager_attention_forward``), bit for bit.
- Over a paged cache with scattered blocks and several requests in one step, each request's rows are what
  ``attend`` gives on that request's keys and values alone.
- Query invariance: a row's output has the same bits alone (a decode step) as among the rows of a verify step
  or a prefill chunk, with and without a sliding window, with 1 and 2 threads.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tokenleap.kernels.cpu_attention import attend, cpu_plan, paged_attention_cpu

H, KVH, D, BS = 9, 3, 64, 16  # SmolLM2's heads; block size 16
SCALE = D**-0.5


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


def causal(m: int, s: int, window: int | None = None) -> torch.Tensor:  # [M, S] bool: rows at s - m .. s - 1
    pos, key = torch.arange(s - m, s)[:, None], torch.arange(s)[None, :]
    allowed = key <= pos
    return allowed & (key > pos - window) if window is not None else allowed


def test_attend_is_transformers_eager_bf16():
    from transformers.models.llama.modeling_llama import eager_attention_forward

    m, s = 5, 70
    q, k, v = rand(m, H, D, seed=1), rand(KVH, s, D, seed=2), rand(KVH, s, D, seed=3)
    allowed = causal(m, s)
    mask = torch.zeros(m, s, dtype=torch.bfloat16).masked_fill(~allowed, torch.finfo(torch.bfloat16).min)
    module = SimpleNamespace(num_key_value_groups=H // KVH, training=False)
    want, _ = eager_attention_forward(module, q.transpose(0, 1)[None], k[None], v[None], mask[None, None], SCALE)
    assert torch.equal(attend(q, k, v, allowed, SCALE), want[0])  # [M, H, D]


def paged(kv: list[torch.Tensor], num_blocks: int, seed: int):
    """Each request's keys [KVH, S, D] written into a shared paged cache [num_blocks, BS, KVH, D] at shuffled blocks
    (block 0 unused): (cache, block table [num_reqs, max_blocks] int32)."""
    order = torch.randperm(num_blocks - 1, generator=torch.Generator().manual_seed(seed)) + 1
    cache = torch.zeros(num_blocks, BS, KVH, D, dtype=torch.bfloat16)
    width = max(-(-t.shape[1] // BS) for t in kv)
    tables = torch.zeros(len(kv), width, dtype=torch.int32)
    used = 0
    for r, t in enumerate(kv):
        nb = -(-t.shape[1] // BS)
        tables[r, :nb] = order[used : used + nb].int()
        used += nb
        flat = torch.zeros(nb * BS, KVH, D, dtype=torch.bfloat16)
        flat[: t.shape[1]] = t.transpose(0, 1)
        cache[tables[r, :nb].long()] = flat.view(nb, BS, KVH, D)
    return cache, tables


def test_paged_step_of_three_requests():
    """A decode row, a verify step of 4 and a prefill chunk of 20 in one step: each request's rows as alone."""
    q_lens, s_lens = [1, 4, 20], [33, 16, 50]
    keys = [rand(KVH, s, D, seed=10 + r) for r, s in enumerate(s_lens)]
    values = [rand(KVH, s, D, seed=20 + r) for r, s in enumerate(s_lens)]
    q = rand(sum(q_lens), H, D, seed=5)
    k_cache, tables = paged(keys, 12, seed=1)
    v_cache, _ = paged(values, 12, seed=1)
    plan = cpu_plan(tables, q_lens, s_lens, BS, None)
    assert plan[0].allowed is None and plan[1].allowed is not None  # a decode row needs no mask
    out = paged_attention_cpu(q, k_cache, v_cache, plan, SCALE)
    start = 0
    for r, (m, s) in enumerate(zip(q_lens, s_lens)):
        want = attend(q[start : start + m], keys[r], values[r], causal(m, s), SCALE)
        assert torch.equal(out[start : start + m], want), f"request {r}"
        start += m


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("window", [None, 24])
def test_query_invariance(window, threads):
    """Row p alone over keys 0..p (decode) against the same row in a step of m rows ending at s - 1 (verify,
    m = 2..8; prefill chunks, m = 40 and 120): the same bits, for contexts around block and vector edges."""
    for s in (9, 16, 17, 63, 64, 65, 130, 333):
        k, v, q = rand(KVH, s, D, seed=s), rand(KVH, s, D, seed=s + 1), rand(s, H, D, seed=s + 2)
        alone = torch.cat([attend(q[p : p + 1], k[:, : p + 1].contiguous(), v[:, : p + 1].contiguous(),
                                  causal(1, p + 1, window), SCALE) for p in range(s)])  # [S, H, D]
        for m in (2, 3, 4, 6, 8, 40, 120):
            if m > s:
                continue
            out = attend(q[s - m :], k, v, causal(m, s, window), SCALE)
            differ = (out != alone[s - m :]).sum()
            assert differ == 0, f"s={s} m={m}: {int(differ)} outputs differ from the rows alone"
