"""Bounded, validating readers for the headers of .safetensors and .gguf files.

safetensors, gguf-py and transformers trust the lengths and offsets a file declares,
so a truncated download or a hostile file ends in a Rust or numpy traceback, a huge
allocation, or a view past the end of the file. These readers check every declared
length against the file size *before* reading it, read nothing but the header, and
turn any problem into one EdgecError line that names the file and what is wrong.
"""
from __future__ import annotations

import json
import os
import reprlib
import stat
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from ..errors import EdgecError

TRUNCATED = "(truncated? re-download the model)"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header declares it; `offset` is absolute in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, object]
    tensors: list[TensorEntry]  # in file order; shape in GGUF order (ne[0], the row length, first)


# Values from a file go into messages through this, so a hostile name cannot make
# the "one line" a megabyte long or split it.
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = 8
_repr.maxlevel = 2
_show = _repr.repr


class _Fail:
    """Raises EdgecError prefixed with the file's name."""

    def __init__(self, path: Path):
        self.name = path.name or str(path)

    def __call__(self, msg: str) -> EdgecError:
        return EdgecError(f"{self.name}: {msg}")


@contextmanager
def _open(path: Path) -> Iterator[tuple[BinaryIO, int]]:
    """Open a regular file for reading; OS errors become EdgecError."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise EdgecError(f"{path} is not a regular file")
        with open(path, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
    except OSError as e:
        raise EdgecError(f"cannot read {path}: {e.strerror or e}") from None


def _is_u64(x: Any) -> bool:
    return type(x) is int and 0 <= x < 1 << 64  # type(): JSON true/false are not sizes


# ---------------------------------------------------------------- safetensors

SAFETENSORS_MAX_HEADER = 100_000_000  # the limit the safetensors library enforces
SAFETENSORS_MAX_RANK = 8
# Bits per element of every dtype safetensors 0.8 knows.
SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}


class _BadJson(Exception):
    pass


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: reject a key given twice (two tensors claiming one name) and
    strings with lone surrogate escapes, which the safetensors library refuses."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _BadJson(f"has the key {_show(k)} twice")
        for text in (k, v) if isinstance(v, str) else (k,):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise _BadJson(f"has a \\u escape that is not valid Unicode in {_show(text)}") from None
        out[k] = v
    return out


def _parse_int(text: str) -> int | float:
    """serde (safetensors) reads a negative number, even -0, as a float: so do we."""
    return float(text) if text.startswith("-") else int(text)


def read_safetensors_header(path: str | os.PathLike[str]) -> list[TensorEntry]:
    """The tensors of a .safetensors file, in data order, after checking that the
    header is well formed and the tensors tile the data section exactly (what the
    safetensors library requires, plus no duplicate keys and no extra fields)."""
    path = Path(path)
    fail = _Fail(path)
    with _open(path) as (f, size):
        if size < 8:
            raise fail(f"the file is {size} bytes, too short for the 8-byte safetensors header "
                       f"length {TRUNCATED}")
        n = int.from_bytes(f.read(8), "little")
        if n > SAFETENSORS_MAX_HEADER:
            raise fail(f"declares a {n}-byte JSON header, over the safetensors limit of "
                       f"{SAFETENSORS_MAX_HEADER} (corrupt or not a safetensors file)")
        if n > size - 8:
            raise fail(f"declares a {n}-byte JSON header but only {size - 8} bytes follow {TRUNCATED}")
        raw = f.read(n)
        if len(raw) != n:
            raise fail("the file shrank while it was read")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_strict_object, parse_int=_parse_int)
    except UnicodeDecodeError as e:
        raise fail(f"the JSON header is not UTF-8 (byte {8 + e.start})") from None
    except _BadJson as e:
        raise fail(f"the JSON header {e}") from None
    except json.JSONDecodeError as e:
        raise fail(f"the JSON header is not valid JSON ({e.msg} at byte {8 + e.pos})") from None
    except (ValueError, RecursionError):  # e.g. a 5000-digit number, or [[[[...]]]] nested too deep
        raise fail("the JSON header is not valid safetensors JSON (absurd number or nesting)") from None
    if not isinstance(header, dict):
        raise fail("the JSON header is not an object")

    data_size = size - 8 - n
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise fail("__metadata__ must map strings to strings")
            continue
        what = f"tensor {_show(key)}"
        if not isinstance(info, dict) or info.keys() != {"dtype", "shape", "data_offsets"}:
            raise fail(f"{what} must have exactly the fields dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_BITS:
            raise fail(f"{what} has unknown dtype {_show(dtype)}")
        if (not isinstance(shape, list) or len(shape) > SAFETENSORS_MAX_RANK
                or not all(_is_u64(d) for d in shape)):
            raise fail(f"{what} has shape {_show(shape)}; want a list of at most "
                       f"{SAFETENSORS_MAX_RANK} non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
            raise fail(f"{what} has data_offsets {_show(offsets)}; want [begin, end]")
        begin, end = offsets
        if begin > end:
            raise fail(f"{what} has data_offsets [{begin}, {end}]: begin is after end")
        if end > data_size:
            raise fail(f"{what} ends at byte {end} but the file has {data_size} data bytes {TRUNCATED}")
        numel = 1
        for d in shape:
            numel *= d  # at most 8 factors below 2**64: a Python int holds it
        bits = numel * SAFETENSORS_BITS[dtype]
        if bits % 8:
            raise fail(f"{what}: {numel} {dtype} values do not fill a whole number of bytes")
        if end - begin != bits // 8:
            raise fail(f"{what} has {end - begin} data bytes but shape {shape} of {dtype} "
                       f"needs {bits // 8}")
        entries.append(TensorEntry(key, dtype, tuple(shape), 8 + n + begin, end - begin))

    entries.sort(key=lambda e: (e.offset, e.nbytes, e.name))
    pos, prev = 8 + n, None
    for e in entries:
        if e.offset < pos:
            raise fail(f"tensor {_show(e.name)} overlaps tensor {_show(prev)} "
                       f"(starts at data byte {e.offset - 8 - n}, before {pos - 8 - n})")
        if e.offset > pos:
            raise fail(f"data bytes {pos - 8 - n}..{e.offset - 8 - n} before tensor {_show(e.name)} "
                       "belong to no tensor (corrupt header)")
        pos, prev = e.offset + e.nbytes, e.name
    if pos != size:
        raise fail(f"the tensors end at data byte {pos - 8 - n} but the file has {data_size} data "
                   "bytes (corrupt header, or not a safetensors file)")
    return entries


# ----------------------------------------------------------------------- GGUF

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
GGUF_MAX_TENSORS = 1_000_000
GGUF_MAX_KV = 100_000
GGUF_MAX_STRING = 64 << 20
GGUF_MAX_ARRAY_DEPTH = 4  # arrays of arrays; real files use none
# Array items in all the metadata: a Python list costs 8+ bytes an item however small the
# item is in the file. Real vocabularies (tokens, scores, types, merges) total under 1M.
GGUF_MAX_ARRAY_ITEMS = 1 << 23
GGUF_MAX_DIMS = 8  # ggml itself stops at 4
GGUF_MAX_ALIGNMENT = 1 << 20
GGUF_DEFAULT_ALIGNMENT = 32
_INT64_MAX = (1 << 63) - 1

# ggml type id -> (name, elements per block, bytes per block), as in ggml-common.h.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

# GGUF metadata value types: id -> struct code for the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MIN_SIZE = {**{t: struct.calcsize(c) for t, c in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}


class _Cursor:
    """Little-endian reads from a file that refuse to go past its end."""

    def __init__(self, f: BinaryIO, size: int, fail: _Fail):
        self.f, self.size, self.fail, self.pos = f, size, fail, 0
        self.items = 0  # array items read so far

    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise self.fail(f"the file ends ({self.size} bytes) inside {what} at byte {self.pos} "
                            f"{TRUNCATED}")
        b = self.f.read(n)
        if len(b) != n:
            raise self.fail("the file shrank while it was read")
        self.pos += n
        return b

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> bytes:
        (n,) = self.unpack("Q", what)
        if n > GGUF_MAX_STRING:
            raise self.fail(f"{what} at byte {self.pos - 8} declares a {n}-byte string, over the "
                            f"{GGUF_MAX_STRING >> 20} MiB limit (corrupt file)")
        if n > self.left():
            raise self.fail(f"{what} at byte {self.pos - 8} declares a {n}-byte string but only "
                            f"{self.left()} bytes remain {TRUNCATED}")
        return self.take(n, what)

    def text(self, what: str) -> str:
        """A key or tensor name: these must be real UTF-8."""
        raw = self.string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8: {_show(raw)}") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> object:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)[0]
        if vtype == _STRING:  # values are lenient: some converters write broken UTF-8 tokens
            return self.string(what).decode("utf-8", errors="replace")
        if vtype != _ARRAY:
            raise self.fail(f"{what} has unknown value type {vtype} (corrupt file)")
        if depth >= GGUF_MAX_ARRAY_DEPTH:
            raise self.fail(f"{what} nests arrays more than {GGUF_MAX_ARRAY_DEPTH} deep (corrupt file)")
        itype, n = self.unpack("IQ", what)
        if itype not in _MIN_SIZE:
            raise self.fail(f"{what} is an array of unknown value type {itype} (corrupt file)")
        if n > self.left() // _MIN_SIZE[itype]:
            raise self.fail(f"{what} declares {n} array items but only {self.left()} bytes remain "
                            f"{TRUNCATED}")
        self.items += n
        if self.items > GGUF_MAX_ARRAY_ITEMS:
            raise self.fail(f"{what} brings the metadata to {self.items} array items, over the "
                            f"limit of {GGUF_MAX_ARRAY_ITEMS} (corrupt file)")
        if itype in _SCALARS:  # one bounded read for the whole array
            return list(self.unpack(f"{n}{_SCALARS[itype]}", what))
        if itype == _STRING:
            return self.strings(n, what)
        return [self.value(itype, what, depth + 1) for _ in range(n)]

    def strings(self, n: int, what: str) -> list[str]:
        """n strings in a row, as string() would read them but in a tight loop,
        because the tokenizer's vocabulary and merges are most of a GGUF header."""
        read, out, left = self.f.read, [], self.left()
        for _ in range(n):
            raw = read(8) if left >= 8 else b""
            k = int.from_bytes(raw, "little")
            b = read(k) if len(raw) == 8 and k <= min(left - 8, GGUF_MAX_STRING) else None
            if b is None or len(b) != k:  # let string() say what is wrong
                self.pos = self.size - left
                self.f.seek(self.pos)
                self.string(what)
                raise self.fail("the file shrank while it was read")
            out.append(b.decode("utf-8", errors="replace"))
            left -= 8 + k
        self.pos = self.size - left
        return out


