"""Starting the server: uvicorn over ``build_app``, in the foreground (``tokenleap serve``) or in a background
thread (tests, ``bench serve`` in-process)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn

from tokenleap.async_llm import AsyncLLM
from tokenleap.server.app import build_app


def serve(llm: AsyncLLM, served_model_names: list[str], host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), then stop the engine thread."""
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


def start_in_thread(llm: AsyncLLM, served_model_names: list[str], host: str = "127.0.0.1", port: int = 0,
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
