"""Quantized weight format: packed integers + scales + zero points, group-wise along K.

One format serves every weight-only method (RTN, GPTQ, AWQ) and every bit
width, so backends implement one thing:

    w[n, k] = (q[n, k] - zero[n, k // g]) * scale[n, k // g]  [+ min[n, k // g]]

- q are unsigned integers in [0, 2**bits - 1]; symmetric quantization uses
  the fixed zero point 2**(bits-1) (the convention of ONNX Runtime's
  MatMulNBits and of GPTQ checkpoints), asymmetric a per-group zero point.
- Each row of K values is packed as a little-endian bit stream: for 4 bits
  the low nibble holds the even element, for 8 bits one value per byte,
  for 3 bits 8 values in 3 bytes. Packed shape: [N, Kp * bits / 8].
- scale: float32 or float16 [N, Kp / g]; zero: uint8 [N, Kp / g] (one per byte,
  unpacked). float16 scales (QuantSpec.scale_dtype, ggml's choice) halve the
  scales' bytes (0.5 bit a weight at g32); the passes then choose each scale
  among float16 values, so the codes are optimal for the scale stored, and
  every backend widens them to float32 exactly before use.
- min: optional [N, Kp / g], float32 or float16, a per-group float offset added last. The
  quantization passes never make it; it keeps a source's blocks exact where
  the source has a float minimum (ggml's Q4_1, Q5_1, Q4_K, Q5_K; edgec/ir/ggml.py
  converts every imported ggml block type to this format).
- g = K means per output channel. When g does not divide K, the last group
  is padded: every row is stored as Kp = ceil(K / g) * g columns, the padding
  being zero weights (codes equal to the zero point), and dequantization
  returns the first K columns. Zeros never widen a group's range, so the
  padding changes no scale; it costs (Kp - K) codes per row. This is how
  group size 128 runs on SmolLM2 (K = 576 = 4.5 x 128), as in llama.cpp's
  and ONNX Runtime's block formats, whose last block is partial too.

This module is the one owner of the layout: the reference ops, the passes
and every backend take its shapes (`PackedLayout`), group rule
(`effective_group`) and bit order (`word`, `code_at`) from here, and the
per-row int8 format of activations and KV caches (`quantize_rows_int8`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import EdgecError

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)  # what the quantization passes make (5, 6: mixed-precision recipes)
STORED_BITS = SUPPORTED_BITS  # what the format holds (also the imported ggml blocks: 5 and 6 bits)
SCALE_DTYPES = {"fp32": "float32", "fp16": "float16"}  # the recipes' `scales` option -> stored dtype
_F16_TINY = np.float32(2.0 ** -24)  # the smallest positive float16 (a subnormal)


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 128  # 0 or -1: per output channel (g = K)
    symmetric: bool = True
    scale_dtype: str = "float32"  # how scales are stored: "float32" or "float16" (SCALE_DTYPES' values)

    def check(self, k: int, what: str = "weight") -> int:
        """Validate against a row length K; returns the effective group size."""
        if self.bits not in SUPPORTED_BITS:
            raise EdgecError(f"{self.bits}-bit quantization is not supported; use one of {SUPPORTED_BITS}")
        if self.group_size not in (0, -1) and self.group_size <= 0:
            raise EdgecError(f"group size must be > 0 (or 0 for per-channel), got {self.group_size}")
        g = effective_group(self.group_size, k)
        if (padded_k(k, g) * self.bits) % 8:
            raise EdgecError(f"{self.bits}-bit packing needs a multiple of {word(self.bits)[1]} values "
                             f"per row; {what} has K={k} with group size {g}: choose a group size that is "
                             f"a multiple of 8")
        return g

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1


def effective_group(group_size: int, k: int) -> int:
    """The group length a `group_size` means for rows of K values: 0 or -1 (per output channel)
    and a group longer than the row both mean the whole row."""
    return k if group_size in (0, -1) else min(group_size, k)


def padded_k(k: int, g: int) -> int:
    """Stored columns per row: K rounded up to whole groups of g."""
    return -(-k // g) * g


@dataclass(frozen=True)
class PackedLayout:
    """One quantized weight's layout: `bits` per code, groups of `group` along rows of `k` values.

    What the `dequantize` op's attributes mean; every backend derives its
    shapes from here (`kp` stored columns, `groups` scales per row,
    `row_bytes` packed bytes per row).
    """

    bits: int
    group: int  # effective group length, 1..k
    k: int

    @classmethod
    def of(cls, bits: int, group_size: int, k: int) -> "PackedLayout":
        return cls(int(bits), effective_group(group_size, k), int(k))

    @property
    def kp(self) -> int:
        return padded_k(self.k, self.group)

    @property
    def groups(self) -> int:
        return self.kp // self.group

    @property
    def row_bytes(self) -> int:
        return self.kp * self.bits // 8


# ----------------------------------------------------------------------------- bit order
def word(bits: int) -> tuple[int, int]:
    """(bytes, codes): the shortest run of whole bytes holding whole codes (4 bits: 1 byte, 2 codes;
    3 bits: 3 bytes, 8 codes). Read as a little-endian integer, code j of a word is
    (word >> bits*j) & (2**bits - 1): the row is one little-endian bit stream."""
    c = bits // math.gcd(bits, 8)
    return c, 8 * c // bits


def code_at(k, bits: int):
    """(byte, shift) of code k in its packed row: the code is (byte >> shift) & (2**bits - 1), plus
    the next byte's low bits when 8 % bits != 0 and it straddles two bytes. k may be an int, an
    array or a backend's symbolic index expression."""
    if 8 % bits == 0:
        per = 8 // bits
        return k // per, (k % per) * bits
    return (k * bits) // 8, (k * bits) % 8


