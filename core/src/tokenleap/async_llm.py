"""``AsyncLLM``: the engine for asyncio code, shaped as vLLM's.

One background thread owns the engine: it takes requests and aborts handed over through a thread-safe queue,
steps the engine while any request is unfinished (requests that arrive join the running batch: continuous
batching across callers) and, after each step, hands each caller the output of its request so far through the
caller's event loop (``loop.call_soon_threadsafe``). Nothing else touches the engine while the thread runs.
If a step fails, every waiting caller gets the error and the engine is marked dead (later calls fail at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from tokenleap.config import EngineConfig
from tokenleap.engine.request import Request
from tokenleap.engine.request_factory import RequestFactory, params_list
from tokenleap.inputs import PromptType, as_prompt_list
from tokenleap.llm import LLM
from tokenleap.outputs import RequestMetrics, RequestOutput, SpecDecodeStats
from tokenleap.sampling_params import SamplingParams

log = structlog.get_logger("tokenleap")


class EngineDeadError(RuntimeError):
    """The engine loop failed (or was shut down); no request can run on it any more."""


@dataclass(eq=False)
class _Tracked:
    """A caller's request group (n streams) as the loop thread follows it."""

    request_id: str
    group: list[Request]
    loop: asyncio.AbstractEventLoop  # the caller's
    inbox: asyncio.Queue  # the caller's queue of outputs (or an exception), filled on the caller's loop

    def deliver(self, item: RequestOutput | BaseException) -> None:
        """Thread-safe: put item in the caller's inbox on the caller's loop."""
        _post(self.loop, [(self.inbox, item)])

    sent_tokens: int = -1  # output tokens (all streams) in the last output handed over
    sent_text: int = -1


@dataclass
class _Add:
    tracked: _Tracked


@dataclass
class _Abort:
    request_id: str
    done: Callable[[], None] | None = None  # called (thread-safe) once the request is gone from the engine


@dataclass
class _Call:
    """Run fn() in the loop thread (between steps) and report its result."""

    fn: Callable[[], Any]
    done: Callable[[Any, BaseException | None], None] = field(default=lambda r, e: None)


_STOP = object()


def check_stream_interval(stream_interval: Any) -> None:
    if isinstance(stream_interval, bool) or not isinstance(stream_interval, int) or stream_interval < 1:
        raise ValueError(f"stream_interval={stream_interval!r}: an int >= 1 is needed (output tokens between two "
                         "outputs of a stream; 1 = every step)")


