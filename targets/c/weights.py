"""The C runtime's weights file: edgec.weight_plan's aligned blob behind a header page.

Layout (all little-endian; ec_rt.h's ec_weights_header / ec_weights_entry):
    magic "EDGECWT1", u32 version, u32 tensors, u64 header_bytes, u64 file_bytes, u64 checksum
    per tensor: u64 offset, u64 nbytes, u32 dtype, u32 name_len, name (padded to 8 bytes)
    ... zero padding to header_bytes (a multiple of 4096), then the tensors as weight_plan placed them
    (each 64-byte aligned: the runtime reads or maps the file whole, so page padding would only add bytes).
The checksum covers the data region, computed as ec_checksum in ec_rt.c does.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from edgec.weight_plan import DEFAULT_TIER, PAGE, StoredTensor, summary, write_blobs

FILE = "weights.bin"
MAGIC = b"EDGECWT1"
VERSION = 1
DTYPES = {"float32": 0, "float16": 1, "int64": 2, "int32": 3, "int8": 4, "uint8": 5, "bool": 6}
_HEADER = struct.Struct("<8sIIQQQ")
_ENTRY = struct.Struct("<QQII")


def _entry_bytes(name: str) -> int:
    return _ENTRY.size + (len(name.encode()) + 7) // 8 * 8


def checksum(path: Path, start: int, chunk_words: int = 1 << 22) -> int:
    """ec_checksum of path[start:]: sum of word_i * (2i + 1) mod 2**64, xor the length."""
    size = path.stat().st_size - start
    total = np.uint64(0)
    with open(path, "rb") as f:
        f.seek(start)
        i = 0
        while True:
            buf = f.read(chunk_words * 8)
            if not buf:
                break
            if len(buf) % 8:
                buf += b"\0" * (8 - len(buf) % 8)
            words = np.frombuffer(buf, "<u8")
            idx = np.arange(i, i + len(words), dtype=np.uint64)
            with np.errstate(over="ignore"):
                total = np.uint64(total + (words * (idx * np.uint64(2) + np.uint64(1))).sum(dtype=np.uint64))
            i += len(words)
    return int(total) ^ size


def write_weights(out_dir: Path, graph, names: list[str]) -> dict:
    """Write FILE with the named graph weights in table order; returns the manifest's weights summary."""
    header_bytes = _HEADER.size + sum(_entry_bytes(n) for n in names)
    header_bytes = (header_bytes + PAGE - 1) // PAGE * PAGE
    blank = np.zeros(header_bytes, np.uint8)
    header = StoredTensor("__header__", "uint8", (header_bytes,), header_bytes, lambda: iter([blank]))
    tensors = [StoredTensor.of_array(n, graph.weights[n]) for n in names]
    placed = write_blobs(out_dir, [header, *tensors], {DEFAULT_TIER: FILE}, page_align=False)  # read whole
    assert placed[0].offset == 0
    path = Path(out_dir) / FILE
    size = path.stat().st_size
    table = bytearray(_HEADER.pack(MAGIC, VERSION, len(names), header_bytes, size, checksum(path, header_bytes)))
    for p in placed[1:]:
        raw = p.name.encode()
        table += _ENTRY.pack(p.offset, p.nbytes, DTYPES[p.dtype], len(raw)) + raw + b"\0" * ((-len(raw)) % 8)
    with open(path, "r+b") as f:
        f.write(bytes(table))
    return summary(placed[1:])
