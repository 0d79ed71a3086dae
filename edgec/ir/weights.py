"""WeightStore: the graph's constants, by name, lazy and mmap-backed.

In memory a weight is a numpy array. Saved, the store is one standard
safetensors file (readable by the safetensors library); opened again, every
tensor is an `np.memmap` view into that file, so a multi-gigabyte model costs
no RAM until a pass or backend touches it. The header is padded so the data
starts 64-byte aligned and tensors are laid out widest dtype first, so every
tensor is aligned to its element size without gaps (safetensors allows none).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

_ST_DTYPES = {"F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32",
              "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_ST_CODES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass(frozen=True)
class WeightInfo:
    dtype: str
    shape: tuple

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize


class WeightStore:
    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def __setitem__(self, name: str, array) -> None:
        arr = np.asarray(array)
        if arr.dtype.name not in _ST_CODES:
            raise TypeError(f"weight {name!r}: unsupported dtype {arr.dtype}")
        self._arrays[name] = arr

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def pop(self, name: str) -> None:
        self._arrays.pop(name, None)

    def info(self, name: str) -> WeightInfo:
        a = self._arrays[name]
        return WeightInfo(a.dtype.name, tuple(a.shape))

    def total_bytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    # -- persistence (safetensors layout, written and memory-mapped here) ------
    def save(self, path: str | Path) -> None:
        order = sorted(self._arrays, key=lambda k: -self._arrays[k].dtype.itemsize)
        offsets, offset = {}, 0
        for name in order:
            offsets[name] = [offset, offset + self._arrays[name].nbytes]
            offset += self._arrays[name].nbytes
        header = {name: {"dtype": _ST_CODES[a.dtype.name], "shape": list(a.shape),
                         "data_offsets": offsets[name]} for name, a in self._arrays.items()}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-(len(blob) + 8) % 64)  # 64-byte aligned data section
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name in order:
                f.write(np.ascontiguousarray(self._arrays[name]).tobytes())

    @classmethod
    def open(cls, path: str | Path) -> "WeightStore":
        path = Path(path)
        store = cls()
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        base = 8 + n
        size = path.stat().st_size
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            if base + end > size:
                raise ValueError(f"{path.name} is truncated (tensor {name!r})")
            dtype = np.dtype(_ST_DTYPES[entry["dtype"]])
            shape = tuple(entry["shape"])
            if end == start:
                store._arrays[name] = np.zeros(shape, dtype)
            else:
                store._arrays[name] = np.memmap(path, dtype=dtype, mode="r",
                                                offset=base + start, shape=shape)
        return store
