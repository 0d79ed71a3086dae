"""edgec/ir/ggml.py: ggml's quantized blocks convert to edgec's packed format bit for bit."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T  # noqa: E402

from edgec.errors import EdgecError  # noqa: E402
from edgec.ir import ggml, quant  # noqa: E402

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
QUANTIZABLE = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}  # gguf.quants can make these from floats
# byte offsets of each block's fp16 fields (d, and dmin / m where the type has one)
FP16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
               "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
# (bits, group, zero, has mins)
LAYOUT = {"Q4_0": (4, 32, 8, False), "Q4_1": (4, 32, 0, True), "Q5_0": (5, 32, 16, False),
          "Q5_1": (5, 32, 0, True), "Q8_0": (8, 32, 128, False), "Q4_K": (4, 32, 0, True),
          "Q5_K": (5, 32, 0, True), "Q6_K": (6, 16, 32, False)}
SHAPE = (6, 512)
f32 = np.float32


def _row_bytes(name: str, k: int) -> int:
    block, size = GGML_QUANT_SIZES[T[name]]
    return k // block * size


def _set_fp16(raw: np.ndarray, name: str, values: np.ndarray) -> np.ndarray:
    """raw [N, row_bytes] with every block's fp16 fields set to `values` (cycled)."""
    size = GGML_QUANT_SIZES[T[name]][1]
    blk = raw.reshape(-1, size).copy()
    for i, off in enumerate(FP16_FIELDS[name]):
        v = np.resize(np.asarray(values, np.float16), blk.shape[0] * (i + 1))[-blk.shape[0]:]
        blk[:, off:off + 2] = v.reshape(-1, 1).view(np.uint8)
    return blk.reshape(raw.shape)


def _random_bytes(name: str, rng, shape=SHAPE) -> np.ndarray:
    n, k = shape
    raw = rng.integers(0, 256, (n, _row_bytes(name, k)), dtype=np.uint8)
    blocks = raw.size // GGML_QUANT_SIZES[T[name]][1]
    return _set_fp16(raw, name, rng.standard_normal(blocks * 2).astype(np.float16))


