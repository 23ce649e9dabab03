"""Conformance kit: drive any proposer through a simulated engine and check the contract.

    from tokenleap_plugins.testing import run_conformance
    def test_conformance():
        run_conformance(my_plugin.SPEC, {"my_key": 3})

Each check raises ``AssertionError`` naming the method, step and request at the first failure. The simulated
engine: each request's tokens come from its own seeded generator (random runs, short periods, copies from
far back: lookup proposers find matches); a step verifies the pending drafts (a seeded-random accepted
prefix, then a bonus token), calls ``on_verified``, then ``propose`` for every running request with
``max_num_drafts`` in 0..k. Between steps requests are added, finished, aborted and re-added under old ids.
Nothing here imports torch unless the proposer asks for hidden states.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Sequence
from typing import Any

from tokenleap_plugins.manager import validate_method_config
from tokenleap_plugins.prompt_lookup import prompt_lookup
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

__all__ = ["EchoProposer", "build_proposer", "check_bounds", "check_determinism", "check_drafts",
           "check_lifecycle", "check_memory_flat", "echo_spec", "run_conformance"]


def build_proposer(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                   num_speculative_tokens: int = 4, seed: int = 0, **context: Any) -> Proposer:
    """Validate ``config`` as the engine would and build a proposer (``context``: ProposerContext fields)."""
    validated = validate_method_config(spec, dict(config or {}), common_keys=set())
    context.setdefault("max_model_len", 4096)
    context.setdefault("hidden_size", 32)
    ctx = ProposerContext(num_speculative_tokens=num_speculative_tokens, vocab_size=vocab_size, seed=seed,
                          **context)
    proposer = spec.build(validated, ctx)
    kind = type(proposer).__name__
    assert isinstance(proposer, Proposer), f"{spec.method}: build() returned {kind}, not a Proposer"
    return proposer


def check_drafts(batch: ProposeBatch, drafts: Drafts, vocab_size: int, where: str = "") -> None:
    """Bounds of one ``propose`` answer: lengths, token ids, and draft probabilities when given."""
    reqs, n = batch.requests, len(batch.requests)
    assert isinstance(drafts, Drafts), f"{where}propose() returned {type(drafts).__name__}, not Drafts"
    assert len(drafts.token_ids) == n, f"{where}Drafts.token_ids has {len(drafts.token_ids)} entries for {n}"
    probs_list = [None] * n if drafts.probs is None else drafts.probs
    assert len(probs_list) == n, f"{where}Drafts.probs has {len(probs_list)} entries for {n} requests"
    for req, ids, probs in zip(reqs, drafts.token_ids, probs_list):
        at = f"{where}request {req.request_id!r}: "
        m, bad = req.max_num_drafts, [t for t in ids if not (isinstance(t, int) and 0 <= t < vocab_size)]
        assert len(ids) <= m, f"{at}{len(ids)} drafts {list(ids)} but max_num_drafts={m}"
        assert not bad, f"{at}draft token {bad[0]!r} is not an int in [0, {vocab_size})"
        if probs is None:
            continue
        if hasattr(probs, "detach"):  # a torch tensor, read without importing torch
            probs = probs.detach().double().cpu()
        rows = [[float(x) for x in row] for row in (probs.tolist() if hasattr(probs, "tolist") else probs)]
        shape = (len(rows), len(rows[0]) if rows else vocab_size)
        assert shape == (len(ids), vocab_size) and all(len(r) == vocab_size for r in rows), (
            f"{at}probs shape {shape}, expected [{len(ids)}, {vocab_size}]")
        for j, (row, t) in enumerate(zip(rows, ids)):
            assert min(row) >= 0.0 and abs(sum(row) - 1.0) <= 1e-3, (
                f"{at}probs row {j} has min {min(row):.4g} and sum {sum(row):.6f}; rows must be non-negative "
                "and sum to 1")
            assert row[t] > 0.0, f"{at}draft {t} at {j} has probability 0 in its own row"


class _Request:
    """A simulated request: its tokens come from its own generator, so other requests never affect them."""

    def __init__(self, rid: str, key: str, seed: int, vocab: int, prompt_len: int) -> None:
        self.rid, self.vocab, self.k_rng = rid, vocab, random.Random(f"{seed}/{key}")
        self.left, self.offset, self.tokens = 0, 0, []
        self.tokens.extend(self._next() for _ in range(prompt_len))
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
    for _ in range(num_steps):
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
    live, keys, transcript, step = {}, {}, [], 0
    layers = tuple(getattr(proposer.needs, "hidden_state_layers", ()) or ())
    lookup = getattr(proposer.needs, "device_prompt_lookup", None)
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
            if lookup is not None:  # the declaration lets the engine draft without asking: hold it to it
                for req, ids in zip(reqs, drafts.token_ids):
                    want = prompt_lookup(req.token_ids, req.max_num_drafts, *lookup)
                    assert list(ids) == want, (
                        f"{method}: declares device_prompt_lookup={lookup} but drafted {list(ids)} for request "
                        f"{req.request_id!r} at step {step}; prompt lookup gives {want}")
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


def _play(spec: ProposerSpec, config: dict | None, ops: Sequence[tuple], vocab_size: int, k: int, seed: int):
    proposer = build_proposer(spec, config, vocab_size=vocab_size, num_speculative_tokens=k, seed=seed)
    return _run(proposer, ops, vocab_size=vocab_size, k=k, seed=seed, method=spec.method)


def check_bounds(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                 num_speculative_tokens: int = 4, seed: int = 0, num_steps: int = 200,
                 expect_drafts: bool = True) -> None:
    """Every answer within bounds over a long scenario; with ``expect_drafts``, at least one draft overall."""
    transcript = _play(spec, config, _scenario(seed, num_steps), vocab_size, num_speculative_tokens, seed)
    assert not expect_drafts or any(ids for _, _, ids in transcript), (
        f"{spec.method}: no drafts at all in {len(transcript)} propose calls on repetitive token streams; "
        f"pass expect_drafts=False if that is intended")


def check_determinism(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                      num_speculative_tokens: int = 4, seed: int = 0, num_steps: int = 120) -> None:
    """Two proposers built fresh with the same seed, fed the same events, draft the same tokens."""
    ops = _scenario(seed, num_steps)
    runs = [_play(spec, config, ops, vocab_size, num_speculative_tokens, seed) for _ in range(2)]
    for a, b in zip(*runs):
        assert a == b, (
            f"{spec.method}: not deterministic: step {a[0]}, request life {a[1]}: drafts {list(a[2])} in the "
            f"first run, {list(b[2])} in the second (same seed {seed}, same events)")


def check_lifecycle(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                    num_speculative_tokens: int = 4, seed: int = 0, num_steps: int = 120) -> None:
    """Interleaved add/finish/abort/re-add of ids; an aborted request leaves no trace.

    The scenario is played twice: as generated, and with every aborted request's life removed. The
    drafts of all other requests (ids re-added after an abort or a finish included) must be the same.
    """
    ops = _scenario(seed, num_steps)
    aborted = {op[2] for op in ops if op[0] == "abort"}
    without = [op for op in ops if not (op[0] in ("add", "abort") and op[2] in aborted)]
    full, clean = (_play(spec, config, o, vocab_size, num_speculative_tokens, seed) for o in (ops, without))
    kept = [entry for entry in full if entry[1] not in aborted]
    for a, b in zip(kept, clean):
        assert a == b, (
            f"{spec.method}: an aborted request left a trace: step {a[0]}, request life {a[1]}: drafts "
            f"{list(a[2])} with the aborted requests, {list(b[2])} in a run where they never existed")


def check_memory_flat(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                      num_speculative_tokens: int = 4, seed: int = 0, num_requests: int = 10_000) -> None:
    """Sequential short requests (finished, every third aborted): traced memory must not keep growing.

    Readings after the first 10% of requests and at the end; growth must stay under
    max(1 MiB, 10% of the first reading).
    """
    k, rng = num_speculative_tokens, random.Random(f"memory/{seed}")
    proposer = build_proposer(spec, config, vocab_size=vocab_size, num_speculative_tokens=k, seed=seed)
    templates = []  # made before tracing, so that the kit's own allocations stay few
    for t in range(64):
        src = _Request("t", f"memory-{seed}-{t}", seed, vocab_size, rng.randint(20, 30))
        steps = [(src._next(), rng.randint(0, k), rng.random()) for _ in range(rng.randint(2, 4))]
        templates.append((src.tokens, steps))
    warm, first = max(1, num_requests // 10), 0
    layers = tuple(getattr(proposer.needs, "hidden_state_layers", ()) or ())
    if started := not tracemalloc.is_tracing():
        tracemalloc.start()
    try:
        for i in range(num_requests):
            if i == warm:
                gc.collect()
                first = tracemalloc.get_traced_memory()[0]
            rid, (prompt, steps) = f"mem-{i}", templates[i % len(templates)]
            tokens, drafts, where = list(prompt), [], f"{spec.method}: memory request {i}: "
            proposer.on_request_added(rid, list(prompt))
            for j, (bonus, max_drafts, accept) in enumerate(steps):
                fed = list(prompt) if j == 0 else [tokens[-1], *drafts]  # what the target ran this step
                accepted = list(drafts[: int(accept * (len(drafts) + 1))])
                tokens += [*accepted, bonus]
                proposer.on_verified([VerifiedRequest(rid, len(drafts), len(accepted), [*accepted, bonus])])
                hidden = _hidden_states(layers, fed, vocab_size, seed) if layers else {}
                span = (0, len(fed)) if layers else None
                req = ProposeRequest(rid, tuple(tokens), len(prompt), max_drafts, span)
                batch = ProposeBatch([req], hidden)
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
        f"{spec.method}: memory grows with finished/aborted requests: traced {first} B after {warm} "
        f"requests, "
        f"{last} B after {num_requests} (+{last - first} B > limit {limit} B = max(1 MiB, 10% of the first))")


def run_conformance(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                    num_speculative_tokens: int = 4, seed: int = 0, num_memory_requests: int = 10_000,
                    expect_drafts: bool = True) -> None:
    """Bounds, determinism, lifecycle, memory, in this order. AssertionError at the first failure."""
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
