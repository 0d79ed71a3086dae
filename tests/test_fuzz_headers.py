"""Fuzz edgec.frontend.headers: for any bytes, a result that fits the file, or EdgecError.

Any other exception fails, and so do a hang (pytest-timeout) and an allocation much
larger than the file (tracemalloc). Where our reader accepts a file, safetensors.safe_open
or gguf.GGUFReader must accept it too and report the same tensors.

The default run is short: EDGEC_FUZZ_EXAMPLES (default 200) examples per test.
A long campaign:

    EDGEC_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_headers.py

(add --hypothesis-show-statistics to see how many inputs each test had accepted).
"""
import atexit
import functools
import json
import math
import os
import shutil
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from edgec.errors import EdgecError
from edgec.frontend.headers import (GGML_TYPES, SAFETENSORS_BITS, read_gguf_header,
                                    read_safetensors_header)
from header_files import (ALIGN, gguf_bytes, gguf_reference, gstr, kv, safetensors_reference, same_gguf,
                           sample_gguf, tinfo, u32, write_gguf)

EXAMPLES = int(os.environ.get("EDGEC_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=list(HealthCheck))
pytestmark = pytest.mark.timeout(60 + EXAMPLES // 10)  # a hang fails instead of blocking
MAX_MEMORY = 4 << 20  # peak allocation while reading, beyond 64 bytes per byte of file

SCRATCH = Path(tempfile.mkdtemp(prefix="edgec-fuzz-"))
atexit.register(shutil.rmtree, SCRATCH, True)


def check(read, raw: bytes, name: str):
    """Read raw as a file: EdgecError (returns None) or a result that fits in the file."""
    path = SCRATCH / name
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        result = read(path)
    except EdgecError as e:
        msg = str(e)
        assert "\n" not in msg and len(msg) < 500, msg
        note(msg)
        event("rejected")
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MAX_MEMORY + 64 * len(raw), f"reading {len(raw)} bytes took {peak} bytes"
    tensors = result if isinstance(result, list) else result.tensors
    event("accepted")
    end = 0
    for t in sorted(tensors, key=lambda t: (t.offset, t.nbytes)):
        assert end <= t.offset and t.nbytes >= 0 and t.offset + t.nbytes <= len(raw), t
        end = t.offset + t.nbytes
    return result


def check_safetensors(raw: bytes):
    entries = check(read_safetensors_header, raw, "fuzz.safetensors")
    if entries is not None:
        safetensors_reference(SCRATCH / "fuzz.safetensors", entries)
    return entries


def check_gguf(raw: bytes):
    header = check(read_gguf_header, raw, "fuzz.gguf")
    if header is not None and not any(k.startswith("GGUF.") for k in header.metadata):
        same_gguf(header, gguf_reference(SCRATCH / "fuzz.gguf"))  # GGUF.* clash with its own fields
    return header


# ----------------------------------------------------------------- base files

@functools.cache
def bases() -> dict[str, tuple[bytes, list[int]]]:
    """Valid files, each with the positions of its length, count, type and offset fields."""
    d = SCRATCH / "base"
    d.mkdir()
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.int8),
               "c": np.zeros((0,), np.float16)}, str(d / "b.safetensors"), metadata={"k": "v"})
    st_raw = (d / "b.safetensors").read_bytes()
    out = {"safetensors": (st_raw, [0] + [i for i, c in enumerate(st_raw) if 48 <= c <= 57 and i > 8])}
    for name, raw in [("gguf-writer", sample_gguf(d / "w.gguf").read_bytes()),
                      ("gguf-small", gguf_bytes([kv(ALIGN, 4, u32(64)), kv("s", 9, u32(8) + struct.pack("<Q", 2)
                                                                             + gstr("x") + gstr("yz"))],
                                                [tinfo("a", (64, 2), 2), tinfo("b", (4,), 0, 128)],
                                                bytes(192), alignment=64))]:
        (d / "x.gguf").write_bytes(raw)
        h = read_gguf_header(d / "x.gguf")
        fields = [4, 8, 16]
        for key in h.metadata:
            p = raw.find(gstr(key))
            fields += [p, p + 8 + len(key.encode()), p + 12 + len(key.encode()), p + 16 + len(key.encode())]
        for t in h.tensors:
            p = raw.find(gstr(t.name)) + 8 + len(t.name.encode())
            fields += [p - 8 - len(t.name.encode()), p] + [p + 4 + 8 * i for i in range(len(t.shape) + 2)]
        out[name] = (raw, sorted(set(fields)))
    return out


