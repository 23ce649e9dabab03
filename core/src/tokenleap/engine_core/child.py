"""The engine process: builds the ``LLM``, then steps its engine for the requests the HTTP process sends.

Messages in (``commands``, from the parent): ("add", group_id, [Request, ...], [handle, ...]) (the handles name
the streams in the changes sent back), ("abort", group_id, token), ("call", token, fn, args) (``fn(engine,
*args)``, a module-level function), ("stop",).
Messages out (``outputs``): ("ready", EngineFacts) once, or ("failed", exception); then ("steps", [StepChanges, ...])
after a step in which a request changed (several steps' changes at once while the parent is behind), ("error",
group_id, exception) for a group the engine refused, ("done", token, result, exception) for aborts and calls, and
("dead", message) if a step fails (the process then ends). When the parent goes away (its end of a pipe closes)
the process ends too: no engine outlives its server.
"""

from __future__ import annotations

import contextlib
import fcntl
import select
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from tokenleap.engine.request import Request
from tokenleap.engine_core.deltas import Sent, StepChanges, collect_step
from tokenleap.engine_core.trace import LoopTrace


@dataclass
class EngineFacts:
    """What the HTTP process needs to make and check requests without the engine."""

    tokenizer: Any
    vocab_size: int
    max_model_len: int
    eos_token_ids: frozenset[int]
    max_logprobs: int
    config: dict[str, Any]  # EngineConfig.model_dump()


class EngineLoop:
    """The engine and the groups it runs for the parent; ``step`` returns one step's changes."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.groups: dict[str, list[tuple[int, Request, Sent]]] = {}  # group id -> (handle, request, sent) per stream

    def add(self, group_id: str, group: list[Request], handles: list[int]) -> None:
        """Raises ValueError (nothing of the group left in the engine) when the engine refuses a request."""
        if group_id in self.groups:
            raise ValueError(f"request_id={group_id!r} is already running; request ids must be unique")
        added: list[Request] = []
        try:
            for r in group:
                self.engine.add_request(r)
                added.append(r)
        except BaseException:
            for r in added:
                self.engine.abort_request(r.request_id)
            raise
        self.groups[group_id] = [(h, r, Sent()) for h, r in zip(handles, group)]

    def abort(self, group_id: str) -> StepChanges:
        """Abort a group; its last changes (finish_reason "abort") end the caller's stream."""
        entries = self.groups.pop(group_id, None)
        if entries is None:
            return StepChanges()
        for _, r, _ in entries:
            self.engine.abort_request(r.request_id)
        return collect_step(entries)

    def step(self) -> StepChanges:
        self.engine.step()
        return self.collect()

    def collect(self) -> StepChanges:
        """What changed since the last call (groups that ended are dropped)."""
        changes = collect_step(e for entries in self.groups.values() for e in entries)
        for gid in [g for g, entries in self.groups.items() if all(r.status.finished for _, r, _ in entries)]:
            del self.groups[gid]
        return changes

    def abort_all(self) -> None:
        for gid in list(self.groups):
            self.abort(gid)


def main(llm_kwargs: dict[str, Any], commands: Connection, outputs: Connection) -> None:
    """The engine process's entry point (``multiprocessing`` spawn target). Ctrl-C is the parent's to handle (it
    sends "stop"); SIGTERM ends the process through its exit handlers (tensor-parallel workers are stopped)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        from tokenleap.llm import LLM

        llm = LLM(**llm_kwargs)
        eng = llm.engine
        facts = EngineFacts(eng.tokenizer, eng.arch.vocab_size, eng.max_model_len,
                            frozenset(eng.arch.eos_token_ids), llm.config.max_logprobs, llm.config.model_dump())
    except BaseException as exc:  # noqa: BLE001 - the parent raises it
        try:
            outputs.send(("failed", exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its message, as a RuntimeError
            outputs.send(("failed", RuntimeError(f"{type(exc).__name__}: {exc}")))
        return
    outputs.send(("ready", facts))
    loop = EngineLoop(eng)
    try:
        _serve(loop, commands, Outbox(outputs))
    except (EOFError, BrokenPipeError, ConnectionResetError, SystemExit):  # the parent is gone, or SIGTERM
        loop.abort_all()
    except BaseException as exc:  # noqa: BLE001 - a failed step: every caller hears of it, then the process ends
        traceback.print_exc()
        try:
            outputs.send(("dead", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class Outbox:
    """The engine's messages to the parent. Step changes are sent when the pipe has room and kept (in order) while
    it has none, then sent together: a parent busy with HTTP never holds up the engine, it gets fewer, longer
    messages. Every other message first sends what is kept (a caller sees its outputs before the reply to its
    abort)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: list[StepChanges] = []
        widen_pipe(conn.fileno())

    def changes(self, changes: StepChanges, wait: bool) -> None:
        if changes:
            self.pending.append(changes)
        if self.pending and (wait or _writable(self.conn.fileno())):
            self.conn.send(("steps", self.pending))
            self.pending = []

    def send(self, msg: tuple) -> None:
        self.changes(StepChanges(), wait=True)
        self.conn.send(msg)


def _writable(fd: int) -> bool:
    return bool(select.select([], [fd], [], 0)[1])


def widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """Room for many messages in a pipe (Linux; the default is 64 KiB), so that sends seldom wait: the engine's
    deltas while the parent is busy, the parent's requests while the engine steps."""
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


def _serve(loop: EngineLoop, commands: Connection, out: Outbox) -> None:
    trace = LoopTrace.from_env()
    try:
        while True:
            trace.mark()
            if not loop.groups:
                out.changes(StepChanges(), wait=True)  # idle: nothing may stay pending
                commands.poll(None)  # wait for a command (EOFError once the parent is gone)
            idle, n = trace.mark(), 0
            while commands.poll(0):
                n += 1
                if _handle(loop, commands.recv(), out) is False:
                    loop.abort_all()
                    return
            if loop.groups:
                took = trace.mark()
                loop.engine.step()
                stepped = trace.mark()
                changes = loop.collect()
                collected = trace.mark()
                out.changes(changes, wait=False)
                trace.row(loop.engine, idle, took, n, stepped, collected, trace.mark(),
                          len(changes.handles) + len(changes.deltas))
    finally:
        trace.write()


def _handle(loop: EngineLoop, cmd: tuple, outputs: Outbox) -> bool:
    kind = cmd[0]
    if kind == "stop":
        return False
    if kind == "add":
        _, gid, group, handles = cmd
        try:
            loop.add(gid, group, handles)
        except ValueError as exc:  # this caller's error, not the engine's
            outputs.send(("error", gid, exc))
    elif kind == "abort":
        _, gid, token = cmd
        outputs.changes(loop.abort(gid), wait=True)
        outputs.send(("done", token, None, None))
    elif kind == "call":
        _, token, fn, args = cmd
        try:
            result, error = fn(loop.engine, *args), None
        except Exception as exc:  # noqa: BLE001 - the caller's error, not the engine's
            result, error = None, exc
        outputs.send(("done", token, result, error))
    else:
        raise ValueError(f"unknown engine-process command {kind!r}")
    return True
