"""A ``DraftModelProposer`` over a tiny random draft model, built without an engine, and random decode batches to
propose for (scattered blocks, random KV contents), so that two ways of drafting can be compared on exactly the
same inputs."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenleap.engine import setup
from tokenleap_draft.proposer import DraftModelProposer
from tokenleap_plugins import (
    ComputedTokens,
    ProposeBatch,
    ProposerContext,
    ProposeRequest,
    ProposerKVCache,
    SamplingInfo,
    SpeculativeSettings,
)

from .tiny_models import TINY_VOCAB, make_tiny_checkpoint

MAX_MODEL_LEN = 128
NUM_BLOCKS = 160  # 9 requests of up to 64 positions in blocks of 4


def make_draft_proposer(tmp: Path, k: int, device: str = "cpu", backend: str = "torch",
                        block_size: int = 4) -> DraftModelProposer:
    """A bound proposer: a 2-layer float32 random Llama as the draft, its own KV cache of NUM_BLOCKS blocks."""
    draft = make_tiny_checkpoint(tmp, "llama", num_hidden_layers=2, initializer_range=0.3)
    ctx = ProposerContext(
        num_speculative_tokens=k, vocab_size=TINY_VOCAB, max_model_len=MAX_MODEL_LEN, seed=0, device=device,
        dtype="float32", block_size=block_size, attention_backend=backend,
        speculative=SpeculativeSettings(model=str(draft)))
    proposer = DraftModelProposer(None, ctx)
    kv = proposer.needs.kv_cache
    layers = setup.paged_kv_caches(kv.num_layers, kv.num_kv_heads, kv.head_dim, NUM_BLOCKS, block_size,
                                   torch.float32, torch.device(device))
    proposer.bind_kv_cache(ProposerKVCache(layers, NUM_BLOCKS, block_size))
    return proposer


def random_kv(proposer: DraftModelProposer, seed: int = 0) -> None:
    """Random keys and values everywhere (the context the runs attend to), the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    for k, v in proposer.kv:
        k.copy_(torch.randn(k.shape, generator=g))
        v.copy_(torch.randn(v.shape, generator=g))


def decode_batch(proposer: DraftModelProposer, max_drafts: list[int], kept: list[int], seed: int = 0,
                 sampling: SamplingInfo | None = None, prefill: int | None = None) -> ProposeBatch:
    """One decoding request per entry: ``kept[i]`` tokens the last verify step kept (1..k + 1; the run adds the last
    token), ``max_drafts[i]`` drafts wanted (0: not drafted, its run is the kept tokens only). ``prefill``: the
    index of a request that instead just computed its whole prompt (a run too long to pad)."""
    rng = random.Random(seed)
    bs, k = proposer.block_size, proposer.k
    free = list(range(1, NUM_BLOCKS))  # block 0 is the null block
    rng.shuffle(free)
    reqs = []
    for n, (d, c) in enumerate(zip(max_drafts, kept, strict=True)):
        length = rng.randrange(max(c, k) + 2, 60)  # at least k + 2 positions: a run the padded forward takes
        if n == prefill:
            length = rng.randrange(k + 3, 60)  # a run of more than k + 2 tokens
            c = length - 1
        tokens = [1] + [rng.randrange(3, 300) for _ in range(length - 1)]
        start = length - 1 - c
        blocks = [free.pop() for _ in range(-(-(length - 1 + k) // bs))]
        reqs.append(ProposeRequest(
            request_id=f"r{n}", token_ids=tokens, num_prompt_tokens=max(1, length - 6), max_num_drafts=d,
            computed=ComputedTokens(start, c), num_computed_tokens=length - 1, block_ids=blocks,
            sampling=sampling or SamplingInfo()))
    return ProposeBatch(reqs)