HUGE = [2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**32 - 1, 2**31, 100_000_001, (64 << 20) + 1, 1 << 40, 0, 1, 9]


@st.composite
def mutated(draw, kind: str) -> bytes:
    """A base file with 1-4 byte flips, truncations, insertions, deletions or length fields
    overwritten with huge values (often at the positions of real length fields)."""
    base, fields = bases()[kind]
    raw = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "u64", "u32"]))
        pos = draw(st.sampled_from(fields) | st.integers(0, max(len(raw) - 1, 0)))
        pos = min(pos, len(raw))
        if op == "flip" and pos < len(raw):
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and pos < len(raw):
            raw[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del raw[pos:pos + draw(st.integers(1, 16))]
        else:
            size = 8 if op == "u64" else 4
            value = draw(st.sampled_from(HUGE) | st.integers(0, 2**64 - 1)) % (1 << 8 * size)
            raw[pos:pos + size] = value.to_bytes(size, "little")
    return bytes(raw)


# ---------------------------------------------------------------- random bytes

@FUZZ
@given(raw=st.binary(max_size=2048))
def test_random_bytes(raw):
    check_safetensors(raw)
    check_gguf(raw)


@FUZZ
@given(version=st.sampled_from([2, 3]), counts=st.tuples(st.integers(0, 9), st.integers(0, 9)),
       rest=st.binary(max_size=2048))
def test_random_bytes_after_gguf_prefix(version, counts, rest):
    check_gguf(b"GGUF" + u32(version) + struct.pack("<QQ", *counts) + rest)


@FUZZ
@given(rest=st.binary(max_size=2048), data=st.data())
def test_random_bytes_after_safetensors_length(rest, data):
    n = data.draw(st.integers(0, len(rest)))
    check_safetensors(struct.pack("<Q", n) + b"{" + rest[1:])


# -------------------------------------------------------------- mutated files

@FUZZ
@given(raw=mutated("safetensors"))
def test_mutated_safetensors(raw):
    check_safetensors(raw)


@FUZZ
@given(raw=mutated("gguf-writer") | mutated("gguf-small"))
def test_mutated_gguf(raw):
    check_gguf(raw)


# ------------------------------------------------- structured, mostly valid files

JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=6)
                    | st.sampled_from(HUGE + [-1, 2**64, 10**30]) | st.integers(-5, 40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                max_size=3), max_leaves=8)


@st.composite
def safetensors_files(draw) -> bytes:
    """A header the library could have written, with at most a few fields made wrong."""
    header, pos = {}, 0
    for name in draw(st.lists(st.text(max_size=6), max_size=5, unique=True)):
        dtype = draw(st.sampled_from(sorted(SAFETENSORS_BITS)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = math.ceil(math.prod(shape) * SAFETENSORS_BITS[dtype] / 8)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3))
    for _ in range(draw(st.integers(0, 2))):
        if not header:
            break
        entry = header[draw(st.sampled_from(sorted(header)))]
        if isinstance(entry, dict) and "dtype" in entry:
            key = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
            if draw(st.booleans()):
                entry.pop(key, None)
            else:
                entry[key] = draw(JSON)
    items = draw(st.permutations(list(header.items())))
    text = json.dumps(dict(items)) + " " * draw(st.integers(0, 3))
    data = bytes(max(pos + draw(st.sampled_from([0, 0, 0, -1, 1, -8])), 0))
    return struct.pack("<Q", len(text.encode())) + text.encode() + data


@FUZZ
@given(raw=safetensors_files())
def test_structured_safetensors(raw):
    check_safetensors(raw)


