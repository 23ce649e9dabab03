"""An ``EagleProposer`` over a tiny random target and a random head, built without an engine, and random batches
to propose for: each request's catch-up rows read random hidden states (the head does not care where they come
from), so two ways of drafting can be compared on exactly the same inputs."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenleap.engine import setup
from tokenleap.speculative.building import target_handles
from tokenleap_eagle.proposer import EagleProposer
from tokenleap_plugins import (
    ComputedTokens,
    ProposeBatch,
    ProposerContext,
    ProposeRequest,
    ProposerKVCache,
    SamplingInfo,
    SpeculativeSettings,
)

from .eagle_heads import write_eagle1_head, write_eagle3_head
from .tiny_models import TINY_VOCAB, make_tiny_checkpoint

HIDDEN = 64
NUM_LAYERS = 4
MAX_MODEL_LEN = 128
NUM_BLOCKS = 96


def make_proposer(tmp: Path, kind: str, k: int, device: str = "cpu", backend: str = "torch",
                  block_size: int = 4) -> EagleProposer:
    """A bound proposer of ``kind`` ("eagle" / "eagle3"): float32, the target's KV cache size in blocks."""
    target_dir = make_tiny_checkpoint(tmp, "llama", num_hidden_layers=NUM_LAYERS, initializer_range=0.3)
    if kind == "eagle3":
        head = write_eagle3_head(tmp / "head3", HIDDEN, TINY_VOCAB, 96, seed=2)
    else:
        head = write_eagle1_head(tmp / "head1", HIDDEN, TINY_VOCAB, seed=1)
    dev = torch.device(device)
    loaded = setup.load_weights(target_dir, "float32", dev, MAX_MODEL_LEN + 2 * (k + 1), backend)
    ctx = ProposerContext(
        num_speculative_tokens=k, vocab_size=TINY_VOCAB, max_model_len=MAX_MODEL_LEN, seed=0, device=device,
        dtype="float32", hidden_size=HIDDEN, num_hidden_layers=NUM_LAYERS, block_size=block_size,
        attention_backend=backend, speculative=SpeculativeSettings(model=str(head)),
        target=target_handles(loaded.model, None))
    proposer = EagleProposer(kind, None, ctx)
    kv = proposer.needs.kv_cache
    layers = setup.paged_kv_caches(1, kv.num_kv_heads, kv.head_dim, NUM_BLOCKS, block_size, torch.float32, dev)
    proposer.bind_kv_cache(ProposerKVCache(layers, NUM_BLOCKS, block_size))
    return proposer


def random_batch(proposer: EagleProposer, max_drafts: list[int], seed: int = 0,
                 sampling: SamplingInfo | None = None) -> ProposeBatch:
    """One request per entry of ``max_drafts`` (0: not drafted; every third of those is mid-prefill), with random
    tokens, prompt lengths, catch-up spans (a whole prefill or a verify step's last few positions) and scattered
    blocks, and random target hidden states for the catch-up rows."""
    rng = random.Random(seed)

    def span(n: int, d: int) -> tuple[int, int, int]:  # (length, start, count)
        length = rng.randrange(3, 40)
        start = 0 if rng.random() < 0.5 else max(0, length - 1 - rng.randrange(1, 5))
        count = length - 1 - start
        if d == 0 and n % 3 == 0:
            count = max(1, count - 2)  # mid-prefill: the next prompt tokens not computed yet
        return length, start, count

    return _batch(proposer, max_drafts, span, rng, seed, sampling)


def fresh_kv(proposer: EagleProposer) -> None:
    """Zero the head's KV cache, so that a second run starts where the first one did."""
    for t in proposer.kv:
        t.zero_()


def verify_batch(proposer: EagleProposer, max_drafts: list[int], kept: list[int], seed: int = 0,
                 sampling: SamplingInfo | None = None, prefill: int | None = None) -> ProposeBatch:
    """A decode / verify step: request n caught up on the ``kept[n]`` positions its last step kept (1: a decode
    step or every draft rejected; k + 1: every draft accepted), up to its last computed position P = len - 2, and
    wants ``max_drafts[n]`` drafts (0: none). Random tokens, lengths (at least k + 3: every run fits the padded
    layout), scattered blocks and target hidden states. ``prefill``: the index of a request that instead just
    computed its whole prompt (a run too long to pad)."""
    rng = random.Random(seed)
    if len(kept) != len(max_drafts):
        raise ValueError(f"kept has {len(kept)} entries, max_drafts {len(max_drafts)}")

    def span(n: int, d: int) -> tuple[int, int, int]:  # (length, start, count)
        length = rng.randrange(proposer.k + 3, 40)
        count = length - 1 if n == prefill else kept[n]
        return length, length - 1 - count, count

    return _batch(proposer, max_drafts, span, rng, seed, sampling)


def _batch(proposer: EagleProposer, max_drafts: list[int], span, rng: random.Random, seed: int,
           sampling: SamplingInfo | None) -> ProposeBatch:
    """Request n wants ``max_drafts[n]`` drafts and computed ``count`` positions from ``start`` of its ``length``
    tokens, (length, start, count) = ``span(n, max_drafts[n])``; random tokens, scattered blocks (with room for k
    lookahead slots) and random target hidden states of the catch-up rows."""
    bs = proposer.block_size
    free = list(range(1, NUM_BLOCKS))  # block 0 is the null block
    rng.shuffle(free)
    reqs, row = [], 0
    for n, d in enumerate(max_drafts):
        length, start, count = span(n, d)
        tokens = [1] + [rng.randrange(3, 300) for _ in range(length - 1)]
        blocks = [free.pop() for _ in range(-(-(length - 1 + proposer.k) // bs))]
        reqs.append(ProposeRequest(
            request_id=f"r{n}", token_ids=tokens, num_prompt_tokens=max(1, length - 3), max_num_drafts=d,
            computed=ComputedTokens(start, count, hidden_rows=row), num_computed_tokens=start + count,
            block_ids=blocks, sampling=sampling or SamplingInfo()))
        row += count
    g = torch.Generator().manual_seed(seed)
    hidden = {layer: torch.randn(row, HIDDEN, generator=g).to(proposer.device)
              for layer in proposer.needs.hidden_state_layers}
    return ProposeBatch(reqs, hidden)


def random_kv(proposer: EagleProposer, seed: int = 0) -> None:
    """Random keys and values everywhere (the context the catch-up attends to), the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    for t in proposer.kv:
        t.copy_(torch.randn(t.shape, generator=g))
