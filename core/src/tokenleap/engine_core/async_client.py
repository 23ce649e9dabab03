"""``ProcessAsyncLLM``: ``AsyncLLM`` with the engine in a process of its own (as vLLM's engine core).

Why: in one process the engine's Python (scheduling, inputs, outputs) and the event loop's (HTTP, JSON, one SSE
chunk per stream per step) take turns on one GIL, so a fast model serving many streams runs at a fraction of its
offline speed. Here the engine process steps without pause and sends, after each step, one message with what
changed in each request (``deltas.StepChanges``); this process keeps its own copy of every request, and a
caller's next output is built when the caller asks for it, from everything that arrived meanwhile: a caller that
falls behind gets fewer, longer outputs instead of slowing the engine.

Threads here: the callers' event loops, and one reader thread that receives the engine's messages and hands
each to the event loop of the request it concerns (``call_soon_threadsafe``, one per loop and message).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import multiprocessing
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from tokenleap.async_llm import (
    AsyncFrontend,
    EngineDeadError,
    _group_id,
    _snapshot,
    _Tracked,
    check_stream_interval,
    engine_metrics,
)
from tokenleap.config import EngineConfig
from tokenleap.engine.request import Request
from tokenleap.engine.request_factory import RequestFactory
from tokenleap.engine_core import child
from tokenleap.engine_core.deltas import StepChanges, apply_step
from tokenleap.outputs import RequestOutput

_WAKE = object()  # "your request changed": the caller builds its output from its copy


@dataclass(eq=False)
class _Copy(_Tracked):
    """A caller's request group as this process follows it (``group``: this process's copies)."""

    woken: bool = False  # a _WAKE is in the inbox, not yet taken
    streams: dict[int, Request] = field(default_factory=dict)  # handle -> copy of that stream


class _LoopStreams:
    """The streams followed on one event loop, touched only on that loop: the engine's changes are applied here
    and each caller whose request changed is woken once."""

    def __init__(self) -> None:
        self.streams: dict[int, Request] = {}
        self.owners: dict[int, _Copy] = {}
        self.groups = 0  # run_request calls in progress on this loop (guarded by the client's lock)

    def apply(self, steps: list[StepChanges]) -> None:
        woken: dict[int, _Copy] = {}
        for changes in steps:
            for handle in apply_step(changes, self.streams):
                copy = self.owners.get(handle)
                if copy is not None:
                    woken[id(copy)] = copy
        for copy in woken.values():
            if not copy.woken:
                copy.woken = True
                copy.inbox.put_nowait(_WAKE)


class ProcessAsyncLLM(AsyncFrontend):
    """``ProcessAsyncLLM(model, **LLM kwargs)``: the ``AsyncLLM`` API (``generate``, ``abort``, ``generate_all``,
    ``engine_metrics``, ``shutdown``) over an engine in a child process. Construction returns once the engine is
    loaded (its errors are raised here); ``shutdown()`` (also run at interpreter exit) stops the process."""

    def __init__(self, model: str, *, stream_interval: int = 1, startup_timeout: float | None = None,
                 **kwargs: Any) -> None:
        check_stream_interval(stream_interval)
        self.stream_interval = stream_interval
        self._active: set[str] = set()
        self._ids = itertools.count()
        self.dead: BaseException | None = None
        self._copies: dict[str, _Copy] = {}  # group id -> copy (the reader thread reads it: guarded by _lock)
        self._loops: dict[asyncio.AbstractEventLoop, _LoopStreams] = {}  # loops with requests (guarded by _lock)
        self._handles = itertools.count()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, Callable[[Any, BaseException | None], None]] = {}  # token -> reply handler
        self._tokens = itertools.count()
        ctx = multiprocessing.get_context("spawn")  # (CUDA cannot be forked)
        cmd_read, self._cmd = ctx.Pipe(duplex=False)
        child.widen_pipe(self._cmd.fileno())  # 64 requests arriving at once do not wait for the engine's step
        self._out, out_write = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=child.main, args=(dict(model=model, **kwargs), cmd_read, out_write),
                                 name="tokenleap-engine", daemon=True)
        self._proc.start()
        cmd_read.close()
        out_write.close()
        atexit.register(self.shutdown)  # (after multiprocessing's own exit handler: this one runs first)
        facts = self._wait_ready(startup_timeout)
        self.config = EngineConfig(**facts.config)
        self._requests = RequestFactory(facts.tokenizer, facts.vocab_size, facts.max_model_len,
                                        facts.eos_token_ids, facts.max_logprobs, self.config.seed)
        self._reader = threading.Thread(target=self._read, name="tokenleap-engine-reader", daemon=True)
        self._reader.start()

    def _wait_ready(self, timeout: float | None) -> child.EngineFacts:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._out.poll(0.2):
            if not self._proc.is_alive():
                self._close_pipes()
                raise EngineDeadError(f"the engine process exited with code {self._proc.exitcode} while loading")
            if deadline is not None and time.monotonic() > deadline:
                self.shutdown()
                raise TimeoutError(f"the engine process did not load within startup_timeout={timeout} s")
        msg = self._out.recv()
        if msg[0] == "failed":  # the LLM's own error (a bad argument, a missing model, ...), raised here
            self._proc.join(30)
            self._close_pipes()
            raise msg[1]
        return msg[1]

    # -- the public API -----------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self.dead is None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        """The engine process's id."""
        return self._proc.pid

    async def run_request(self, group: list[Request]) -> AsyncIterator[RequestOutput]:
        """Queue a group made by ``make_request`` and yield its outputs (see ``generate``)."""
        self._check_alive()
        rid = _group_id(group)
        if rid in self._active:
            raise ValueError(f"request_id={rid!r} is already running; request ids must be unique")
        loop = asyncio.get_running_loop()
        copy = _Copy(rid, group, loop, asyncio.Queue())
        copy.streams = {next(self._handles): r for r in group}
        self._active.add(rid)
        finished = False
        try:
            with self._lock:
                self._copies[rid] = copy
                streams = self._loops.setdefault(loop, _LoopStreams())
                streams.groups += 1
            streams.streams.update(copy.streams)
            streams.owners.update(dict.fromkeys(copy.streams, copy))
            self._send(("add", rid, group, list(copy.streams)))
            while True:
                item = await copy.inbox.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine has dropped the request (or is gone)
                    raise item
                copy.woken = False
                out = _snapshot(copy, self.stream_interval)
                if out is None:
                    continue
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._active.discard(rid)
            self._forget(copy)
            if not finished and self.is_running:
                with contextlib.suppress(EngineDeadError):
                    self._send(("abort", rid, None))

    async def abort(self, request_id: str) -> None:
        """Abort a request; returns once it has left the engine (its KV blocks are free). Unknown ids are ignored."""
        if not self.is_running:
            return
        await self._ask("abort", str(request_id))

    async def call_engine(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._check_alive()
        return await self._ask("call", fn, args)

    def get_metrics(self) -> list:
        """The engine's metrics, read between two steps (blocks this thread for one round trip)."""
        self._check_alive()
        done = threading.Event()
        box: list = []

        def reply(result: Any, exc: BaseException | None) -> None:
            box[:] = [result, exc]
            done.set()

        self._request(reply, lambda token: ("call", token, engine_metrics, ()))
        done.wait()
        if box[1] is not None:
            raise box[1]
        return box[0]

    def shutdown(self, timeout: float = 30.0) -> None:
        """Abort every request (their callers get EngineDeadError) and stop the engine process."""
        if self.dead is None:
            self.dead = EngineDeadError("shut down")
        if self._proc.is_alive():
            try:
                self._send(("stop",))
            except (OSError, EngineDeadError):
                pass
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        reader = getattr(self, "_reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(5)
        self._close_pipes()
        atexit.unregister(self.shutdown)

    # -- this process's side --------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.dead is not None:
            raise EngineDeadError(f"the engine loop has stopped: {self.dead}") from self.dead
        if not self._proc.is_alive():
            raise EngineDeadError(f"the engine process has exited (code {self._proc.exitcode})")

    def _send(self, msg: tuple) -> None:
        try:
            with self._send_lock:
                self._cmd.send(msg)
        except (OSError, ValueError) as exc:  # the process is gone (or the pipe closed by shutdown)
            raise EngineDeadError(f"the engine process is gone: {exc}") from exc

    def _request(self, reply: Callable[[Any, BaseException | None], None], make: Callable[[int], tuple]) -> None:
        token = next(self._tokens)
        with self._lock:
            self._pending[token] = reply
        try:
            self._send(make(token))
        except EngineDeadError as exc:
            with self._lock:
                self._pending.pop(token, None)
            reply(None, exc)

    async def _ask(self, kind: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(result)

        def reply(result: Any, exc: BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(settle, result, exc)
            except RuntimeError:  # the caller's loop is closed
                pass

        if kind == "abort":
            self._request(reply, lambda token: ("abort", args[0], token))
        else:
            self._request(reply, lambda token: ("call", token, args[0], args[1]))
        return await fut

    def _forget(self, copy: _Copy) -> None:
        """On the caller's loop: stop following ``copy``."""
        with self._lock:
            if self._copies.get(copy.request_id) is copy:
                del self._copies[copy.request_id]
            streams = self._loops.get(copy.loop)
            if streams is not None:
                streams.groups -= 1
                if streams.groups == 0:
                    del self._loops[copy.loop]
        if streams is not None:
            for handle in copy.streams:
                streams.streams.pop(handle, None)
                streams.owners.pop(handle, None)

    def _read(self) -> None:
        """The reader thread: the engine's messages, until the process ends."""
        why: BaseException | None = None
        try:
            while True:
                msg = self._out.recv()
                kind = msg[0]
                if kind == "steps":
                    self._hand_out(msg[1])
                elif kind == "error":
                    with self._lock:
                        copy = self._copies.get(msg[1])
                    if copy is not None:
                        copy.deliver(msg[2])
                elif kind == "done":
                    _, token, result, exc = msg
                    with self._lock:
                        reply = self._pending.pop(token, None)
                    if reply is not None:
                        reply(result, exc)
                elif kind == "dead":
                    why = EngineDeadError(f"the engine loop failed: {msg[1]}")
                    return
        except (EOFError, OSError):
            pass
        finally:
            self._fail_all(why)

    def _hand_out(self, steps: list[StepChanges]) -> None:
        """The steps' changes to every event loop with requests (usually one), where each applies its own."""
        with self._lock:
            loops = list(self._loops.items())
        for loop, streams in loops:
            try:
                loop.call_soon_threadsafe(streams.apply, steps)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting
                pass

    def _fail_all(self, why: BaseException | None) -> None:
        """The process has ended (or failed): every waiting caller gets the error; later calls fail at once."""
        if self.dead is None:
            code = self._proc.exitcode if not self._proc.is_alive() else None
            self.dead = why or EngineDeadError(f"the engine process exited (code {code})")
        err = self.dead if isinstance(self.dead, EngineDeadError) else EngineDeadError(str(self.dead))
        with self._lock:
            copies, self._copies = list(self._copies.values()), {}
            pending, self._pending = list(self._pending.values()), {}
        for copy in copies:
            copy.deliver(err)
        for reply in pending:
            reply(None, err)

    def _close_pipes(self) -> None:
        for conn in (getattr(self, "_cmd", None), getattr(self, "_out", None)):
            if conn is not None:
                conn.close()