@st.composite
def gguf_tables(draw) -> bytes:
    """A hand-built GGUF tensor table: mostly tensors laid out as a writer would, some
    with implausible names, dims, types or offsets."""
    alignment = draw(st.sampled_from([None, None, 1, 16, 32, 64, 48, 0]))
    align = alignment or 32
    kvs = []
    if alignment is not None:  # now and then as a uint64, which is wrong
        kvs = [kv(ALIGN, 10, struct.pack("<Q", alignment)) if draw(st.integers(0, 5)) == 0
               else kv(ALIGN, 4, u32(alignment))]
    tensors, pos = [], 0
    for i in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 4)):
            ggml_type = draw(st.sampled_from([0, 1, 2, 3, 8, 12, 30]))
            _, block, size = GGML_TYPES[ggml_type]
            dims = [block * draw(st.integers(1, 2))] + draw(st.lists(st.integers(1, 3), max_size=2))
            tensors.append(tinfo(f"t{i}", dims, ggml_type, pos))
            pos += -(-math.prod(dims) // block * size // align) * align
        else:
            dims = draw(st.lists(st.sampled_from([1, 2, 3, 32, 256, 0, 2**32, 2**63]), max_size=3))
            tensors.append(tinfo(draw(st.sampled_from(["t0", "t1", "x"])), dims,
                                 draw(st.sampled_from([0, 1, 2, 3, 8, 12, 30, 4, 99])),
                                 draw(st.integers(0, 16).map(lambda i: 16 * i) | st.sampled_from(HUGE))))
    data = bytes(max(pos + draw(st.sampled_from([0, 0, 0, -1, 1, -32, 64])), 0))
    return gguf_bytes(kvs, tensors, data, alignment=align)


@FUZZ
@given(raw=gguf_tables())
def test_structured_gguf(raw):
    check_gguf(raw)


V = GGUFValueType
SCALARS = {V.UINT8: st.integers(0, 2**8 - 1), V.INT8: st.integers(-2**7, 2**7 - 1),
           V.UINT16: st.integers(0, 2**16 - 1), V.INT16: st.integers(-2**15, 2**15 - 1),
           V.UINT32: st.integers(0, 2**32 - 1), V.INT32: st.integers(-2**31, 2**31 - 1),
           V.UINT64: st.integers(0, 2**64 - 1), V.INT64: st.integers(-2**63, 2**63 - 1),
           V.FLOAT32: st.floats(width=32), V.FLOAT64: st.floats(), V.BOOL: st.booleans(),
           V.STRING: st.text(st.characters(exclude_categories=["Cs"]), max_size=8)}
NUMPY = [np.float32, np.float16, np.float64, np.int8, np.int16, np.int32, np.int64]
QUANT = [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0,
         GGMLQuantizationType.Q6_K, GGMLQuantizationType.BF16]


@st.composite
def gguf_models(draw):
    """Metadata and tensors for gguf.GGUFWriter."""
    metadata = {}
    for key in draw(st.lists(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8),
                             max_size=6, unique=True)):
        vtype = draw(st.sampled_from(sorted(SCALARS)))
        if draw(st.booleans()):
            metadata["k." + key] = (draw(st.lists(SCALARS[vtype], min_size=1, max_size=5)), V.ARRAY, vtype)
        else:
            metadata["k." + key] = (draw(SCALARS[vtype]), vtype)
    tensors = {}
    for name in draw(st.lists(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8),
                              max_size=4, unique=True)):
        rows = draw(st.integers(1, 3))
        if draw(st.booleans()):
            shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
            tensors[name] = np.zeros(shape, draw(st.sampled_from(NUMPY)))
        else:
            q = draw(st.sampled_from(QUANT))
            _, _, size = GGML_TYPES[int(q)]
            tensors[name] = (np.zeros((rows, size * draw(st.integers(1, 2))), np.uint8), q)
    return metadata, tensors, draw(st.sampled_from([None, 1, 8, 64]))


@FUZZ
@given(model=gguf_models())
def test_writer_gguf_matches_reader(model):
    metadata, tensors, alignment = model
    path = write_gguf(SCRATCH / "w.gguf", metadata, tensors, alignment)
    mine, ref = read_gguf_header(path), gguf_reference(path)
    same_gguf(mine, ref)
    assert mine.metadata.keys() == ref.metadata.keys() == {"general.architecture", *metadata} | (
        {ALIGN} if alignment else set())
    for t in mine.tensors:
        if not isinstance(tensors[t.name], tuple):
            assert t.shape == tuple(reversed(tensors[t.name].shape))
