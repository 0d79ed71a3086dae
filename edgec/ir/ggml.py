"""ggml's quantized blocks (GGUF tensors) converted losslessly to edgec's packed format.

A GGUF that is already quantized (Q4_0, Q4_K, ...) should compile to the very
weights its author shipped, not to a re-quantization of their float values.
Every supported block type is a group-wise affine code, so it maps onto
edgec's format (edgec/ir/quant.py) without loss:

    w[n, k] = (q[n, k] - zero) * scale[n, k // g]  [+ min[n, k // g]]

with the scales and minima computed in float32 exactly as ggml's reference
dequantizers (gguf.quants) compute them, so `dequantize_ggml` equals
`gguf.quants.dequantize` bit for bit. Where a block stores its scale and minimum
as fp16 fields (Q4_0 .. Q8_0) they stay float16 in edgec's format too (widening
them is exact), so the import costs no more bytes than the file; the K-quants'
products d * sc are kept in float32. Codes are unscrambled from ggml's
in-block order: code k of row n is the weight w[n, k].

| type | bits | group | zero | scale      | min             |
|------|------|-------|------|------------|-----------------|
| Q4_0 | 4    | 32    | 8    | d          |                 |
| Q4_1 | 4    | 32    | 0    | d          | m               |
| Q5_0 | 5    | 32    | 16   | d          |                 |
| Q5_1 | 5    | 32    | 0    | d          | m               |
| Q8_0 | 8    | 32    | 128  | d          | (codes q + 128) |
| Q4_K | 4    | 32    | 0    | d * sc     | -(dmin * m)     |
| Q5_K | 5    | 32    | 0    | d * sc     | -(dmin * m)     |
| Q6_K | 6    | 16    | 32   | d * sc     | (sc is int8)    |

(ggml's K-quants subtract dmin * m; x - y equals x + (-y) in IEEE arithmetic,
so storing the negated minimum keeps the result bit-identical.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgecError
from . import quant

SUPPORTED = {
    "Q4_0": "4-bit, blocks of 32, symmetric (zero 8), fp16 scale",
    "Q4_1": "4-bit, blocks of 32, fp16 scale and fp16 minimum",
    "Q5_0": "5-bit, blocks of 32, symmetric (zero 16), fp16 scale",
    "Q5_1": "5-bit, blocks of 32, fp16 scale and fp16 minimum",
    "Q8_0": "8-bit, blocks of 32, symmetric, fp16 scale",
    "Q4_K": "4-bit super-blocks of 256: 8 groups of 32 with 6-bit scales and minima",
    "Q5_K": "5-bit super-blocks of 256: 8 groups of 32 with 6-bit scales and minima",
    "Q6_K": "6-bit super-blocks of 256: 16 groups of 16 with int8 scales, symmetric (zero 32)",
}

# ggml type name -> (elements per block, bytes per block), as in ggml-common.h.
_BLOCK = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}
_FP16_FIELDS = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}  # scale (and minimum) are the block's own fp16 fields
_FLOAT_TYPES = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}  # one value per "block"


@dataclass(frozen=True)
class Blocks:
    """One tensor in edgec's packed layout (see edgec/ir/quant.py)."""

    bits: int
    group: int
    packed: np.ndarray         # uint8 [N, K * bits / 8]
    scales: np.ndarray         # float16 (Q4_0 .. Q8_0: the file's fields) or float32 [N, K / group]
    zeros: np.ndarray          # uint8 [N, K / group]
    mins: np.ndarray | None    # like scales, or None


