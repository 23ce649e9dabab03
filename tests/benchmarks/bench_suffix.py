"""Cost of the ``suffix`` proposer (pytest-benchmark; not part of CI's run).

    python -m pytest tests/benchmarks/bench_suffix.py --benchmark-only -s

Synthetic "agentic" traffic: token streams (vocab 32k, Zipf-like) built mostly from a shared pool
of phrases, so both the request trie and the global trie find matches, plus random tokens. Per-token
and per-request-step figures are printed (and stored in ``extra_info``).
"""

from __future__ import annotations

import random
import time
import tracemalloc

import pytest
from tokenleap_plugins import ProposeBatch, ProposerContext, ProposeRequest, VerifiedRequest
from tokenleap_suffix import SuffixConfig, SuffixProposer, SuffixTrie

VOCAB = 32_000
BATCH = 32


def _phrases(rng: random.Random, n: int) -> list[list[int]]:
    return [[int(rng.paretovariate(0.8)) % VOCAB for _ in range(rng.randint(4, 30))] for _ in range(n)]


def _stream(rng: random.Random, phrases: list[list[int]], n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        out += rng.choice(phrases) if rng.random() < 0.7 else [rng.randrange(VOCAB)]
    return out[:n]


def _proposer(cached: int, num_finished: int, rng, phrases, depth: int = 24) -> SuffixProposer:
    cfg = SuffixConfig(suffix_decoding_max_tree_depth=depth, suffix_decoding_max_cached_requests=cached)
    p = SuffixProposer(cfg, ProposerContext(num_speculative_tokens=depth, vocab_size=VOCAB,
                                            max_model_len=1 << 20, seed=0))
    for i in range(num_finished):
        prompt, out = _stream(rng, phrases, 64), _stream(rng, phrases, 256)
        p.on_request_added(f"done{i}", prompt)
        p.on_request_finished(f"done{i}", prompt + out)
    return p


def _running(p: SuffixProposer, rng, phrases, prompt_len: int, out_len: int) -> list[ProposeRequest]:
    reqs = []
    for i in range(BATCH):
        prompt, out = _stream(rng, phrases, prompt_len), _stream(rng, phrases, out_len)
        p.on_request_added(f"r{i}", prompt)
        p.on_verified([VerifiedRequest(f"r{i}", 0, 0, out)])
        reqs.append(ProposeRequest(f"r{i}", prompt + out, prompt_len, 24))
    return reqs


@pytest.mark.parametrize("num_finished", [0, 500])
@pytest.mark.parametrize("prompt_len", [256, 2048])
def test_propose_step(benchmark, num_finished: int, prompt_len: int) -> None:
    """One propose() over a batch of 32 running requests (128 output tokens each)."""
    rng = random.Random(0)
    phrases = _phrases(rng, 300)
    p = _proposer(10_000, num_finished, rng, phrases)
    batch = ProposeBatch(_running(p, rng, phrases, prompt_len, 128))
    drafts = benchmark(p.propose, batch)
    drafted = sum(len(d) for d in drafts.token_ids)
    med, low = benchmark.stats.stats.median, benchmark.stats.stats.min
    benchmark.extra_info.update(us_per_request_step=med / BATCH * 1e6,
                                us_per_draft_token=med / max(drafted, 1) * 1e6,
                                mean_draft_len=drafted / BATCH)
    print(f"\n[propose] finished={num_finished} prompt={prompt_len}: per request-step median "
          f"{med / BATCH * 1e6:.1f} us (min {low / BATCH * 1e6:.1f}), per draft token median "
          f"{med / max(drafted, 1) * 1e6:.1f} us, mean draft {drafted / BATCH:.1f} tokens")


def test_append_tokens(benchmark) -> None:
    """on_verified cost per accepted token (depth 24): O(depth), independent of context length."""
    rng = random.Random(1)
    phrases = _phrases(rng, 300)
    p = _proposer(0, 0, rng, phrases)
    p.on_request_added("r", _stream(rng, phrases, 4096))
    chunks = [_stream(rng, phrases, 4) for _ in range(2000)]
    it = iter(range(10**9))

    def step():
        p.on_verified([VerifiedRequest("r", 3, 3, chunks[next(it) % len(chunks)])])

    benchmark(step)
    per_token = benchmark.stats.stats.median / 4 * 1e6
    benchmark.extra_info["us_per_token"] = per_token
    print(f"\n[append] median {per_token:.2f} us per accepted token "
          f"(min {benchmark.stats.stats.min / 4 * 1e6:.2f})")


def test_finish_request_at_capacity(benchmark) -> None:
    """on_request_finished with a full global cache: insert 256 tokens, evict the oldest output."""
    rng = random.Random(2)
    phrases = _phrases(rng, 300)
    p = _proposer(200, 200, rng, phrases)
    outs = [_stream(rng, phrases, 256) for _ in range(50)]
    it = iter(range(10**9))

    def finish():
        i = next(it)
        p.on_request_added(f"n{i}", [1, 2, 3])
        p.on_request_finished(f"n{i}", [1, 2, 3] + outs[i % len(outs)])

    benchmark(finish)
    med = benchmark.stats.stats.median
    print(f"\n[finish] median {med * 1e3:.2f} ms per 256-token output "
          f"({med / 256 * 1e6:.2f} us per token, insert + evict)")


def test_memory_per_token() -> None:
    """Trie nodes and bytes per inserted token (global-trie-like traffic, depth 24)."""
    rng = random.Random(3)
    phrases = _phrases(rng, 300)
    seqs = [_stream(rng, phrases, 256) for _ in range(200)]
    tracemalloc.start()
    t0 = time.perf_counter()
    trie = SuffixTrie(24)
    for s in seqs:
        trie.insert(s)
    elapsed = time.perf_counter() - t0
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = sum(map(len, seqs))
    print(f"\n[memory] {trie.num_nodes / n:.1f} nodes/token, {size / trie.num_nodes:.0f} B/node, "
          f"{size / n / 1024:.2f} KiB/token; build {elapsed / n * 1e6:.1f} us/token (under tracemalloc)")
