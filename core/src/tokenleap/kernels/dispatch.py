"""Pick the attention backend (and with it the layer ops): ``"triton"`` on CUDA when Triton is importable,
``"cpu"`` on a CPU running bfloat16 activations, else ``"torch"``.

Pure function of its arguments and the environment; no module state. ``TRITON_INTERPRET=1`` lets an
explicit ``prefer="triton"`` run the Triton kernels on CPU (tests only: the interpreter is slow).
"""

from __future__ import annotations

import importlib.util
import os

BACKENDS = ("auto", "torch", "triton", "cpu")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def attention_backend(device_type: str, prefer: str = "auto", activation_dtype: str = "float32") -> str:
    """``activation_dtype``: the model's resolved dtype name ("float32", "bfloat16", ...)."""
    if prefer not in BACKENDS:
        raise ValueError(f"unknown attention backend {prefer!r}; expected one of {', '.join(BACKENDS)}")
    if prefer == "torch":
        return "torch"
    if prefer == "cpu":
        if device_type != "cpu":
            raise ValueError(f"attention backend 'cpu' was requested but the device is {device_type!r}")
        if activation_dtype != "bfloat16":
            raise ValueError(f"attention backend 'cpu' runs bfloat16 activations (dtype='bfloat16' or a "
                             f"quantization); the model's dtype is {activation_dtype!r}")
        return "cpu"
    usable = triton_available() and (device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    if prefer == "triton":
        if not usable:
            why = f"device {device_type!r} is not CUDA" if triton_available() else "triton is not installed"
            raise ValueError(f"attention backend 'triton' was requested but {why}")
        return "triton"
    if usable and device_type == "cuda":
        return "triton"
    return "cpu" if device_type == "cpu" and activation_dtype == "bfloat16" else "torch"
