"""Marks for tests of Triton kernels in the interpreter: the module must set ``TRITON_INTERPRET=1`` before
anything imports triton (this module does not import it)."""

import importlib.util
import os

import pytest

HAVE_TRITON = importlib.util.find_spec("triton") is not None
TRITON_MARKS = (
    pytest.mark.triton,
    pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (CI installs it)"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1",
        reason="TRITON_INTERPRET was set to something other than 1 before this module",
    ),
)


def needs_triton(fn):
    for mark in TRITON_MARKS:
        fn = mark(fn)
    return fn
