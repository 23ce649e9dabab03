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

from tokenleap_plugins.manager import ENTRY_POINT_GROUP, validate_method_config
from tokenleap_plugins.proposer import (
    ComputedTokens,
    DeviceDraftingSpec,
    DeviceDraftStep,
    Drafts,
    ProposeBatch,
    Proposer,
    ProposerBase,
    ProposerContext,
    ProposeRequest,
    ProposerSpec,
    VerifiedRequest,
)

__all__ = ["EchoProposer", "build_proposer", "check_bounds", "check_determinism", "check_device_drafter",
           "check_drafts", "check_entry_point", "check_lifecycle", "check_memory_flat", "echo_spec", "run_conformance"]


def build_proposer(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                   num_speculative_tokens: int | None = 4, seed: int = 0, **context: Any) -> Proposer:
    """Validate ``config`` as the engine would and build a proposer (``context``: ProposerContext fields)."""
    validated = validate_method_config(spec, dict(config or {}), common_keys=set())
    if num_speculative_tokens is None:  # the method's default k, as the engine would take it
        assert spec.default_num_speculative_tokens is not None, (
            f"{spec.method}: num_speculative_tokens=None but the spec has no default_num_speculative_tokens")
        num_speculative_tokens = int(spec.default_num_speculative_tokens(validated))
        assert 1 <= num_speculative_tokens <= 32, (
            f"{spec.method}: default_num_speculative_tokens gave {num_speculative_tokens}, outside 1..32")
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
        self.kept = 0  # tokens of the last step whose KV the target kept (the fed ones minus rejected drafts)

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
        self.kept = len(self.fed) - (len(drafts) - len(accepted))
        self.tokens.extend(accepted)
        self.tokens.append(self._next())
        self.pending = []
        return VerifiedRequest(self.rid, len(drafts), len(accepted), [*accepted, self.tokens[-1]])

    def preempt(self) -> None:
        """Its KV is gone: the next step recomputes every token before the last (no drafts pending)."""
        self.pending = None


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
        elif r < 0.45:
            ops.append(("preempt", rng.choice(sorted(live)), None))
    ops += [("finish", rid, key) for rid, key in live.items()]
    return ops


def _run(proposer: Proposer, ops: Sequence[tuple], *, method: str, vocab_size: int, k: int,
         seed: int) -> list[tuple[int, str, tuple[int, ...]]]:
    """Play ``ops``; check every answer; return the transcript (step, life key, drafts)."""
    live, keys, transcript, step = {}, {}, [], 0
    layers = tuple(getattr(proposer.needs, "hidden_state_layers", ()) or ())
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
        elif op[0] == "preempt":
            if op[1] in live:
                live[op[1]].preempt()
                hook = getattr(proposer, "on_request_preempted", None)
                if hook is not None:
                    hook(op[1])
        else:
            step += 1  # counted even when nothing runs, so that two scenarios' steps line up
            if not live:
                continue
            proposer.on_verified([req.verify() for req in live.values()])
            reqs, rows, start = [], [], 0
            for rid, req in live.items():
                m = 0 if req.k_rng.random() < 0.15 else req.k_rng.randint(1, k)
                span = (start, start + len(req.fed)) if layers else None
                first = len(req.tokens) - 1 - req.kept
                computed = ComputedTokens(first, req.kept, start, len(req.fed) - req.kept)
                rows.extend(req.fed)
                start += len(req.fed)
                reqs.append(ProposeRequest(rid, tuple(req.tokens), req.num_prompt, m, span, computed,
                                           len(req.tokens) - 1))
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


def _play(spec: ProposerSpec, config: dict | None, ops: Sequence[tuple], vocab_size: int, k: int | None,
          seed: int):
    proposer = build_proposer(spec, config, vocab_size=vocab_size, num_speculative_tokens=k, seed=seed)
    if k is None:  # the method's default, as build_proposer resolved it
        k = int(spec.default_num_speculative_tokens(validate_method_config(spec, dict(config or {}), set())))
    return _run(proposer, ops, vocab_size=vocab_size, k=k, seed=seed, method=spec.method)


