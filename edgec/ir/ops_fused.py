"""Fused ops made by the FUSE phase (passes/fuse_*.py); backends map them to fused kernels.

- add_rms_norm(x, skip, w) -> (rms_norm(x + skip, w), x + skip): the residual
  add and the next norm in one pass over the row (ONNX Runtime's
  SkipSimplifiedLayerNormalization).
- rotary_cached(x, position_ids, cos_cache, sin_cache): rotate-half RoPE whose
  cos/sin come from per-position tables instead of being computed in the
  graph (ONNX Runtime's RotaryEmbedding; also what GroupQueryAttention's
  do_rotary takes).
- split(x, sizes, axis): one tensor into consecutive pieces (the outputs of a
  merged QKV or gate/up linear).
"""
from __future__ import annotations

import numpy as np

from . import shapes as S
from .ops import REQUIRED, _norm_axis, get_op, register


@register("add_rms_norm", arity=(3, 3), attrs={"eps": 1e-6})
def _add_rms_norm():
    """add_rms_norm(x, skip, w[D]) -> (normed, sum): sum = x + skip, normed = rms_norm(sum, w)."""

    def infer(ins, a):
        x, skip, w = ins
        if x.dtype != skip.dtype or [S.normalize(d) for d in x.shape] != [S.normalize(d) for d in skip.shape]:
            raise ValueError(f"add_rms_norm: x {x.dtype}{x.shape} vs skip {skip.dtype}{skip.shape}")
        if w.rank != 1 or S.normalize(w.shape[0]) != S.normalize(x.shape[-1]):
            raise ValueError(f"add_rms_norm: weight {w.shape} vs hidden size {x.shape[-1]}")
        return [(x.dtype, x.shape), (x.dtype, x.shape)]

    def ref(x, skip, w, eps):
        s = (x + skip).astype(x.dtype, copy=False)
        return get_op("rms_norm").ref(s, w, eps=eps), s

    return infer, ref


def gather_cos_sin(position_ids, cos_cache, sin_cache):
    """Full-width cos/sin [B, 1, S, R] for positions [B, S] from half-width tables [P, R/2]."""
    pos = np.asarray(position_ids)
    if pos.size and (pos.min() < 0 or pos.max() >= cos_cache.shape[0]):
        raise ValueError(f"rotary_cached: positions {pos.min()}..{pos.max()} outside the "
                         f"{cos_cache.shape[0]}-position table")
    c, s = np.asarray(cos_cache)[pos], np.asarray(sin_cache)[pos]
    return (np.concatenate([c, c], -1)[:, None], np.concatenate([s, s], -1)[:, None])


@register("rotary_cached", arity=(4, 4))
def _rotary_cached():
    """rotary_cached(x[B,H,S,D], position_ids[B,S], cos_cache, sin_cache[P,R/2]): rotary with table lookup.

    Same as rotary(x, cos, sin) where cos[b, 0, s] = concat(c, c) for
    c = cos_cache[position_ids[b, s]] (rotate-half RoPE repeats each frequency
    in both halves, so half-width tables are lossless).
    """

    def infer(ins, a):
        x, pos, cos, sin = ins
        if x.rank != 4 or pos.rank != 2 or pos.dtype not in ("int64", "int32"):
            raise ValueError(f"rotary_cached: x {x.shape}, position_ids {pos.dtype}{pos.shape}")
        if cos.rank != 2 or tuple(cos.shape) != tuple(sin.shape) or not isinstance(cos.shape[1], int) \
                or 2 * cos.shape[1] > x.shape[-1]:
            raise ValueError(f"rotary_cached: tables {cos.shape}/{sin.shape} vs head dim {x.shape[-1]}")
        return [(x.dtype, x.shape)]

    def ref(x, position_ids, cos_cache, sin_cache):
        cos, sin = gather_cos_sin(position_ids, cos_cache, sin_cache)
        return get_op("rotary").ref(x, cos.astype(x.dtype), sin.astype(x.dtype))

    return infer, ref


@register("split", arity=(1, 1), attrs={"sizes": REQUIRED, "axis": -1})
def _split():
    """split(x, sizes=[n0, n1, ...], axis) -> consecutive pieces of x along axis (static sizes)."""

    def infer(ins, a):
        x = ins[0]
        axis = _norm_axis(a["axis"], x.rank)
        sizes = [int(n) for n in a["sizes"]]
        if not sizes or min(sizes) <= 0 or not isinstance(x.shape[axis], int) or sum(sizes) != x.shape[axis]:
            raise ValueError(f"split: sizes {sizes} do not add up to dim {x.shape[axis]}")
        out = []
        for n in sizes:
            shape = list(x.shape)
            shape[axis] = n
            out.append((x.dtype, tuple(shape)))
        return out

    def ref(x, sizes, axis):
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))

    return infer, ref