def read_gguf_header(path: str | os.PathLike[str]) -> GgufHeader:
    """The metadata and tensor table of a GGUF v2/v3 file (little-endian), after checking
    every count, length, type and offset against the file size and the format."""
    path = Path(path)
    fail = _Fail(path)
    with _open(path) as (f, size):
        cur = _Cursor(f, size, fail)
        magic = cur.take(4, "the GGUF magic")
        if magic != GGUF_MAGIC:
            raise fail(f"starts with {magic!r}, not {GGUF_MAGIC!r} (not a GGUF file)")
        (version,) = cur.unpack("I", "the GGUF version")
        if version not in GGUF_VERSIONS:
            hint = " (a big-endian file?)" if version >> 24 in GGUF_VERSIONS else ""
            raise fail(f"GGUF version {version}{hint} is not supported; edgec reads versions 2 and 3")
        n_tensors, n_kv = cur.unpack("QQ", "the tensor and metadata counts")
        if n_tensors > GGUF_MAX_TENSORS or n_kv > GGUF_MAX_KV:
            raise fail(f"declares {n_tensors} tensors and {n_kv} metadata entries, over the limits "
                       f"of {GGUF_MAX_TENSORS} and {GGUF_MAX_KV} (corrupt file)")
        if n_kv * 13 + n_tensors * 32 > cur.left():  # the smallest possible entries
            raise fail(f"declares {n_tensors} tensors and {n_kv} metadata entries but only "
                       f"{cur.left()} bytes follow {TRUNCATED}")

        metadata: dict[str, object] = {}
        for i in range(n_kv):
            key = cur.text(f"metadata key #{i}")
            what = f"metadata {_show(key)}"
            if key in metadata:
                raise fail(f"{what} appears twice")
            (vtype,) = cur.unpack("I", what)
            if key == "general.alignment" and vtype != _UINT32:
                raise fail(f"general.alignment has value type {vtype}; it must be a uint32")
            metadata[key] = cur.value(vtype, what)

        infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            name = cur.text(f"tensor name #{i}")
            what = f"tensor {_show(name)}"
            if name in names:
                raise fail(f"{what} appears twice")
            names.add(name)
            (n_dims,) = cur.unpack("I", what)
            if not 1 <= n_dims <= GGUF_MAX_DIMS:  # 0: gguf-py's reader crashes on quantized scalars
                raise fail(f"{what} has {n_dims} dimensions; want 1 to {GGUF_MAX_DIMS}")
            dims = cur.unpack(f"{n_dims}Q", what)
            ggml_type, offset = cur.unpack("IQ", what)
            infos.append((name, dims, ggml_type, offset))

    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    assert isinstance(alignment, int)
    if alignment == 0 or alignment & (alignment - 1) or alignment > GGUF_MAX_ALIGNMENT:
        raise fail(f"general.alignment is {alignment}; it must be a power of two up to "
                   f"{GGUF_MAX_ALIGNMENT}")
    data_start = -(-cur.pos // alignment) * alignment

    tensors = []
    for name, dims, ggml_type, offset in infos:
        what = f"tensor {_show(name)}"
        if ggml_type not in GGML_TYPES:
            raise fail(f"{what} has ggml type {ggml_type}, which edgec does not know "
                       "(an unsupported quantization, or a corrupt file)")
        type_name, block, block_bytes = GGML_TYPES[ggml_type]
        numel = 1
        for d in dims:
            numel *= d
            if d == 0 or numel > _INT64_MAX:
                raise fail(f"{what} has shape {list(dims)}: dimensions must be positive and their "
                           "product fit in int64 (corrupt file)")
        if dims[0] % block:
            raise fail(f"{what} has rows of {dims[0]} values, not a multiple of the "
                       f"{block}-value {type_name} block (corrupt file)")
        nbytes = numel // block * block_bytes
        if offset % alignment:
            raise fail(f"{what} has data offset {offset}, not a multiple of the alignment {alignment}")
        start = data_start + offset
        if start + nbytes > size:
            raise fail(f"{what} ends at byte {start + nbytes} but the file has {size} bytes {TRUNCATED}")
        tensors.append(TensorEntry(name, type_name, tuple(dims), start, nbytes))

    prev = None
    for t in sorted(tensors, key=lambda t: (t.offset, t.nbytes)):
        if prev is not None and t.offset < prev.offset + prev.nbytes:
            raise fail(f"tensor {_show(t.name)} (from byte {t.offset}) overlaps tensor "
                       f"{_show(prev.name)} (bytes {prev.offset}..{prev.offset + prev.nbytes})")
        prev = t
    return GgufHeader(version, metadata, tensors)