def pad_columns(a: np.ndarray, kp: int, fill=0) -> np.ndarray:
    """a [N, K] widened to [N, kp] with `fill` (a scalar or an [N, 1] column)."""
    n, k = a.shape
    if k == kp:
        return a
    out = np.empty((n, kp), a.dtype)
    out[:, :k] = a
    out[:, k:] = fill
    return out


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """[N, K] unsigned ints (< 2**bits) -> uint8 [N, K*bits/8], little-endian bit stream per row."""
    q = np.asarray(q, dtype=np.uint8)
    n, k = q.shape
    if bits == 8:
        return q.copy()
    if bits == 4:
        return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    bitplanes = np.unpackbits(q[..., None], axis=-1, bitorder="little")[..., :bits]  # [N, K, bits]
    return np.packbits(bitplanes.reshape(n, k * bits), axis=-1, bitorder="little")


def unpack(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of pack: uint8 [N, K*bits/8] -> uint8 [N, K]."""
    packed = np.asarray(packed, dtype=np.uint8)
    n = packed.shape[0]
    if bits == 8:
        return packed.copy()
    if bits == 4:
        out = np.empty((n, k), np.uint8)
        out[:, 0::2] = packed & 0x0F
        out[:, 1::2] = packed >> 4
        return out
    stream = np.unpackbits(packed, axis=-1, bitorder="little")[:, : k * bits].reshape(n, k, bits)
    weights = (1 << np.arange(bits, dtype=np.uint8))
    return (stream * weights).sum(-1).astype(np.uint8)


def dequantize(packed, scales, zeros, bits: int, group_size: int, k: int, mins=None) -> np.ndarray:
    """The reference dequantization (float32 [N, K])."""
    codes = unpack(packed, bits, PackedLayout.of(bits, group_size, k).kp)
    return dequantize_codes(codes, scales, zeros, k, mins)


def dequantize_codes(codes: np.ndarray, scales, zeros, k: int, mins=None) -> np.ndarray:
    """Unpacked codes [N, Kp] -> float32 [N, K] (the first K columns of the padded row).

    In float32, in this order: (q - zero) * scale, then + min (what ggml's reference
    dequantizers compute, so imported blocks come out bit for bit)."""
    n, kp = codes.shape
    cols = np.asarray(scales).shape[1]
    q = codes.reshape(n, cols, kp // cols).astype(np.float32)
    z = np.asarray(zeros, np.float32)[..., None]
    s = np.asarray(scales, np.float32)[..., None]
    w = (q - z) * s
    if mins is not None:
        w = w + np.asarray(mins, np.float32)[..., None]
    return w.reshape(n, kp)[:, :k]


def group_params(w: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest scales and zero points for w [N, K]: ([N, Kp/g] f32, [N, Kp/g] u8)."""
    n, k = w.shape
    g = spec.check(k)
    wg = pad_columns(np.asarray(w, np.float32), padded_k(k, g)).reshape(n, -1, g)
    return params_from_range(wg.min(-1), wg.max(-1), spec)


def storable_scales(scale: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """float32 scales rounded to values spec.scale_dtype holds exactly (a no-op for float32).

    Rounding before the codes are chosen keeps them optimal for the scale that is
    stored. A scale that would underflow to 0 in float16 becomes the smallest
    float16 of its sign (its group's codes then all sit at the zero point); one
    beyond float16's range cannot be stored, and fails in one line."""
    scale = np.asarray(scale, np.float32)
    if spec.scale_dtype == "float32":
        return scale
    with np.errstate(over="ignore"):
        half = scale.astype(np.float16).astype(np.float32)
    if not np.isfinite(half).all():
        raise EdgecError(f"a group scale of {float(np.abs(scale).max()):.3g} is beyond float16's range (65504); "
                         f"quantize this model with scales = \"fp32\"")
    return np.where(half == 0, np.where(scale < 0, -_F16_TINY, _F16_TINY), half).astype(np.float32)


def params_from_range(lo: np.ndarray, hi: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point covering [lo, hi] (any shape), per the spec's symmetry."""
    if spec.symmetric:
        half = 1 << (spec.bits - 1)
        amax = np.maximum(np.abs(lo), np.abs(hi))
        scale = amax / (half - 1) if spec.bits > 2 else amax / half
        zero = np.full(scale.shape, half, np.uint8)
        return storable_scales(np.where(scale == 0, 1e-8, scale).astype(np.float32), spec), zero
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    scale = (hi - lo) / spec.qmax
    zero = np.clip(np.round(-lo / np.where(scale == 0, 1, scale)), 0, spec.qmax).astype(np.uint8)
    return storable_scales(np.where(scale == 0, 1e-8, scale).astype(np.float32), spec), zero


def search_range(wg: np.ndarray, spec: QuantSpec, importance: np.ndarray | None = None,
                 steps: int = 24, clip_min: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero points for groups wg [..., g] that minimize each group's squared rounding error.

    Round-to-nearest over a group's full range lets one outlier coarsen the
    grid for the other g-1 weights. This tries `steps` narrower ranges, down
    to clip_min x the full one (the outliers clipped; clip_min = 1: none),
    and keeps, per group, the one with the least error,
    each column weighted by `importance` [g] (e.g. the mean squared input
    from calibration; None = uniform), as llama.cpp's quantizers do. A
    symmetric grid may also give the largest-magnitude weight the extra
    negative code -2^(bits-1) (ggml's Q4_0 rule; the scale takes the sign
    that puts it there), so 16 levels are used where the plain rule uses 15.
    Full-range RTN is one of the candidates, so the error never grows.
    """
    wg = np.asarray(wg, np.float32)
    imp = np.ones(wg.shape[-1], np.float32) if importance is None else np.asarray(importance, np.float32)
    lo, hi = wg.min(-1), wg.max(-1)
    base_s, base_z = params_from_range(lo, hi, spec)
    if spec.symmetric:
        half = 1 << (spec.bits - 1)
        extreme = np.where(np.abs(lo) > np.abs(hi), lo, hi)
        cands = [(-extreme * c / half, base_z) for c in np.linspace(clip_min, 1.0, steps if clip_min < 1 else 1)]
    else:
        cands = [params_from_range(lo * c, hi * c, spec) for c in np.linspace(clip_min, 1.0, steps)
                 if c < 1]
    best_s, best_z = base_s, base_z

    def error(s, z):  # s has no zeros (params_from_range and the loop below replace them)
        zf = z.astype(np.float32)[..., None]
        q = np.clip(np.round(wg / s[..., None]) + zf, 0, spec.qmax)
        return (((q - zf) * s[..., None] - wg) ** 2 * imp).sum(-1)

    best_e = error(base_s, base_z)
    for s, z in cands:
        s = storable_scales(np.where(s == 0, 1e-8, s).astype(np.float32), spec)
        e = error(s, z)
        better = e < best_e
        best_e = np.where(better, e, best_e)
        best_s, best_z = np.where(better, s, best_s), np.where(better, z, best_z)
    return best_s.astype(np.float32), best_z.astype(np.uint8)


def search_params(w: np.ndarray, spec: QuantSpec, importance: np.ndarray | None = None, clip_min: float = 0.6
                  ) -> tuple[np.ndarray, np.ndarray]:
    """group_params with the error-minimizing range search of search_range; importance: [K] or None."""
    n, k = w.shape
    g = spec.check(k)
    kp = padded_k(k, g)
    wg = pad_columns(np.asarray(w, np.float32), kp).reshape(n, -1, g)
    imp = None if importance is None else pad_columns(np.asarray(importance, np.float32)[None], kp).reshape(-1, g)
    if imp is None:
        return search_range(wg, spec, clip_min=clip_min)
    out = [search_range(wg[:, j], spec, imp[j], clip_min=clip_min) for j in range(kp // g)]
    return np.stack([o[0] for o in out], 1), np.stack([o[1] for o in out], 1)


def quantize_with(w: np.ndarray, scales: np.ndarray, zeros: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Integer codes (uint8 [N, Kp], padding included) of w [N, K] for given group scales/zeros."""
    n, k = w.shape
    g = spec.check(k)
    wg = pad_columns(np.asarray(w, np.float32), padded_k(k, g)).reshape(n, -1, g)
    q = np.round(wg / scales[..., None]) + zeros[..., None].astype(np.float32)
    return np.clip(q, 0, spec.qmax).astype(np.uint8).reshape(n, -1)


def quantize_rtn(w: np.ndarray, spec: QuantSpec, search: bool = False, clip_min: float = 0.6):
    """Round-to-nearest: (packed, scales, zeros); search: the ranges of search_params."""
    scales, zeros = search_params(w, spec, clip_min=clip_min) if search else group_params(w, spec)
    q = quantize_with(w, scales, zeros, spec)
    return pack(q, spec.bits), scales, zeros


def fake_quantize(w: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """w after a quantize/dequantize round trip (float32), for error measurements."""
    packed, s, z = quantize_rtn(w, spec)
    k = w.shape[1]
    return dequantize(packed, s, z, spec.bits, spec.check(k), k)


# ----------------------------------------------------------------------------- int8 rows
def quantize_rows_int8(x):
    """Symmetric int8 per row (last axis): (q int8, scale f32 [..., 1]), scale = max|x| / 127."""
    scale = np.abs(x).max(-1, keepdims=True).astype(np.float32) / np.float32(127)
    scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
    q = np.clip(np.round(x / scale), -127, 127).astype(np.int8)
    return q, scale