class AsyncFrontend:
    """What every async engine offers callers: requests made and validated here (``make_request``), their outputs
    as async generators (``generate``, ``run_request``), ``generate_all``. Subclasses run the engine (a thread of
    this process: ``AsyncLLM``; a process of its own: ``ProcessAsyncLLM``) and provide ``run_request``."""

    _requests: RequestFactory
    _active: set[str]  # request ids with a generate() in progress (touched on callers' loops)
    config: EngineConfig
    stream_interval: int

    def _check_alive(self) -> None:
        raise NotImplementedError

    def run_request(self, group: list[Request]) -> AsyncIterator[RequestOutput]:
        raise NotImplementedError

    async def call_engine(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(engine, *args)`` run where the engine runs, between two steps (``fn`` a module-level function when
        the engine has a process of its own)."""
        raise NotImplementedError

    async def engine_metrics(self) -> list:
        """The engine's metrics (``LLM.get_metrics``), read between two steps."""
        return await self.call_engine(engine_metrics)

    def get_tokenizer(self):
        return self._requests.tokenizer

    @property
    def max_model_len(self) -> int:
        return self._requests.max_model_len

    @property
    def vocab_size(self) -> int:
        return self._requests.vocab_size

    @property
    def speculative_config(self) -> dict[str, Any] | None:
        return self.config.speculative_config

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams | None = None,
                       request_id: str | None = None, *, priority: int = 0,
                       tokenization_kwargs: dict | None = None) -> AsyncIterator[RequestOutput]:
        """Outputs of one prompt as it grows; bad input raises before anything is queued."""
        group = self.make_request(prompt, sampling_params, request_id, priority=priority,
                                  tokenization_kwargs=tokenization_kwargs)
        async with contextlib.aclosing(self.run_request(group)) as outputs:
            async for out in outputs:
                yield out

    def make_request(self, prompt: PromptType, sampling_params: SamplingParams | None = None,
                     request_id: str | None = None, *, priority: int = 0,
                     tokenization_kwargs: dict | None = None) -> list[Request]:
        """Parse and validate one prompt into its engine requests (n streams), as ``LLM.generate`` does; raises
        ValueError / TypeError naming what is wrong."""
        self._check_alive()
        sp = sampling_params if sampling_params is not None else SamplingParams()
        if not isinstance(sampling_params, SamplingParams | None):
            raise TypeError(f"sampling_params is a {type(sampling_params).__name__}, not SamplingParams")
        if priority != 0 and self.config.scheduling_policy != "priority":
            raise ValueError("priority needs scheduling_policy='priority'; the engine runs 'fcfs'")
        rid = str(request_id) if request_id is not None else f"async-{next(self._ids)}"
        if rid in self._active:
            raise ValueError(f"request_id={rid!r} is already running; request ids must be unique")
        return self._requests.make([prompt], [sp], [priority], tokenization_kwargs, request_ids=[rid])[0]

    async def generate_all(self, prompts: PromptType | Sequence[PromptType],
                           sampling_params: SamplingParams | Sequence[SamplingParams] | None = None
                           ) -> list[RequestOutput]:
        """What ``LLM.generate`` returns for these prompts, all validated before any is queued."""
        plist = as_prompt_list(prompts)
        params = params_list(sampling_params, len(plist))
        self._check_alive()
        groups = self._requests.make(plist, params, None, None)

        async def last(group: list[Request]) -> RequestOutput:
            out = None
            async with contextlib.aclosing(self.run_request(group)) as outputs:
                async for out in outputs:  # noqa: B007 - the last one is wanted
                    pass
            return out

        tasks = [asyncio.ensure_future(last(g)) for g in groups]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:  # on cancellation or the first failure: abort the rest
                t.cancel()


