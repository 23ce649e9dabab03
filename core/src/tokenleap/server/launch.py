"""Starting the server: uvicorn over ``build_app``, in the foreground (``tokenleap serve``) or in a background
thread (tests, ``bench serve`` in-process)."""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import uvicorn

from tokenleap.async_llm import AsyncFrontend
from tokenleap.server.app import build_app

# The interpreter's thread switch interval in the server's process (CPython's default is 5 ms). The engine thread
# gives up the GIL at every CUDA sync and torch call; while the event loop streams to many clients it holds the
# GIL, and the engine thread may wait up to one interval to get it back, each time. Measured: a help on a busy
# 2-core CPU, no difference beyond noise on an H100 (docs/serving.md). TOKENLEAP_SWITCH_INTERVAL_S overrides it.
SWITCH_INTERVAL_S = 0.0002


def switch_interval_s() -> float:
    raw = os.environ.get("TOKENLEAP_SWITCH_INTERVAL_S")
    if raw is None:
        return SWITCH_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"TOKENLEAP_SWITCH_INTERVAL_S={raw!r}: a number of seconds > 0 is needed (default "
                         f"{SWITCH_INTERVAL_S})")
    return value


def serve(llm: AsyncFrontend, served_model_names: list[str], host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, log_level: str = "info", switch_interval: float | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), then stop the engine thread. The process is the server's:
    its thread switch interval is set for the engine thread's sake (default ``switch_interval_s()``)."""
    sys.setswitchinterval(switch_interval if switch_interval is not None else switch_interval_s())
    app = build_app(llm, served_model_names, api_key, shutdown_engine=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@dataclass
class BackgroundServer:
    """A server running in a thread of this process; ``stop()`` shuts it down (the AsyncLLM stays up)."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(llm: AsyncFrontend, served_model_names: list[str], host: str = "127.0.0.1", port: int = 0,
                    api_key: str | None = None, timeout: float = 30.0) -> BackgroundServer:
    """Start a server on ``host`` (port 0: a free port, read back once bound); returns when it accepts."""
    app = build_app(llm, served_model_names, api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tokenleap-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError(f"the server did not start on {host}:{port} within {timeout} s")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return BackgroundServer(server, thread, host, bound)
