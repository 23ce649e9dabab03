"""Where the engine process's time goes while serving: one row per loop iteration (commands taken, the step,
sending its deltas), written as JSON lines to ``$TOKENLEAP_ENGINE_TRACE.<pid>`` when the process ends. Off
unless that variable is set; for diagnosis, not for users."""

from __future__ import annotations

import json
import os
import time
from typing import Any


class LoopTrace:
    def __init__(self, path: str | None) -> None:
        self.path = f"{path}.{os.getpid()}" if path else None
        self.rows: list[tuple] = []
        self.t = time.perf_counter()

    @classmethod
    def from_env(cls) -> LoopTrace:
        return cls(os.environ.get("TOKENLEAP_ENGINE_TRACE"))

    def mark(self) -> float:
        """Seconds since the last mark (0 when off)."""
        if self.path is None:
            return 0.0
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt

    def row(self, engine: Any, idle_s: float, commands_s: float, n_commands: int, step_s: float, deltas_s: float,
            send_s: float, n_deltas: int) -> None:
        if self.path is not None:
            sched = engine.scheduler
            self.rows.append((time.time(), idle_s, commands_s, n_commands, step_s, deltas_s, send_s, n_deltas,
                              len(sched.running), len(sched.waiting), engine.counters.generation_tokens))

    def write(self) -> None:
        if self.path is None or not self.rows:
            return
        keys = ("time", "idle_s", "commands_s", "n_commands", "step_s", "deltas_s", "send_s", "n_deltas", "running",
                "waiting", "generation_tokens")
        with open(self.path, "w") as f:
            for r in self.rows:
                f.write(json.dumps(dict(zip(keys, r))) + "\n")
