"""Tests of the ``suffix`` proposer (tokenleap-suffix) against a brute-force reference.

The reference below defines the semantics: it rescans the whole history for every query.
"""

from __future__ import annotations

import random
from collections import Counter

import pydantic
import pytest
from tokenleap_plugins import (
    ProposeBatch,
    ProposerConfigError,
    ProposerContext,
    ProposeRequest,
    ProposerManager,
    VerifiedRequest,
    validate_method_config,
)
from tokenleap_suffix import SuffixConfig, SuffixProposer, SuffixTrie
from tokenleap_suffix.plugin import SPEC

COMMON_KEYS = {"method", "num_speculative_tokens", "model"}


# -- the reference ------------------------------------------------------------------------------
def ref_continuations(seqs: list[list[int]], path: list[int], depth: int) -> Counter:
    """How often each token followed ``path`` in ``seqs`` (path + token must fit in ``depth``)."""
    counts: Counter = Counter()
    n = len(path)
    if n >= depth:
        return counts
    for seq in seqs:
        for j in range(len(seq) - n):
            if seq[j : j + n] == path:
                counts[seq[j + n]] += 1
    return counts


def ref_greedy(seqs, tail, limit, min_prob, depth) -> tuple[list[int], float]:
    """Follow the most frequent continuation (ties: smallest id) while the path probability holds."""
    path, draft, prob, score = list(tail), [], 1.0, 0.0
    while len(draft) < limit:
        counts = ref_continuations(seqs, path, depth)
        if not counts:
            break
        token = min(counts, key=lambda t: (-counts[t], t))
        prob *= counts[token] / sum(counts.values())
        if prob < min_prob:
            break
        draft.append(token)
        path.append(token)
        score += prob
    return draft, score


def ref_draft(context: list[int], outputs: list[list[int]], cfg: SuffixConfig, k: int) -> list[int]:
    """Best-scoring greedy path over every tail length; request history first, then cached outputs."""
    depth = cfg.suffix_decoding_max_tree_depth
    best, best_score = [], 0.0
    for seqs in ([context], outputs):
        for m in range(min(depth, len(context)), 0, -1):
            limit = min(int(cfg.suffix_decoding_max_spec_factor * m), k, depth - m)
            draft, score = ref_greedy(seqs, context[-m:], limit, cfg.suffix_decoding_min_token_prob, depth)
            if score > best_score:
                best, best_score = draft, score
    return best


# -- helpers ------------------------------------------------------------------------------------
def make(k: int = 8, **keys) -> SuffixProposer:
    cfg = SuffixConfig(**keys)
    ctx = ProposerContext(num_speculative_tokens=k, vocab_size=1000, max_model_len=100_000, seed=0)
    return SuffixProposer(cfg, ctx)


def propose(p: SuffixProposer, rid: str, tokens: list[int], num_prompt: int, max_drafts: int) -> list[int]:
    req = ProposeRequest(rid, tokens, num_prompt, max_drafts)
    return list(p.propose(ProposeBatch([req])).token_ids[0])


def dump(trie: SuffixTrie) -> dict[tuple[int, ...], tuple[int, int]]:
    """path -> (count, total) for every node; checks the cached best child on the way."""
    out, stack = {}, [((), 0)]
    while stack:
        path, node = stack.pop()
        if path:
            out[path] = (trie.count[node], trie.total[node])
            assert trie.count[node] > 0 and trie.token[node] == path[-1]
        kids = trie.child_ids(node)
        assert trie.total[node] == sum(trie.count[c] for c in kids)
        assert not isinstance(trie.children[node], dict) or len(kids) > 1
        if trie.best[node] >= 0:
            assert trie.best[node] == min(kids, key=lambda c: (-trie.count[c], trie.token[c]))
        stack.extend((path + (trie.token[c],), c) for c in kids)
    assert len(out) == trie.num_nodes
    return out


def stream(rng: random.Random, n: int, vocab: int, repetitive: bool) -> list[int]:
    if not repetitive:
        return [rng.randrange(vocab) for _ in range(n)]
    motifs = [[rng.randrange(vocab) for _ in range(rng.randint(2, 9))] for _ in range(3)]
    out: list[int] = []
    while len(out) < n:
        out += rng.choice(motifs) if rng.random() < 0.85 else [rng.randrange(vocab)]
    return out[:n]


CONFIGS = [
    dict(),
    dict(suffix_decoding_max_tree_depth=1),
    dict(suffix_decoding_max_tree_depth=3, suffix_decoding_max_spec_factor=2.5),
    dict(suffix_decoding_max_tree_depth=8, suffix_decoding_min_token_prob=0.0),
    dict(suffix_decoding_max_tree_depth=6, suffix_decoding_min_token_prob=0.5),
    dict(suffix_decoding_max_tree_depth=12, suffix_decoding_max_spec_factor=0.4),
    dict(suffix_decoding_max_tree_depth=10, suffix_decoding_max_cached_requests=0),
    dict(suffix_decoding_max_tree_depth=5, suffix_decoding_min_token_prob=1.0),
]


