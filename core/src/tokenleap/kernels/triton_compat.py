"""Keeps Triton's interpreter (``TRITON_INTERPRET=1``, the CPU tests) able to run our kernels.

Two interpreter bugs, each patched only under the interpreter (compiled kernels are untouched):
- Triton 3.6 turns scalars (shape-(1,) arrays) into ints with ``int(array)``, which NumPy >= 2.4 refuses; loops
  with data-dependent bounds (``range(0, n, BLOCK)`` with a loaded ``n``) then fail. Its tensor patch is wrapped
  to use the array's one element.
- Triton 3.9 stores a scalar comparison (``tl.program_id(0) * 4 < n``) as int32, so a mask built from it
  (``rows_ok & (split < hi)``) reaches the masked load / store as int32, which its C++ helpers refuse ("mask has
  unsupported dtype"). A compiled kernel treats it as int1; the loads and stores are wrapped to do the same.
Every kernel module imports this module.
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


def _interpreter_bool_masks() -> None:
    """Masks of masked loads / stores as booleans (Triton 3.9's interpreter can hand them over as int32)."""
    import numpy as np
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    handle = getattr(interpreter, "TensorHandle", None)
    if builder is None or handle is None or getattr(builder.create_masked_load, "_tokenleap_compat", False):
        return
    load, store = builder.create_masked_load, builder.create_masked_store

    def as_bool(mask):
        if mask.data.dtype == np.bool_:
            return mask
        return handle(mask.data.astype(np.bool_), mask.dtype)

    def masked_load(self, ptrs, mask, other, *args, **kwargs):
        return load(self, ptrs, as_bool(mask), other, *args, **kwargs)

    def masked_store(self, ptrs, value, mask, *args, **kwargs):
        return store(self, ptrs, value, as_bool(mask), *args, **kwargs)

    masked_load._tokenleap_compat = masked_store._tokenleap_compat = True
    builder.create_masked_load, builder.create_masked_store = masked_load, masked_store


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_numpy_compat()
    _interpreter_bool_masks()

