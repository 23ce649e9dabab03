"""A ``tokenleap serve`` subprocess for ``bench serve``: started on a free local port, waited for (``/health``),
and always stopped (SIGINT, then SIGKILL after a grace period)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux ``/proc``; NaN elsewhere or once gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def child_pids(pid: int) -> list[int]:
    """The direct children of a live process (Linux ``/proc``; empty elsewhere)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(serve_args) as base_url: ...``; ``serve_args`` are ``tokenleap serve``'s arguments
    without host / port."""

    def __init__(self, serve_args: list[str], startup_timeout_s: float = 600.0, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, free_port(host)
        self.argv = [sys.executable, "-m", "tokenleap.cli", "serve", *serve_args, "--host", host,
                     "--port", str(self.port), "--log-level", "warning"]
        self.timeout = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        log = tempfile.NamedTemporaryFile("w+b", prefix="tokenleap-serve-", suffix=".log", delete=False)
        self.log_path = Path(log.name)
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def __exit__(self, *exc) -> None:
        self.stop()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by the server's process and by its children together (the engine process,
        where it runs apart): differences over a run tell what each side spent on it."""
        assert self.proc is not None
        return {"server": process_cpu_seconds(self.proc.pid),
                "children": sum(process_cpu_seconds(c) for c in child_pids(self.proc.pid))}

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} before it was ready; "
                                   f"its output:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready within {self.timeout} s; its output:\n{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""

    def stop(self, grace_s: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