# -- equivalence with the reference -------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("cfg_index", range(len(CONFIGS)))
def test_drafts_match_reference(seed: int, cfg_index: int) -> None:
    rng = random.Random(seed * 100 + cfg_index)
    keys = dict(suffix_decoding_max_cached_requests=3) | CONFIGS[cfg_index]
    k = rng.choice([1, 4, 8, 30])
    p = make(k=k, **keys)
    cfg = p.config
    repetitive, vocab = seed % 2 == 0, rng.choice([3, 6, 20])
    finished: list[list[int]] = []  # outputs of finished requests, oldest first
    running: dict[str, tuple[list[int], int]] = {}
    for r in range(7):
        for _ in range(rng.randint(0, 2)):  # start requests
            rid = f"r{r}-{len(running)}-{rng.random()}"
            prompt = stream(rng, rng.randint(0, 40), vocab, repetitive)
            p.on_request_added(rid, prompt)
            running[rid] = (list(prompt), len(prompt))
        for _ in range(rng.randint(1, 8)):  # steps: propose, compare, accept a few tokens
            for rid, (tokens, n_prompt) in running.items():
                max_drafts = rng.randint(0, k)
                got = propose(p, rid, tokens, n_prompt, max_drafts)
                want = ref_draft(tokens, finished[-cfg.suffix_decoding_max_cached_requests :]
                                 if cfg.suffix_decoding_max_cached_requests else [], cfg, min(k, max_drafts))
                assert got == want, (tokens, finished)
                accepted = got[: rng.randint(0, len(got))]
                new = accepted + stream(rng, 1, vocab, repetitive)
                tokens.extend(new)
                p.on_verified([VerifiedRequest(rid, len(got), len(accepted), new)])
        for rid in list(running):  # end some requests
            if rng.random() < 0.5:
                tokens, n_prompt = running.pop(rid)
                if rng.random() < 0.25:
                    p.on_request_aborted(rid)
                else:
                    p.on_request_finished(rid, tokens)
                    finished.append(tokens[n_prompt:])
    n = cfg.suffix_decoding_max_cached_requests
    fresh = SuffixTrie(cfg.suffix_decoding_max_tree_depth)
    for out in finished[-n:] if n else []:
        fresh.insert(out)
    assert dump(p.cache.trie) == dump(fresh)


def test_prefers_long_exact_repeat() -> None:
    p = make(k=8, suffix_decoding_max_tree_depth=24)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]
    p.on_request_added("a", prompt)
    assert propose(p, "a", prompt, len(prompt), 8) == [4, 5, 6]  # limit = spec_factor * m = 3
    p.on_request_finished("a", prompt + [4, 5, 6])  # global trie gets [4, 5, 6]
    p.on_request_added("b", [9, 4, 5])
    assert propose(p, "b", [9, 4, 5], 3, 8) == [6]  # from the global trie; m = 2 -> 1 token


def test_resyncs_when_out_of_step() -> None:
    p = make(k=5, suffix_decoding_max_tree_depth=6)
    tokens = [1, 2, 3, 1, 2, 3, 1, 2]
    assert propose(p, "x", tokens, 4, 5) == ref_draft(tokens, [], p.config, 5)  # never added
    tokens += [3, 1]  # on_verified missed
    assert propose(p, "x", tokens, 4, 5) == ref_draft(tokens, [], p.config, 5)
    tokens = [7, 7, 7, 7]  # different history of the same length class
    assert propose(p, "x", tokens, 2, 5) == ref_draft(tokens, [], p.config, 5)
    assert dump(p.requests["x"].trie) == dump(_trie_of(tokens, 6))


def _trie_of(tokens: list[int], depth: int) -> SuffixTrie:
    trie = SuffixTrie(depth)
    trie.insert(tokens)
    return trie


# -- eviction, memory, abort --------------------------------------------------------------------
def test_fifo_eviction_bounds_the_global_trie() -> None:
    rng = random.Random(7)
    n = 5
    p = make(k=8, suffix_decoding_max_cached_requests=n, suffix_decoding_max_tree_depth=7)
    outputs = []
    for i in range(23):
        prompt = stream(rng, 10, 5, True)
        out = stream(rng, rng.randint(0, 30), 5, i % 2 == 0)
        p.on_request_added(f"r{i}", prompt)
        p.on_verified([VerifiedRequest(f"r{i}", 0, 0, out)])
        p.on_request_finished(f"r{i}", prompt + out)
        outputs.append(out)
        fresh = SuffixTrie(7)
        for o in outputs[-n:]:
            fresh.insert(o)
        assert p.cache.trie.num_nodes == fresh.num_nodes
        assert dump(p.cache.trie) == dump(fresh)
    assert len(p.cache.outputs) == n and not p.requests


