"""Keeps Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) able to run our kernels.

Triton 3.6's interpreter turns scalars (shape-(1,) arrays) into ints with ``int(array)``, which NumPy >= 2.4
refuses; loops with data-dependent bounds (``range(0, n, BLOCK)`` with a loaded ``n``) then fail. Importing this
module under the interpreter wraps its tensor patch to use the array's one element. Every kernel module with such
a loop imports it.
"""

from __future__ import annotations

import os


def _interpreter_numpy_compat() -> None:
    """Triton 3.6's interpreter turns scalars (shape-(1,) arrays) into ints with ``int(array)``, which
    NumPy >= 2.4 refuses; loops with data-dependent bounds then fail. Wrap its tensor patch to use
    ``.item()``. Only under ``TRITON_INTERPRET=1``; a no-op when the interpreter lacks the hook."""
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_tokenleap_compat", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._tokenleap_compat = True
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_numpy_compat()

