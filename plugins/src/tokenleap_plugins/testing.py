"""Conformance kit: drive any proposer through a simulated engine and check the contract.

In a proposer package's tests::

    from tokenleap_plugins.testing import run_conformance
    from my_proposer.plugin import SPEC

    def test_conformance():
        run_conformance(SPEC, {"my_key": 3})

Every check raises ``AssertionError`` naming the method, the step and the request at the first failure.
The simulated engine: each request's tokens come from its own seeded generator (random runs mixed with
periodic and copied spans, so lookup proposers find matches); a step verifies the pending drafts (a
seeded-random accepted prefix, then one bonus token), calls ``on_verified``, then ``propose`` for every
running request with ``max_num_drafts`` in 0..k. Requests are added, finished, aborted and re-added
between steps. Nothing here imports torch unless the proposer asks for hidden states.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Sequence
from typing import Any

from tokenleap_plugins.manager import validate_method_config
from tokenleap_plugins.proposer import (
    Drafts,
    ProposeBatch,
    Proposer,
    ProposerBase,
    ProposerContext,
    ProposeRequest,
    ProposerSpec,
    VerifiedRequest,
)

__all__ = [
    "EchoProposer", "build_proposer", "check_bounds", "check_determinism", "check_drafts",
    "check_lifecycle", "check_memory_flat", "echo_spec", "run_conformance",
]


def build_proposer(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                   num_speculative_tokens: int = 4, seed: int = 0, **context: Any) -> Proposer:
    """Validate ``config`` as the engine would and build a proposer (``context``: ProposerContext fields)."""
    validated = validate_method_config(spec, dict(config or {}), common_keys=set())
    context.setdefault("max_model_len", 4096)
    context.setdefault("hidden_size", 32)
    ctx = ProposerContext(num_speculative_tokens=num_speculative_tokens, vocab_size=vocab_size, seed=seed,
                          **context)
    proposer = spec.build(validated, ctx)
    assert isinstance(proposer, Proposer), (
        f"{spec.method}: build() returned {type(proposer).__name__}, which lacks part of the Proposer protocol")
    return proposer


def check_drafts(batch: ProposeBatch, drafts: Drafts, vocab_size: int, where: str = "") -> None:
    """Bounds of one ``propose`` answer: lengths, token ids, and draft probabilities when given."""
    reqs = batch.requests
    assert isinstance(drafts, Drafts), f"{where}propose() returned {type(drafts).__name__}, not Drafts"
    assert len(drafts.token_ids) == len(reqs), (
        f"{where}Drafts.token_ids has {len(drafts.token_ids)} entries for a batch of {len(reqs)} requests")
    for req, ids in zip(reqs, drafts.token_ids):
        assert 0 <= len(ids) <= req.max_num_drafts, (
            f"{where}request {req.request_id!r}: {len(ids)} drafts {list(ids)} but max_num_drafts="
            f"{req.max_num_drafts}")
        for t in ids:
            assert isinstance(t, int) and 0 <= t < vocab_size, (
                f"{where}request {req.request_id!r}: draft token {t!r} is not an int in [0, {vocab_size})")
    if drafts.probs is None:
        return
    assert len(drafts.probs) == len(reqs), (
        f"{where}Drafts.probs has {len(drafts.probs)} entries for a batch of {len(reqs)} requests")
    for req, ids, probs in zip(reqs, drafts.token_ids, drafts.probs):
        if probs is None:
            continue
        rows = _rows(probs)
        shape = (len(rows), len(rows[0]) if rows else vocab_size)
        assert shape == (len(ids), vocab_size) and all(len(r) == vocab_size for r in rows), (
            f"{where}request {req.request_id!r}: probs shape {shape}, expected [{len(ids)}, {vocab_size}]")
        for j, (row, t) in enumerate(zip(rows, ids)):
            assert min(row) >= 0.0 and abs(sum(row) - 1.0) <= 1e-3, (
                f"{where}request {req.request_id!r}: probs row {j} has min {min(row):.4g} and sum "
                f"{sum(row):.6f}; rows must be non-negative and sum to 1")
            assert row[t] > 0.0, f"{where}request {req.request_id!r}: draft {t} at {j} has probability 0"


def _rows(probs: Any) -> list[list[float]]:
    if hasattr(probs, "detach"):  # a torch tensor: no torch import needed to read it
        probs = probs.detach().double().cpu()
    if hasattr(probs, "tolist"):
        probs = probs.tolist()
    return [[float(x) for x in row] for row in probs]


class _Request:
    """A simulated request: its tokens come from its own generator, so other requests never affect them."""

    def __init__(self, rid: str, key: str, seed: int, vocab: int, prompt_len: int) -> None:
        self.rid, self.vocab, self.k_rng = rid, vocab, random.Random(f"{seed}/{key}")
        self.left, self.offset = 0, 0
        self.tokens: list[int] = []
        for _ in range(prompt_len):
            self.tokens.append(self._next())
        self.num_prompt, self.pending, self.fed = prompt_len, None, list(self.tokens)

    def _next(self) -> int:
        rng, toks = self.k_rng, self.tokens
        if self.left == 0:  # next span: random tokens, a short period, or a copy from far back
            self.left = rng.randint(3, 24)
            r = rng.random()
            self.offset = 0 if r < 0.3 or len(toks) < 2 else (
                rng.randint(2, min(8, len(toks))) if r < 0.75 else rng.randint(2, len(toks)))
        self.left -= 1
        return toks[-self.offset] if self.offset else rng.randrange(self.vocab)

    def verify(self) -> VerifiedRequest:
        drafts = self.pending or []
        self.fed = list(self.tokens) if self.pending is None else [self.tokens[-1], *drafts]
        accepted = list(drafts[: self.k_rng.randint(0, len(drafts))])
        self.tokens.extend(accepted)
        self.tokens.append(self._next())
        self.pending = []
        return VerifiedRequest(self.rid, len(drafts), len(accepted), [*accepted, self.tokens[-1]])


def _scenario(seed: int, num_steps: int) -> list[tuple]:
    """Ops: ("add", rid, key, prompt_len), ("step",), ("finish"|"abort", rid, key). key names one life."""
    rng = random.Random(f"scenario/{seed}")
    ops: list[tuple] = []
    live: dict[str, str] = {}
    ended: list[str] = []
    for step in range(num_steps):
        while len(live) < 2 or (len(live) < 6 and rng.random() < 0.35):
            reuse = ended and rng.random() < 0.4
            rid = ended.pop(rng.randrange(len(ended))) if reuse else f"req-{len(ops)}"
            live[rid] = key = f"life-{len(ops)}"
            ops.append(("add", rid, key, rng.randint(6, 40)))
            if rng.random() < 0.05:  # aborted before its first step
                ops.append(("abort", rid, live.pop(rid)))
                ended.append(rid)
        ops.append(("step",))
        r = rng.random()
        if r < 0.4:
            rid = rng.choice(sorted(live))
            ops.append(("finish" if r < 0.25 else "abort", rid, live.pop(rid)))
            ended.append(rid)
    ops += [("finish", rid, key) for rid, key in live.items()]
    return ops


def _run(proposer: Proposer, ops: Sequence[tuple], *, method: str, vocab_size: int, k: int,
         seed: int) -> list[tuple[int, str, tuple[int, ...]]]:
    """Play ``ops``; check every answer; return the transcript (step, life key, drafts)."""
    live: dict[str, _Request] = {}
    keys: dict[str, str] = {}
    transcript: list[tuple[int, str, tuple[int, ...]]] = []
    layers = tuple(getattr(proposer.needs, "hidden_state_layers", ()) or ())
    step = 0
    for op in ops:
        if op[0] == "add":
            _, rid, key, plen = op
            live[rid], keys[rid] = _Request(rid, key, seed, vocab_size, plen), key
            proposer.on_request_added(rid, list(live[rid].tokens))
        elif op[0] == "finish":
            proposer.on_request_finished(op[1], list(live.pop(op[1]).tokens))
        elif op[0] == "abort":
            live.pop(op[1])
            proposer.on_request_aborted(op[1])
        else:
            step += 1  # counted even when nothing runs, so that two scenarios' steps line up
            if not live:
                continue
            proposer.on_verified([req.verify() for req in live.values()])
            reqs, rows, start = [], [], 0
            for rid, req in live.items():
                m = 0 if req.k_rng.random() < 0.15 else req.k_rng.randint(1, k)
                span = (start, start + len(req.fed)) if layers else None
                rows.extend(req.fed)
                start += len(req.fed)
                reqs.append(ProposeRequest(rid, tuple(req.tokens), req.num_prompt, m, span))
            batch = ProposeBatch(reqs, _hidden_states(layers, rows, vocab_size, seed) if layers else {})
            drafts = proposer.propose(batch)
            check_drafts(batch, drafts, vocab_size, where=f"{method}: step {step}: ")
            for req, ids in zip(reqs, drafts.token_ids):
                live[req.request_id].pending = list(ids)
                transcript.append((step, keys[req.request_id], tuple(ids)))
    return transcript


def _hidden_states(layers: tuple[int, ...], rows: list[int], vocab: int, seed: int) -> dict[int, Any]:
    import torch  # only proposers that ask for hidden states get here

    g = torch.Generator().manual_seed(seed)
    table = torch.randn(len(layers), vocab, 32, generator=g)
    ids = torch.tensor(rows, dtype=torch.long)
    return {layer: table[i][ids] for i, layer in enumerate(layers)}


def check_bounds(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                 num_speculative_tokens: int = 4, seed: int = 0, num_steps: int = 200,
                 expect_drafts: bool = True) -> None:
    """Every answer within bounds over a long scenario; with ``expect_drafts``, at least one draft overall."""
    kw = dict(vocab_size=vocab_size, k=num_speculative_tokens, seed=seed, method=spec.method)
    proposer = build_proposer(spec, config, vocab_size=vocab_size, num_speculative_tokens=num_speculative_tokens,
                              seed=seed)
    transcript = _run(proposer, _scenario(seed, num_steps), **kw)
    if expect_drafts:
        assert any(ids for _, _, ids in transcript), (
            f"{spec.method}: no drafts at all in {len(transcript)} propose calls on repetitive token streams; "
            f"pass expect_drafts=False if that is intended")


def check_determinism(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                      num_speculative_tokens: int = 4, seed: int = 0, num_steps: int = 120) -> None:
    """Two proposers built fresh with the same seed, fed the same events, draft the same tokens."""
    runs = []
    for _ in range(2):
        proposer = build_proposer(spec, config, vocab_size=vocab_size,
                                  num_speculative_tokens=num_speculative_tokens, seed=seed)
        runs.append(_run(proposer, _scenario(seed, num_steps), vocab_size=vocab_size,
                         k=num_speculative_tokens, seed=seed, method=spec.method))
    for a, b in zip(*runs):
        assert a == b, (f"{spec.method}: not deterministic: step {a[0]}, request life {a[1]}: drafts {list(a[2])} "
                        f"in the first run, {list(b[2])} in the second (same seed {seed}, same events)")


def check_lifecycle(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                    num_speculative_tokens: int = 4, seed: int = 0, num_steps: int = 120) -> None:
    """Interleaved add/finish/abort/re-add; an aborted request leaves no trace.

    The scenario is played twice: as generated, and with every aborted request's life removed. The
    drafts of all other requests (re-added ids included) must be the same in both.
    """
    ops = _scenario(seed, num_steps)
    aborted = {op[2] for op in ops if op[0] == "abort"}
    assert aborted, "scenario without aborts: choose another seed"
    without = [op for op in ops if not (op[0] in ("add", "abort") and op[2] in aborted)]
    runs = []
    for scenario in (ops, without):
        proposer = build_proposer(spec, config, vocab_size=vocab_size,
                                  num_speculative_tokens=num_speculative_tokens, seed=seed)
        runs.append(_run(proposer, scenario, vocab_size=vocab_size, k=num_speculative_tokens, seed=seed,
                         method=spec.method))
    kept = [entry for entry in runs[0] if entry[1] not in aborted]
    for a, b in zip(kept, runs[1]):
        assert a == b, (
            f"{spec.method}: an aborted request left a trace: step {a[0]}, request life {a[1]}: drafts "
            f"{list(a[2])} with the aborted requests, {list(b[2])} in a run where they never existed")
    assert len(kept) == len(runs[1]), f"{spec.method}: runs with and without aborted requests differ in length"


def check_memory_flat(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                      num_speculative_tokens: int = 4, seed: int = 0, num_requests: int = 10_000) -> None:
    """Sequential short requests (finished, every third aborted): traced memory must not keep growing.

    Readings after the first 10% of requests and at the end; growth must stay under
    max(1 MiB, 10% of the first reading).
    """
    proposer = build_proposer(spec, config, vocab_size=vocab_size, num_speculative_tokens=num_speculative_tokens,
                              seed=seed)
    rng = random.Random(f"memory/{seed}")
    templates = []  # made before tracing, so that the kit's own allocations stay few
    for t in range(64):
        src = _Request("t", f"memory-{seed}-{t}", seed, vocab_size, rng.randint(20, 30))
        steps = [(src._next(), rng.randint(0, num_speculative_tokens), rng.random()) for _ in range(rng.randint(2, 4))]
        templates.append((src.tokens, steps))
    warm, first = max(1, num_requests // 10), 0
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        for i in range(num_requests):
            if i == warm:
                gc.collect()
                first = tracemalloc.get_traced_memory()[0]
            rid, (prompt, steps) = f"mem-{i}", templates[i % len(templates)]
            tokens, drafts, where = list(prompt), [], f"{spec.method}: memory request {i}: "
            proposer.on_request_added(rid, list(prompt))
            for bonus, max_drafts, accept in steps:
                accepted = list(drafts[: int(accept * (len(drafts) + 1))])
                tokens += [*accepted, bonus]
                proposer.on_verified([VerifiedRequest(rid, len(drafts), len(accepted), [*accepted, bonus])])
                batch = ProposeBatch([ProposeRequest(rid, tuple(tokens), len(prompt), max_drafts)])
                answer = proposer.propose(batch)
                check_drafts(batch, answer, vocab_size, where)
                drafts = answer.token_ids[0]
            if i % 3 == 2:
                proposer.on_request_aborted(rid)
            else:
                proposer.on_request_finished(rid, tokens)
        gc.collect()
        last = tracemalloc.get_traced_memory()[0]
    finally:
        if started:
            tracemalloc.stop()
    limit = max(1 << 20, first // 10)
    assert last - first <= limit, (
        f"{spec.method}: memory grows with finished/aborted requests: traced {first} B after {warm} requests, "
        f"{last} B after {num_requests} (+{last - first} B > limit {limit} B = max(1 MiB, 10% of the first))")


def run_conformance(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                    num_speculative_tokens: int = 4, seed: int = 0, num_memory_requests: int = 10_000,
                    expect_drafts: bool = True) -> None:
    """All checks, in order: bounds, determinism, lifecycle, memory. Raises AssertionError at the first failure."""
    kw = dict(vocab_size=vocab_size, num_speculative_tokens=num_speculative_tokens, seed=seed)
    check_bounds(spec, config, expect_drafts=expect_drafts, **kw)
    check_determinism(spec, config, **kw)
    check_lifecycle(spec, config, **kw)
    check_memory_flat(spec, config, num_requests=num_memory_requests, **kw)


class EchoProposer(ProposerBase):
    """Test double: drafts the request's last ``max_num_drafts`` tokens. Stateless, deterministic."""

    def __init__(self, config: Any = None, context: ProposerContext | None = None) -> None:
        self.k = context.num_speculative_tokens if context is not None else 1 << 30

    def propose(self, batch: ProposeBatch) -> Drafts:
        out = []
        for r in batch.requests:
            n = min(r.max_num_drafts, self.k, len(r.token_ids))
            out.append(list(r.token_ids[len(r.token_ids) - n :]) if n > 0 else [])
        return Drafts(token_ids=out)


def echo_spec(method: str = "echo") -> ProposerSpec:
    """A ProposerSpec for :class:`EchoProposer` (no config keys), for engine and manager tests."""
    return ProposerSpec(method=method, build=EchoProposer, description="test double: echoes the last tokens")
