"""Hand-built safetensors and GGUF files, and what the reference libraries read from them:
shared by the header tests (test_headers.py) and their fuzzing (test_fuzz_headers.py)."""
import json
import struct
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from safetensors import safe_open

from edgec.frontend.headers import GgufHeader, TensorEntry

ALIGN = "general.alignment"
NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL"}


# ---------------------------------------------------------------- references

def safetensors_reference(path: Path, entries: list[TensorEntry]) -> None:
    """Assert that safetensors.safe_open sees the same tensors, at the same bytes."""
    raw = Path(path).read_bytes()
    with safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(e.name for e in entries)
        for e in entries:
            sl = f.get_slice(e.name)
            assert (sl.get_dtype(), tuple(sl.get_shape())) == (e.dtype, e.shape), e
            if e.dtype in NUMPY_DTYPES:
                assert f.get_tensor(e.name).tobytes() == raw[e.offset:e.offset + e.nbytes], e


def gguf_reference(path: Path) -> GgufHeader:
    """What gguf.GGUFReader reports, as a GgufHeader (metadata it cannot decode is left out)."""
    r = GGUFReader(path)
    meta = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or field.types.count(GGUFValueType.ARRAY) > 1:
            continue  # its bookkeeping; nested arrays, which it flattens
        try:
            meta[key] = field.contents()
        except UnicodeDecodeError:
            continue
    tensors = [TensorEntry(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape),
                           int(t.data_offset), int(t.n_bytes)) for t in r.tensors]
    return GgufHeader(int(r.fields["GGUF.version"].contents()), meta, tensors)


def same_gguf(mine: GgufHeader, ref: GgufHeader) -> None:
    assert mine.version == ref.version
    assert mine.tensors == ref.tensors
    # json.dumps: NaN == NaN, and 1 != True
    assert {k: json.dumps(v) for k, v in mine.metadata.items() if k in ref.metadata} == \
        {k: json.dumps(v) for k, v in ref.metadata.items()}


# ------------------------------------------------------------------ builders

def write_raw_safetensors(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    h = header if isinstance(header, bytes) else (
        header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return path


def tensor(dtype="U8", shape=(1,), offsets=(0, 1)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def gstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def kv(key, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def tinfo(name, dims, ggml_type=0, offset=0, n_dims=None) -> bytes:
    return (gstr(name) + u32(len(dims) if n_dims is None else n_dims)
            + struct.pack(f"<{len(dims)}Q", *dims) + u32(ggml_type) + struct.pack("<Q", offset))


def gguf_bytes(kvs=(), tensors=(), data=b"", version=3, magic=b"GGUF",
               n_tensors=None, n_kv=None, alignment=32) -> bytes:
    """A GGUF file assembled by hand, so that any field can be wrong."""
    head = (magic + u32(version) + struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                                               len(kvs) if n_kv is None else n_kv)
            + b"".join(kvs) + b"".join(tensors))
    return head + b"\0" * (-len(head) % alignment) + data


def write_gguf(path: Path, metadata: dict, tensors: dict, alignment: int | None = None) -> Path:
    """A GGUF file written by gguf.GGUFWriter. metadata: key -> (value, GGUFValueType[, sub]);
    tensors: name -> array, or (uint8 byte array, GGMLQuantizationType)."""
    w = GGUFWriter(path, "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (value, vtype, *sub) in metadata.items():
        w.add_key_value(key, value, vtype, *sub)
    for name, t in tensors.items():
        if isinstance(t, tuple):
            w.add_tensor(name, t[0], raw_dtype=t[1])
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sample_gguf(path: Path, alignment: int | None = None) -> Path:
    Q = GGMLQuantizationType
    V = GGUFValueType
    return write_gguf(path, {
        "test.u8": (200, V.UINT8), "test.i8": (-5, V.INT8), "test.u16": (60000, V.UINT16),
        "test.i16": (-3000, V.INT16), "test.u32": (4_000_000_000, V.UINT32),
        "test.i32": (-2_000_000_000, V.INT32), "test.f32": (0.1, V.FLOAT32),
        "test.u64": (2**64 - 1, V.UINT64), "test.i64": (-(2**63), V.INT64),
        "test.f64": (1e300, V.FLOAT64), "test.bool": (True, V.BOOL), "test.str": ("héllo ✓", V.STRING),
        "test.ints": ([1, 2, 3], V.ARRAY, V.INT32), "test.floats": ([0.5, -1.0], V.ARRAY, V.FLOAT32),
        "test.strs": (["a", "", "ünï"], V.ARRAY), "test.bools": ([True, False], V.ARRAY),
    }, {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4), "f16": np.ones(5, np.float16),
        "f64": np.zeros((2, 1), np.float64), "i8": np.arange(7, dtype=np.int8),
        "i16": np.arange(3, dtype=np.int16), "i32": np.arange(3, dtype=np.int32),
        "i64": np.arange(2, dtype=np.int64),
        "q4_1": (np.arange(2 * 40, dtype=np.uint8).reshape(2, 40), Q.Q4_1),  # 2 rows of 64
        "q8_0": (np.zeros((1, 34), np.uint8), Q.Q8_0),
        "q4_k": (np.zeros((3, 144), np.uint8), Q.Q4_K),
        "bf16": (np.zeros((2, 8), np.uint8), Q.BF16),
    }, alignment)
