"""Running the requests of one HTTP request (several prompts, each with n completions) on the AsyncLLM,
merged into one stream of (prompt index, output) that a client disconnect cancels at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.requests import Request as HttpRequest

from tokenleap.async_llm import AsyncFrontend
from tokenleap.engine.request import Request
from tokenleap.outputs import RequestOutput

_DISCONNECTED = object()


async def wait_for_disconnect(http: HttpRequest) -> None:
    """Returns when the client has gone (the body is already read: the next ASGI message is the disconnect)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


class Fanout:
    """One task per request group, feeding one queue; ``cancel()`` (or a disconnect) aborts every group."""

    def __init__(self, llm: AsyncFrontend, groups: list[list[Request]], http: HttpRequest | None = None) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks = [asyncio.ensure_future(self._pump(i, g, llm)) for i, g in enumerate(groups)]
        self._pending = len(groups)
        self.disconnected = False
        self._watcher = asyncio.ensure_future(self._watch(http)) if http is not None else None

    async def _pump(self, index: int, group: list[Request], llm: AsyncFrontend) -> None:
        try:
            async with contextlib.aclosing(llm.run_request(group)) as outputs:
                async for out in outputs:
                    self._queue.put_nowait((index, out))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the reader, who answers with an error
            self._queue.put_nowait((index, exc))

    async def _watch(self, http: HttpRequest) -> None:
        await wait_for_disconnect(http)
        self.disconnected = True
        self.cancel()
        self._queue.put_nowait(_DISCONNECTED)

    def cancel(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, cumulative output) as they come; raises the first group's error; stops early on a
        disconnect (``disconnected`` is then True)."""
        try:
            while self._pending:
                item = await self._queue.get()
                if item is _DISCONNECTED:
                    return
                index, out = item
                if isinstance(out, BaseException):
                    raise out
                if out.finished:
                    self._pending -= 1
                yield index, out
        finally:
            self.cancel()
