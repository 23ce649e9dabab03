"""Pick the attention backend for a device: ``"triton"`` on CUDA when Triton is importable, else ``"torch"``.

Pure function of its arguments and the environment; no module state. ``TRITON_INTERPRET=1`` lets an
explicit ``prefer="triton"`` run the Triton kernels on CPU (tests only: the interpreter is slow).
"""

from __future__ import annotations

import importlib.util
import os

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def attention_backend(device_type: str, prefer: str = "auto") -> str:
    if prefer not in BACKENDS:
        raise ValueError(f"unknown attention backend {prefer!r}; expected one of {', '.join(BACKENDS)}")
    if prefer == "torch":
        return "torch"
    usable = triton_available() and (device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if prefer == "triton":
        if not usable:
            why = f"device {device_type!r} is not CUDA" if triton_available() else "triton is not installed"
            raise ValueError(f"attention backend 'triton' was requested but {why}")
        return "triton"
    return "triton" if usable and device_type == "cuda" else "torch"
