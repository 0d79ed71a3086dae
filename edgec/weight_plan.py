"""One planner lays out every backend's weights: one aligned, mmap-able blob per memory tier.

A backend hands the planner the tensors it stores (IR weights, or forms its lowering derived
from them: transposed, packed), each with a tier; the planner writes them in order into the
tier's file, large tensors page-aligned (so a runtime can map them) and small ones 64-byte
aligned, and returns where each landed. The backend records those placements in its own files
(ONNX external-data references, tvm.json, ...); the manifest lists the blobs per tier
(`weights`), which is what hot/cold offloading splits: a "cold" tier can live in flash-mapped
storage while "default" is loaded into RAM.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .errors import ArtifactError

DEFAULT_TIER = "default"
PAGE = 4096
SMALL_ALIGN = 64


@dataclass
class StoredTensor:
    """A tensor to store: its bytes come from `chunks()` (C-order, little-endian pieces), so a
    memory-mapped or derived weight is streamed without a whole copy in memory."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: Callable[[], Iterator[np.ndarray]]
    tier: str = DEFAULT_TIER

    @classmethod
    def of_array(cls, name: str, array, tier: str = DEFAULT_TIER) -> "StoredTensor":
        a = np.asarray(array) if not isinstance(array, np.ndarray) else array

        def chunks():
            b = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
            yield np.ascontiguousarray(b)

        return cls(name, a.dtype.name, tuple(a.shape), int(a.nbytes), chunks, tier)


@dataclass(frozen=True)
class Placement:
    name: str
    dtype: str
    shape: tuple[int, ...]
    tier: str
    file: str
    offset: int
    nbytes: int

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "tier": self.tier,
                "file": self.file, "offset": self.offset, "nbytes": self.nbytes}


def write_blobs(out_dir: Path, tensors: Iterable[StoredTensor], files: dict[str, str],
                page_align: bool = True) -> list[Placement]:
    """Write each tier's tensors, in the given order, into files[tier]; returns the placements.

    Empty tensors get no bytes (offset 0, nbytes 0): a backend keeps those inline.
    page_align=False places every tensor 64-byte aligned, for a runtime that maps or reads the
    whole file at once (the C runtime): page padding would only add bytes (~0.7 MB on SmolLM2).
    """
    out_dir = Path(out_dir)
    handles = {tier: open(out_dir / name, "wb") for tier, name in files.items()}  # every tier's file exists
    placed = []
    try:
        for t in tensors:
            if t.tier not in files:
                raise ValueError(f"tensor {t.name!r} is placed in tier {t.tier!r}, which has no file "
                                 f"(tiers: {sorted(files)})")
            if t.nbytes == 0:
                placed.append(Placement(t.name, t.dtype, tuple(t.shape), t.tier, files[t.tier], 0, 0))
                continue
            f = handles[t.tier]
            align = PAGE if t.nbytes >= PAGE and page_align else SMALL_ALIGN
            if f.tell() % align:
                f.write(b"\0" * (align - f.tell() % align))
            offset = f.tell()
            for chunk in t.chunks():
                f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
            if f.tell() - offset != t.nbytes:
                raise ValueError(f"tensor {t.name!r}: wrote {f.tell() - offset} bytes, expected {t.nbytes}")
            placed.append(Placement(t.name, t.dtype, tuple(t.shape), t.tier, files[t.tier], offset, t.nbytes))
    finally:
        for f in handles.values():
            f.close()
    return placed


def summary(placed: list[Placement], prefix: str = "model/") -> dict:
    """The manifest's `weights` entry: per tier, its file, bytes and tensor count."""
    tiers: dict[str, dict] = {}
    for p in placed:
        t = tiers.setdefault(p.tier, {"file": prefix + p.file, "tensors": 0, "bytes": 0})
        t["tensors"] += 1
        t["bytes"] += p.nbytes
    return {"tiers": tiers}


def open_placed(files, placements: list[dict]) -> dict[str, np.ndarray]:
    """Read-only arrays over the blobs (memory-mapped from the verified files), checked against
    each file's size, so a wrong index cannot read outside the artifact."""
    maps: dict[str, np.memmap] = {}
    out = {}
    for entry in placements:
        try:
            name, dtype, shape = str(entry["name"]), np.dtype(entry["dtype"]), tuple(int(d) for d in entry["shape"])
            file, offset, nbytes = str(entry["file"]), int(entry["offset"]), int(entry["nbytes"])
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"a weight placement is malformed ({e}); rebuild the artifact") from None
        if nbytes != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) or offset < 0:
            raise ArtifactError(f"weight {name!r}: {nbytes} bytes do not hold {dtype.name}{list(shape)}; "
                                "rebuild the artifact")
        if nbytes == 0:
            out[name] = np.zeros(shape, dtype)
            continue
        if file not in maps:
            size = files.size(file)
            maps[file] = np.memmap(files.path(file), dtype=np.uint8, mode="r", shape=(size,)) if size else None
        blob = maps[file]
        if blob is None or offset + nbytes > blob.shape[0]:
            raise ArtifactError(f"weight {name!r} lies outside {file}; rebuild the artifact")
        out[name] = blob[offset:offset + nbytes].view(dtype).reshape(shape)
    return out