class AsyncLLM(AsyncFrontend):
    """``AsyncLLM(model, **LLM kwargs)``; ``async for out in llm.generate(prompt, params, request_id)`` yields the
    request's output so far after each engine step in which it grew (text and token ids cumulative), the last one
    with ``finished=True``. Closing the generator or cancelling its task aborts the request. The engine steps in a
    thread of this process (``ProcessAsyncLLM``: in a process of its own)."""

    def __init__(self, model: str | None = None, *, stream_interval: int = 1, _llm: LLM | None = None,
                 **kwargs: Any) -> None:
        check_stream_interval(stream_interval)
        if _llm is None:
            if model is None:
                raise TypeError("AsyncLLM() needs a model")
            _llm = LLM(model=model, **kwargs)
        self.llm = _llm
        # a request's output is handed over once it has grown by this many tokens since the last one (and always its
        # first and last): fewer, longer chunks when many streams share a fast model (as vLLM's --stream-interval)
        self.stream_interval = stream_interval
        self.engine = _llm.engine
        self.config: EngineConfig = _llm.config
        self._requests = _llm.requests
        tok = self.engine.tokenizer
        if tok is not None:  # settle the tokenizer's (mutable) padding / truncation state before threads share it
            tok.encode("warm up")
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._active: set[str] = set()
        self._ids = itertools.count()
        self.dead: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="tokenleap-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_llm(cls, llm: LLM, stream_interval: int = 1) -> AsyncLLM:
        """An AsyncLLM stepping an existing LLM's engine (the two never step it at the same time)."""
        return cls(_llm=llm, stream_interval=stream_interval)

    @classmethod
    def from_engine_config(cls, config: EngineConfig, **kwargs: Any) -> AsyncLLM:
        return cls(**config.model_dump(), **kwargs)

    # -- the public API -----------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self.dead is None and self._thread.is_alive()

    async def run_request(self, group: list[Request]) -> AsyncIterator[RequestOutput]:
        """Queue a group made by ``make_request`` and yield its outputs (see ``generate``)."""
        self._check_alive()
        rid = _group_id(group)
        if rid in self._active:
            raise ValueError(f"request_id={rid!r} is already running; request ids must be unique")
        inbox: asyncio.Queue = asyncio.Queue()
        self._active.add(rid)
        finished = False
        try:
            self._commands.put(_Add(_Tracked(rid, group, asyncio.get_running_loop(), inbox)))
            while True:
                item = await inbox.get()
                while not inbox.empty():  # outputs are cumulative: a slow reader only needs the newest
                    if isinstance(item, BaseException):
                        break
                    item = inbox.get_nowait()
                if isinstance(item, BaseException):
                    finished = True  # the loop already dropped the request
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._active.discard(rid)
            if not finished:
                self._commands.put(_Abort(rid))

    async def abort(self, request_id: str) -> None:
        """Abort a request; returns once it has left the engine (its KV blocks are free). Unknown ids are ignored."""
        if not self.is_running:
            return
        loop = asyncio.get_running_loop()
        gone = loop.create_future()

        def done() -> None:
            loop.call_soon_threadsafe(lambda: gone.done() or gone.set_result(None))

        self._commands.put(_Abort(str(request_id), done))
        await gone

    async def call_in_engine_thread(self, fn: Callable[[], Any]) -> Any:
        """fn() run by the loop thread between steps (reading engine state safely)."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            def settle() -> None:
                if fut.done():
                    return
                fut.set_exception(exc) if exc is not None else fut.set_result(result)

            loop.call_soon_threadsafe(settle)

        self._commands.put(_Call(fn, done))
        return await fut

    async def call_engine(self, fn: Callable[..., Any], *args: Any) -> Any:
        engine = self.engine
        return await self.call_in_engine_thread(lambda: fn(engine, *args))

    def get_metrics(self):
        """The engine's metrics (as ``LLM.get_metrics``), read between two steps."""
        with self.llm._engine_lock:
            return self.engine.metrics()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Abort every request (their callers get EngineDeadError) and stop the loop thread."""
        if self._thread.is_alive():
            self._commands.put(_STOP)
            self._thread.join(timeout)
        if self.llm._async is self:
            self.llm._async = None

    # -- the loop thread ------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.dead is not None:
            raise EngineDeadError(f"the engine loop has stopped: {self.dead}") from self.dead
        if not self._thread.is_alive():
            raise EngineDeadError("the engine loop has stopped (shutdown)")

    def _loop(self) -> None:
        tracked: dict[str, _Tracked] = {}
        engine, lock = self.engine, self.llm._engine_lock
        try:
            while True:
                # (an offline LLM.generate on the same engine holds the lock for its whole run: its requests
                # never finish in a step of this thread, and this thread only steps for requests of its own)
                if self._take_commands(tracked, block=not tracked) is _STOP:
                    self._fail_all(tracked, EngineDeadError("the engine was shut down"))
                    self.dead = EngineDeadError("shut down")
                    return
                if not tracked:
                    continue
                with lock:
                    engine.step()
                by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
                for rid in list(tracked):
                    t = tracked[rid]
                    out = _snapshot(t, self.stream_interval)
                    if out is not None:
                        by_loop.setdefault(t.loop, []).append((t.inbox, out))
                    if all(r.status.finished for r in t.group):
                        del tracked[rid]
                for loop, items in by_loop.items():  # one wake-up per event loop and step, not one per request
                    _post(loop, items)
        except BaseException as exc:  # the engine is in an unknown state: every waiting caller gets the error
            log.exception("engine loop failed")
            self.dead = exc
            self._fail_all(tracked, EngineDeadError(f"the engine loop failed: {type(exc).__name__}: {exc}"))
            self._drain_after_death()

    def _take_commands(self, tracked: dict[str, _Tracked], block: bool) -> object | None:
        while True:
            try:
                cmd = self._commands.get(block=block)
            except queue.Empty:
                return None
            block = False
            if cmd is _STOP:
                return _STOP
            with self.llm._engine_lock:
                self._run_command(tracked, cmd)

    def _run_command(self, tracked: dict[str, _Tracked], cmd: Any) -> None:
        if isinstance(cmd, _Add):
            self._add(tracked, cmd.tracked)
        elif isinstance(cmd, _Abort):
            self._abort(tracked, cmd.request_id)
            if cmd.done is not None:
                cmd.done()
        elif isinstance(cmd, _Call):
            try:
                result = cmd.fn()
            except Exception as exc:  # the caller's error, not the engine's
                cmd.done(None, exc)
            else:
                cmd.done(result, None)

    def _add(self, tracked: dict[str, _Tracked], t: _Tracked) -> None:
        added: list[Request] = []
        try:
            if t.request_id in tracked:
                raise ValueError(f"request_id={t.request_id!r} is already running; request ids must be unique")
            for r in t.group:
                self.engine.add_request(r)
                added.append(r)
        except ValueError as exc:  # e.g. an id the offline LLM uses right now: this caller's error only
            for r in added:
                self.engine.abort_request(r.request_id)
            t.deliver(exc)
            return
        tracked[t.request_id] = t

    def _abort(self, tracked: dict[str, _Tracked], request_id: str) -> None:
        t = tracked.pop(request_id, None)
        if t is not None:
            for r in t.group:
                self.engine.abort_request(r.request_id)
            t.deliver(_snapshot(t))  # its last output (finish_reason "abort") ends the caller's stream

    def _fail_all(self, tracked: dict[str, _Tracked], exc: BaseException) -> None:
        for t in tracked.values():
            for r in t.group:
                try:
                    self.engine.abort_request(r.request_id)
                except Exception:  # noqa: BLE001 - the engine may be broken; the callers still hear of it
                    pass
            t.deliver(exc)
        tracked.clear()

    def _drain_after_death(self) -> None:
        """Requests queued after the failure: tell their callers (nothing else reads the queue any more)."""
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(cmd, _Add):
                cmd.tracked.deliver(EngineDeadError(f"the engine loop failed: {self.dead}"))
            elif isinstance(cmd, _Abort) and cmd.done is not None:
                cmd.done()
            elif isinstance(cmd, _Call):
                cmd.done(None, EngineDeadError(f"the engine loop failed: {self.dead}"))


def engine_metrics(engine: Any) -> list:
    return engine.metrics()


def _post(loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Queue, Any]]) -> None:
    def put_all() -> None:
        for inbox, item in items:
            inbox.put_nowait(item)

    try:
        loop.call_soon_threadsafe(put_all)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting
        pass


def _group_id(group: list[Request]) -> str:
    return group[0].request_id.rsplit("-", 1)[0] if group[0].params.n > 1 else group[0].request_id


def _visible_text(r: Request) -> str:
    """The text a caller may see before the request ends: without its last (longest stop string - 1)
    characters while stop strings may still match there (the match truncates the text)."""
    stops = r.params.stop_strings
    if not stops or r.status.finished:
        return r.text
    hold = max(len(s) for s in stops) - 1
    return r.text[: len(r.text) - hold] if hold else r.text


def _snapshot(t: _Tracked, interval: int = 1) -> RequestOutput | None:
    """The group's output so far, or None when nothing new is visible since the last one, or (``interval`` > 1)
    when it has grown by fewer than ``interval`` tokens since then (the first tokens and the last output always go)."""
    finished = all(r.status.finished for r in t.group)
    n_tokens = sum(r.num_output_tokens for r in t.group)
    if not finished and t.sent_tokens > 0 and n_tokens - t.sent_tokens < interval:
        return None
    texts = [_visible_text(r) for r in t.group]
    n_text = sum(len(x) for x in texts)
    if not finished and n_tokens == t.sent_tokens and n_text == t.sent_text:
        return None
    t.sent_tokens, t.sent_text = n_tokens, n_text
    out = LLM._output(t.group)
    for c, text in zip(out.outputs, texts):
        c.text = text
    out.request_id = t.request_id
    out.metrics = _group_metrics(t.group) if finished else t.group[0].metrics  # (live until the end)
    return out


def _group_metrics(group: list[Request]) -> RequestMetrics:
    """The first stream's timings, with the acceptance figures of all n streams summed."""
    m = copy.copy(group[0].metrics)
    if len(group) > 1:
        total = SpecDecodeStats()
        for r in group:
            total.add(r.metrics.spec_decode)
        m.spec_decode = total
    else:
        m.spec_decode = copy.deepcopy(m.spec_decode)
    return m