def test_global_trie_empties_completely() -> None:
    p = make(suffix_decoding_max_cached_requests=1, suffix_decoding_max_tree_depth=4)
    p.on_request_added("a", [1])
    p.on_request_finished("a", [1, 2, 3, 2, 3, 2])
    assert p.cache.trie.num_nodes > 0
    p.on_request_added("b", [1])
    p.on_request_finished("b", [1])  # empty output evicts a's
    assert p.cache.trie.num_nodes == 0 and p.cache.trie.children[0] is None
    assert p.cache.trie.total[0] == 0


def test_aborted_requests_leave_nothing() -> None:
    rng = random.Random(3)
    p = make(suffix_decoding_max_cached_requests=4)
    for i in range(3):
        p.on_request_added(f"f{i}", [1, 2])
        p.on_request_finished(f"f{i}", [1, 2] + stream(rng, 20, 4, True))
    before = dump(p.cache.trie)
    nodes = p.num_nodes
    for i in range(5):
        prompt = stream(rng, 30, 4, True)
        p.on_request_added(f"a{i}", prompt)
        p.on_verified([VerifiedRequest(f"a{i}", 0, 0, [1, 2, 3])])
        propose(p, f"a{i}", prompt + [1, 2, 3], len(prompt), 8)
        p.on_request_aborted(f"a{i}")
    assert p.num_nodes == nodes and dump(p.cache.trie) == before and not p.requests


def test_disabled_global_cache_holds_nothing() -> None:
    p = make(suffix_decoding_max_cached_requests=0)
    p.on_request_added("a", [1, 2, 3])
    p.on_request_finished("a", [1, 2, 3, 1, 2, 3])
    assert p.num_nodes == 0 and not p.cache.outputs


# -- config, discovery, contract ----------------------------------------------------------------
def test_config_defaults_match_vllm() -> None:
    cfg = SuffixConfig()
    assert (cfg.suffix_decoding_max_tree_depth, cfg.suffix_decoding_max_cached_requests) == (24, 10000)
    assert (cfg.suffix_decoding_max_spec_factor, cfg.suffix_decoding_min_token_prob) == (1.0, 0.1)
    assert SPEC.default_num_speculative_tokens(cfg) == 24
    assert SPEC.default_num_speculative_tokens(SuffixConfig(suffix_decoding_max_tree_depth=7)) == 7


@pytest.mark.parametrize(
    "key,value",
    [
        ("suffix_decoding_max_tree_depth", 0),
        ("suffix_decoding_max_tree_depth", "deep"),
        ("suffix_decoding_max_cached_requests", -1),
        ("suffix_decoding_max_spec_factor", 0.0),
        ("suffix_decoding_min_token_prob", 1.5),
        ("suffix_decoding_min_token_prob", -0.1),
    ],
)
def test_bad_values_name_key_and_value(key: str, value) -> None:
    with pytest.raises(ProposerConfigError) as err:
        validate_method_config(SPEC, {key: value}, COMMON_KEYS)
    assert f"{key}={value!r}" in str(err.value)
    with pytest.raises(pydantic.ValidationError, match=key):
        SuffixConfig(**{key: value})


def test_unknown_key_is_named() -> None:
    with pytest.raises(ProposerConfigError, match="suffix_decoding_max_depth"):
        validate_method_config(SPEC, {"suffix_decoding_max_depth": 3}, COMMON_KEYS)


def test_discovered_through_entry_point() -> None:
    manager = ProposerManager(env={})
    spec = manager.load("suffix")
    assert spec.method == "suffix" and spec.config_model is SuffixConfig
    assert "suffix" in [m.method for m in manager.installed_methods()]
    cfg = validate_method_config(spec, {"suffix_decoding_max_tree_depth": 4}, COMMON_KEYS)
    ctx = ProposerContext(num_speculative_tokens=4, vocab_size=10, max_model_len=64, seed=0)
    proposer = spec.build(cfg, ctx)
    assert isinstance(proposer, SuffixProposer) and proposer.needs.kv_cache is None


def test_passes_conformance_kit() -> None:
    from tokenleap_plugins.testing import run_conformance

    run_conformance(SPEC, {"suffix_decoding_max_cached_requests": 64})  # bounded cache: flat memory
    shallow = {"suffix_decoding_max_tree_depth": 3, "suffix_decoding_max_cached_requests": 0,
               "suffix_decoding_min_token_prob": 0.0}
    run_conformance(SPEC, shallow, num_speculative_tokens=2, num_memory_requests=2000)
