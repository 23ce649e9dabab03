"""Read a GGUF file's metadata and tensor table, and view its tensor bytes, without copying them.

`gguf.GGUFReader` builds a numpy view per element of every metadata array: for a 49k-token vocabulary and its
merges that is ~3 s on a small CPU, paid before the first weight is read. The layout (llama.cpp's
gguf.md) is simple enough to read in one pass with `struct`:

    magic "GGUF", version u32 (2 or 3), tensor count u64, metadata count u64
    metadata:   key (string), value type u32, value           string = u64 length + utf-8 bytes
    tensors:    name (string), n_dims u32, dims u64 x n_dims (fastest first), ggml type u32, offset u64
    padding to `general.alignment` (32), then the data; a tensor's bytes start at data start + offset
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# metadata value types -> (struct format, numpy dtype) for the fixed-size ones
_SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # row-major, slowest first ([out, in] for a linear), as torch lists it
    tensor_type: int  # ggml type (gguf.GGMLQuantizationType)
    data: np.ndarray  # uint8 [rows, bytes per row], a read-only view of the file


class GGUFFile:
    """``metadata``: key -> str | int | float | bool | list; ``tensors``: in file order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._mv = memoryview(self._buf)
        self._pos = 0
        magic, version = self._unpack("<4sI")
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"{self.path} is not a GGUF v2/v3 file (magic={magic!r}, version={version})")
        n_tensors, n_kv = self._unpack("<QQ")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            (vtype,) = self._unpack("<I")
            self.metadata[key] = self._value(vtype)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            dims = self._unpack(f"<{n_dims}Q")
            ttype, offset = self._unpack("<IQ")
            infos.append((name, tuple(reversed(dims)), ttype, offset))
        align = int(self.metadata.get("general.alignment", 32))
        data_start = -(-self._pos // align) * align
        self.tensors = [self._tensor(name, shape, t, data_start + off) for name, shape, t, off in infos]

    def field(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def _unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self._mv, self._pos)
        self._pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (n,) = struct.unpack_from("<Q", self._mv, self._pos)
        start = self._pos + 8
        self._pos = start + n
        return bytes(self._mv[start : self._pos]).decode("utf-8")

    def _value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            item_type, count = self._unpack("<IQ")
            if item_type == _STRING:
                return [self._string() for _ in range(count)]
            if item_type == _ARRAY:
                return [self._value(_ARRAY) for _ in range(count)]
            fmt, dtype = _SCALARS[item_type]
            size = np.dtype(dtype).itemsize * count
            values = np.frombuffer(self._mv[self._pos : self._pos + size], dtype=np.dtype(dtype).newbyteorder("<"))
            self._pos += size
            return values.tolist()
        if vtype not in _SCALARS:
            raise ValueError(f"{self.path}: unknown GGUF metadata value type {vtype}")
        return self._unpack(_SCALARS[vtype][0])[0]

    def _tensor(self, name: str, shape: tuple[int, ...], ttype: int, start: int) -> GGUFTensor:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        row_bytes = shape[-1] // block * type_size
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        data = self._buf[start : start + rows * row_bytes].reshape(rows, row_bytes)
        return GGUFTensor(name, shape, ttype, data)