def check_bounds(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                 num_speculative_tokens: int | None = 4, seed: int = 0, num_steps: int = 200,
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


def check_device_drafter(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                         num_speculative_tokens: int = 4, seed: int = 0, num_cases: int = 40) -> bool:
    """A proposer that offers a device drafter must draft on the device what ``propose`` drafts on the host.

    Its drafter is built for the CPU with the torch backend, given histories, and asked to write the next verify
    step after a step that emitted 1..q tokens; the step's ids (last token, drafts), draft counts and sequence
    lengths must match ``propose`` on the same tokens. Returns False when the proposer offers no drafter."""
    k, q = num_speculative_tokens, num_speculative_tokens + 1
    proposer = build_proposer(spec, config, vocab_size=vocab_size, num_speculative_tokens=k, seed=seed)
    offer = getattr(proposer, "device_drafter", None)
    max_rows, max_len, bs = 4, 512, 16
    drafter = offer(DeviceDraftingSpec(max_rows, q, max_len, bs, "cpu", "torch")) if offer else None
    if drafter is None:
        return False
    import torch  # only proposers with a device drafter get here

    rng = random.Random(f"device/{seed}")
    max_blocks = max_len // bs + 4
    for case in range(num_cases):
        reqs = [_Request(f"dev-{case}-{i}", f"device-{case}-{i}", seed, vocab_size, rng.randint(4, 60))
                for i in range(rng.randint(1, max_rows))]
        b = len(reqs)
        emitted = [rng.randint(1, min(q, len(r.tokens) - 1)) for r in reqs]
        drafter.load_histories([r.tokens[: len(r.tokens) - e] for r, e in zip(reqs, emitted)])
        last = torch.zeros(max_rows, q + 2, dtype=torch.int64)
        for i, (r, e) in enumerate(zip(reqs, emitted)):
            last[i, :e] = torch.tensor(r.tokens[len(r.tokens) - e :])
            last[i, q] = e
        tables = torch.arange(1, b * max_blocks + 1, dtype=torch.int32).view(b, max_blocks)
        step = DeviceDraftStep(
            last=last, feed=torch.ones(b, dtype=torch.int64), limits=torch.full((b,), 1 << 20, dtype=torch.int64),
            tables=tables, ids=torch.full((b * q,), -1, dtype=torch.int64),
            positions=torch.zeros(b * q, dtype=torch.int64), slots=torch.zeros(b * q, dtype=torch.int64),
            seq_lens=torch.zeros(b, dtype=torch.int32), num_drafts=torch.zeros(b, dtype=torch.int64), q=q,
            block_size=bs)
        drafter.draft(step)
        for i, r in enumerate(reqs):
            proposer.on_request_added(r.rid, list(r.tokens))
            want = list(proposer.propose(ProposeBatch([ProposeRequest(r.rid, tuple(r.tokens), len(r.tokens), k)]))
                        .token_ids[0])
            proposer.on_request_finished(r.rid, list(r.tokens))
            nd = int(step.num_drafts[i])
            got = [int(t) for t in step.ids[i * q + 1 : i * q + 1 + nd]]
            where = f"{spec.method}: device drafter, case {case}, row {i} ({len(r.tokens)} tokens): "
            assert got == want, f"{where}drafted {got} on the device, propose() drafted {want}"
            assert int(step.ids[i * q]) == r.tokens[-1], f"{where}row's first id is not the last token"
            assert int(step.seq_lens[i]) == len(r.tokens) - 1 + q, f"{where}seq_len {int(step.seq_lens[i])}"
    return True


def check_entry_point(spec: ProposerSpec) -> bool:
    """The entry point that provides ``spec`` is named ``spec.method`` (the string users write). Imports every
    installed plugin of the group. Returns False when no installed entry point provides the method (a plugin
    registered in-process only)."""
    from importlib import metadata

    named = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec.method]
    if named:
        methods = _methods_of(named[0].load())
        assert spec.method in methods, (
            f"the entry point {spec.method!r} ({named[0].value}) in group {ENTRY_POINT_GROUP!r} registers "
            f"methods {sorted(methods)}, not {spec.method!r}")
        return True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        methods = _methods_of(ep.load())
        assert spec.method not in methods, (
            f"the entry point {ep.name!r} ({ep.value}) registers method {spec.method!r} under another name: users "
            f"write the entry point's name as speculative_config['method']; name the entry point {spec.method!r}")
    return False


def _methods_of(module: Any) -> set[str]:
    hook = getattr(module, "tokenleap_register_proposers", None)
    return {s.method for s in (hook() or [])} if hook is not None else set()


def run_conformance(spec: ProposerSpec, config: dict | None = None, *, vocab_size: int = 64,
                    num_speculative_tokens: int = 4, seed: int = 0, num_memory_requests: int = 10_000,
                    expect_drafts: bool = True, report: Any = print) -> None:
    """Entry point, bounds, determinism, lifecycle (preemption included), memory, the device drafter, and the
    method's default k when it has one, in this order. AssertionError at the first failure; ``report`` (print by
    default, None for silence) gets one summary line per check."""
    kw = dict(vocab_size=vocab_size, num_speculative_tokens=num_speculative_tokens, seed=seed)
    say = report or (lambda *_: None)
    say(f"{spec.method}: entry point " + ("ok" if check_entry_point(spec) else "not installed (not checked)"))
    check_bounds(spec, config, expect_drafts=expect_drafts, **kw)
    say(f"{spec.method}: bounds ok (k={num_speculative_tokens}, vocab {vocab_size})")
    check_determinism(spec, config, **kw)
    say(f"{spec.method}: determinism ok")
    check_lifecycle(spec, config, **kw)
    say(f"{spec.method}: lifecycle ok (add / verify / preempt / finish / abort / re-add)")
    check_memory_flat(spec, config, num_requests=num_memory_requests, **kw)
    say(f"{spec.method}: memory flat over {num_memory_requests} requests")
    drafter = check_device_drafter(spec, config, **kw)
    say(f"{spec.method}: device drafter " + ("drafts what propose() drafts" if drafter else "none offered"))
    if spec.default_num_speculative_tokens is not None:
        check_bounds(spec, config, expect_drafts=expect_drafts, vocab_size=vocab_size, seed=seed,
                     num_speculative_tokens=None, num_steps=60)
        say(f"{spec.method}: default num_speculative_tokens ok")
    say(f"{spec.method}: conformance passed")


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