# ----------------------------------------------------------------------------- type names
def _name(ggml_type) -> str:
    """A ggml type (gguf.GGMLQuantizationType, its name or its integer id) -> its name."""
    name = getattr(ggml_type, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(ggml_type, str):
        return ggml_type.upper()
    if isinstance(ggml_type, (int, np.integer)):
        try:
            from gguf.constants import GGMLQuantizationType
            return GGMLQuantizationType(int(ggml_type)).name
        except (ImportError, ValueError):
            pass
        from ..frontend.headers import GGML_TYPES
        if int(ggml_type) in GGML_TYPES:
            return GGML_TYPES[int(ggml_type)][0]
    raise EdgecError(f"unknown ggml tensor type {ggml_type!r}")


def _block_size(name: str) -> int | None:
    """Elements per block of a ggml type name, or None if edgec does not know the type."""
    if name in _BLOCK:
        return _BLOCK[name][0]
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        return GGML_QUANT_SIZES[GGMLQuantizationType[name]][0]
    except (ImportError, KeyError):
        pass
    from ..frontend.headers import GGML_TYPES
    for type_name, block, _ in GGML_TYPES.values():
        if type_name == name:
            return block
    return None


def is_quantized(ggml_type) -> bool:
    """True for every ggml block type (supported or not), False for F32/F16/BF16 (and the integer types)."""
    name = _name(ggml_type)
    if name in _FLOAT_TYPES:
        return False
    block = _block_size(name)
    if block is None:
        raise EdgecError(f"unknown ggml tensor type {name}")
    return block > 1


def check_supported(ggml_type, tensor_name: str) -> None:
    """Raise a one-line EdgecError if the tensor is a ggml block type edgec cannot import as is.

    Float types pass: they are not blocks (the caller reads them as floats)."""
    name = _name(ggml_type)
    if name in SUPPORTED or not is_quantized(name):
        return
    raise EdgecError(f"GGUF tensor {tensor_name} is {name}, a block type edgec cannot import as is; "
                     f"supported: {', '.join(SUPPORTED)}; use a GGUF quantized with one of them")


# ----------------------------------------------------------------------------- decoding
def _f16(b: np.ndarray) -> np.ndarray:
    """uint8 [B, 2] little-endian fp16 fields -> float32 [B, 1]."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, run: int) -> np.ndarray:
    """uint8 [B, R] -> [B, 2R] codes: each run of `run` bytes holds elements i (low nibble)
    and i + run (high nibble) of a 2*run-element chunk (ggml's 4-bit order)."""
    b = qs.shape[0]
    q = qs.reshape(b, -1, 1, run)
    return np.concatenate([q & np.uint8(0x0F), q >> np.uint8(4)], axis=2).reshape(b, -1)


def _k_scale_min(sc12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and minima -> (sc, m) uint8 [B, 8] each."""
    s = sc12.reshape(-1, 3, 4)
    a, b, c = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([a & np.uint8(0x3F), (c & np.uint8(0x0F)) | ((a >> np.uint8(2)) & np.uint8(0x30))], axis=1)
    m = np.concatenate([b & np.uint8(0x3F), (c >> np.uint8(4)) | ((b >> np.uint8(2)) & np.uint8(0x30))], axis=1)
    return sc, m


def _q4_0(blk):
    return 4, 32, 8, _nibbles(blk[:, 2:], 16), _f16(blk[:, :2]), None


def _q4_1(blk):
    return 4, 32, 0, _nibbles(blk[:, 4:], 16), _f16(blk[:, :2]), _f16(blk[:, 2:4])


def _high_bits_32(qh4: np.ndarray) -> np.ndarray:
    """uint8 [B, 4] (a little-endian uint32, bit i = element i's fifth bit) -> uint8 [B, 32] shifted to bit 4."""
    return np.unpackbits(np.ascontiguousarray(qh4), axis=1, bitorder="little") << np.uint8(4)


def _q5_0(blk):
    return 5, 32, 16, _nibbles(blk[:, 6:], 16) | _high_bits_32(blk[:, 2:6]), _f16(blk[:, :2]), None


def _q5_1(blk):
    return 5, 32, 0, _nibbles(blk[:, 8:], 16) | _high_bits_32(blk[:, 4:8]), _f16(blk[:, :2]), _f16(blk[:, 2:4])


def _q8_0(blk):
    # int8 x as the unsigned code x + 128: flipping the sign bit of its two's complement byte
    return 8, 32, 128, blk[:, 2:] ^ np.uint8(0x80), _f16(blk[:, :2]), None


def _k_affine(blk, bits: int):
    d, dmin = _f16(blk[:, :2]), _f16(blk[:, 2:4])
    sc, m = _k_scale_min(blk[:, 4:16])
    scale = d * sc.astype(np.float32)             # as gguf: float32 d * float32 sc
    mins = -(dmin * m.astype(np.float32))         # gguf subtracts dmin * m
    if bits == 4:
        codes = _nibbles(blk[:, 16:], 32)
    else:
        qh = blk[:, 16:48]                        # bit j of qh[i]: element 32 j + i's fifth bit
        hi = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & np.uint8(1)
        codes = _nibbles(blk[:, 48:], 32) | (hi.reshape(blk.shape[0], -1) << np.uint8(4))
    return bits, 32, 0, codes, scale, mins


def _q4_k(blk):
    return _k_affine(blk, 4)


def _q5_k(blk):
    return _k_affine(blk, 5)


def _q6_k(blk):
    n = blk.shape[0]
    low = _nibbles(blk[:, :128], 64)                                # element 128 h + 64 t + i
    qh = blk[:, 128:192].reshape(n, 2, 1, 32)                       # element 128 h + 32 s + i: bits 2s
    hi = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
    codes = low | (hi.reshape(n, -1) << np.uint8(4))
    sc = np.ascontiguousarray(blk[:, 192:208]).view(np.int8).astype(np.float32)
    return 6, 16, 32, codes, _f16(blk[:, 208:210]) * sc, None


_DECODE = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
           "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def from_ggml(raw: np.ndarray, ggml_type, shape: tuple[int, int], name: str | None = None) -> Blocks:
    """A ggml quantized tensor -> edgec's packed layout, losslessly.

    raw: the tensor's bytes (uint8, flat or [N, row_bytes]); ggml_type: a
    gguf.GGMLQuantizationType or its name; shape: (N, K) in numpy order, K the
    contiguous axis (GGUF's ne[0]). `name` only labels error messages."""
    return _convert(raw, ggml_type, shape, name)[0]


def _convert(raw, ggml_type, shape, name=None) -> tuple[Blocks, np.ndarray]:
    """(the Blocks, their codes unpacked: uint8 [N, K])."""
    kind = _name(ggml_type)
    label = f"GGUF tensor {name}" if name else "GGUF tensor"
    check_supported(kind, name or "(unnamed)")
    if kind not in _DECODE:
        raise EdgecError(f"{label} is {kind}, which is not a quantized block type")
    if len(tuple(shape)) != 2:
        raise EdgecError(f"{label} ({kind}) has shape {tuple(shape)}; edgec imports 2-D block tensors only")
    n, k = (int(x) for x in shape)
    block, block_bytes = _BLOCK[kind]
    if n <= 0 or k <= 0 or k % block:
        raise EdgecError(f"{label} ({kind}) has rows of {k} values, not a positive multiple of its block "
                         f"size {block}; the file is damaged or not a ggml {kind} tensor")
    data = np.ascontiguousarray(raw)
    data = data.view(np.uint8).reshape(-1) if data.dtype != np.uint8 else data.reshape(-1)
    nb = k // block
    if data.size != n * nb * block_bytes:
        raise EdgecError(f"{label} ({kind}, shape {n}x{k}) has {data.size} bytes, expected "
                         f"{n * nb * block_bytes}; the file is damaged")
    bits, group, zero, codes, scales, mins = _DECODE[kind](data.reshape(n * nb, block_bytes))
    codes = codes.reshape(n, k)
    groups = k // group
    fdt = np.float16 if kind in _FP16_FIELDS else np.float32  # exact either way: the values came from fp16
    return Blocks(
        bits=bits,
        group=group,
        packed=codes if bits == 8 else quant.pack(codes, bits),
        scales=np.ascontiguousarray(scales, fdt).reshape(n, groups),
        zeros=np.full((n, groups), zero, np.uint8),
        mins=None if mins is None else np.ascontiguousarray(mins, fdt).reshape(n, groups),
    ), codes


def dequantize_ggml(raw: np.ndarray, ggml_type, shape: tuple[int, int]) -> np.ndarray:
    """float32 [N, K] through `from_ggml` and edgec's formula; equals gguf.quants.dequantize bit for bit."""
    b, codes = _convert(raw, ggml_type, shape)  # the codes unpack(b.packed) gives, without unpacking
    return quant.dequantize_codes(codes, b.scales, b.zeros, int(shape[1]), b.mins)