def _deq(codes, scales, zeros, mins):
    """The edgec formula, locally: (q - zero) * scale, then + min, per group, in float32."""
    n, k = codes.shape
    groups = scales.shape[1]
    q = codes.reshape(n, groups, k // groups).astype(f32)
    w = (q - zeros.astype(f32)[..., None]) * scales.astype(f32)[..., None]
    if mins is not None:
        w = w + mins.astype(f32)[..., None]
    return w.reshape(n, k)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _check(name: str, raw: np.ndarray, shape=SHAPE) -> None:
    ref = quants.dequantize(raw, T[name])
    n, k = shape
    assert ref.shape == (n, k)
    b = ggml.from_ggml(raw, name, shape)
    codes = quant.unpack(b.packed, b.bits, k)
    assert _same_bits(_deq(codes, b.scales, b.zeros, b.mins), ref), name
    assert _same_bits(ggml.dequantize_ggml(raw, name, shape), ref), name
    if "mins" in inspect.signature(quant.dequantize).parameters:
        got = quant.dequantize(b.packed, b.scales, b.zeros, b.bits, b.group, k, mins=b.mins)
        assert _same_bits(got, ref), name


@pytest.mark.parametrize("name", TYPES)
def test_random_blocks_are_bit_exact(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    _check(name, _random_bytes(name, rng))
    if name in QUANTIZABLE:
        w = (rng.standard_normal(SHAPE) * rng.uniform(0.01, 3, (SHAPE[0], 1))).astype(f32)
        w[0, :40] += 5  # an asymmetric block
        _check(name, quants.quantize(w, T[name]))


@pytest.mark.parametrize("name", TYPES)
def test_edge_blocks_are_bit_exact(name):
    n, k = 2, 256
    zeros = np.zeros((n, _row_bytes(name, k)), np.uint8)
    _check(name, zeros, (n, k))                                            # all-zero blocks
    ones = np.full_like(zeros, 0xFF)
    _check(name, _set_fp16(ones, name, [1.0, -2.5, 65504.0, -65504.0, 6e-8]), (n, k))  # max codes
    _check(name, _set_fp16(zeros, name, [-1.0, 0.5, 65504.0, 6e-8]), (n, k))          # min codes
    rng = np.random.default_rng(1)
    raw = _random_bytes(name, rng, (n, k))
    _check(name, _set_fp16(raw, name, [-0.0, 0.0, 1e-3]), (n, k))          # zero and tiny scales


@pytest.mark.parametrize("name", TYPES)
def test_layout_shapes_and_dtypes(name):
    n, k = SHAPE
    bits, group, zero, has_mins = LAYOUT[name]
    raw = _random_bytes(name, np.random.default_rng(3))
    b = ggml.from_ggml(raw, T[name], SHAPE)              # the enum works as well as the name
    assert (b.bits, b.group) == (bits, group)
    assert b.packed.dtype == np.uint8 and b.packed.shape == (n, k * bits // 8)
    # the blocks' own fp16 fields stay float16 (no bytes added); K-quants' products d * sc need float32
    fdt = np.float32 if name.endswith("_K") else np.float16
    assert b.scales.dtype == fdt and b.scales.shape == (n, k // group)
    assert b.zeros.dtype == np.uint8 and b.zeros.shape == (n, k // group) and (b.zeros == zero).all()
    if has_mins:
        assert b.mins is not None and b.mins.dtype == fdt and b.mins.shape == (n, k // group)
    else:
        assert b.mins is None
    codes = quant.unpack(b.packed, bits, k)
    assert int(codes.max()) < (1 << bits)
    np.testing.assert_array_equal(quant.pack(codes, bits), b.packed)
    flat = ggml.from_ggml(raw.reshape(-1), name, SHAPE)  # flat bytes give the same blocks
    np.testing.assert_array_equal(flat.packed, b.packed)
    np.testing.assert_array_equal(flat.scales, b.scales)


def test_rows_are_independent():
    rng = np.random.default_rng(4)
    raw = _random_bytes("Q4_K", rng, (4, 512))
    whole = ggml.dequantize_ggml(raw, "Q4_K", (4, 512))
    for i in range(4):
        assert _same_bits(ggml.dequantize_ggml(raw[i:i + 1], "Q4_K", (1, 512)), whole[i:i + 1])


def test_code_order_is_weight_order():
    """Q4_0 stores elements j and j+16 in one byte; edgec's code k must be element k."""
    raw = np.zeros((1, 18), np.uint8)
    raw[0, :2] = np.array([1.0], np.float16).view(np.uint8)
    raw[0, 2:] = np.arange(16, dtype=np.uint8) | ((15 - np.arange(16, dtype=np.uint8)) << 4)
    b = ggml.from_ggml(raw, "Q4_0", (1, 32))
    want = np.concatenate([np.arange(16), 15 - np.arange(16)]).astype(np.uint8)
    np.testing.assert_array_equal(quant.unpack(b.packed, 4, 32)[0], want)


def test_supported_and_is_quantized():
    assert set(ggml.SUPPORTED) == set(TYPES)
    for name in TYPES + ["Q2_K", "Q3_K", "IQ2_XXS", "Q8_1", "IQ4_NL"]:
        assert ggml.is_quantized(name) and ggml.is_quantized(T[name])
    for name in ["F32", "F16", "BF16"]:
        assert not ggml.is_quantized(name) and not ggml.is_quantized(T[name])
    for name in TYPES + ["F32", "F16", "BF16"]:
        ggml.check_supported(T[name], "blk.0.attn_q.weight")  # no error


@pytest.mark.parametrize("name", ["IQ2_XXS", "Q2_K", "Q3_K"])
def test_unsupported_type_is_one_line(name):
    with pytest.raises(EdgecError) as e:
        ggml.check_supported(T[name], "blk.0.attn_q.weight")
    msg = str(e.value)
    assert "\n" not in msg
    assert "blk.0.attn_q.weight" in msg and name in msg
    assert all(t in msg for t in TYPES)
    with pytest.raises(EdgecError, match=name):
        ggml.from_ggml(np.zeros(GGML_QUANT_SIZES[T[name]][1], np.uint8), name, (1, 256))


@pytest.mark.parametrize("name,k", [("Q4_0", 48), ("Q8_0", 100), ("Q4_K", 128), ("Q6_K", 288)])
def test_k_not_multiple_of_block(name, k):
    with pytest.raises(EdgecError, match="multiple"):
        ggml.from_ggml(np.zeros(1024, np.uint8), name, (2, k))


def test_wrong_byte_count():
    raw = np.zeros((2, _row_bytes("Q4_1", 64)), np.uint8)
    with pytest.raises(EdgecError, match="bytes"):
        ggml.from_ggml(raw[:, :-1], "Q4_1", (2, 64))
