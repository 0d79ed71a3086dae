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
- gqa(q, k, v, past_k, past_v, position_ids) and gqa_packed(qkv, past_k,
  past_v, position_ids, cos_cache, sin_cache): cached attention in the
  token-major layout of ONNX Runtime's GroupQueryAttention, made by the
  `gqa` pre-lowering pass (passes/gqa.py); gqa_packed also splits the packed
  QKV projection and rotates q and k itself.
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


_ATTN = {"scale": REQUIRED, "softcap": 0.0, "window": 0, "sinks": ()}


def _gqa_dims(width, past_k, what: str) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) of a token-major attention whose query part is `width` wide."""
    kv, d = past_k.shape[1], past_k.shape[3]
    if not all(isinstance(x, int) for x in (width, kv, d)) or width % d:
        raise ValueError(f"{what}: width {width} vs past {past_k.shape}")
    return width // d, kv, d


def _gqa_outputs(q, s_len, heads, kv, d, past_k, past_v):
    total = S.dim_add(past_k.shape[2], s_len)
    return [(q.dtype, (1, s_len, heads * d)), (past_k.dtype, (1, kv, total, d)), (past_v.dtype, (1, kv, total, d))]


def _check_gqa(ins, pos, what):
    if len({v.dtype for v in ins}) != 1 or pos.rank != 2 or pos.dtype not in ("int64", "int32"):
        raise ValueError(f"{what}: dtypes {[v.dtype for v in ins]}, position_ids {pos.dtype}{pos.shape}")
    if any(v.shape[0] != 1 for v in ins):
        raise ValueError(f"{what}: batch must be 1")


def _heads(x, n: int, d: int):
    """[1, S, n*D] -> [1, n, S, D]"""
    return x.reshape(x.shape[0], x.shape[1], n, d).transpose(0, 2, 1, 3)


def _attend(q, k, v, past_k, past_v, heads, kv, d, a):
    out, pk, pv = get_op("attention").ref(q, k, v, past_k, past_v, **a)
    return out.reshape(out.shape[0], out.shape[1], heads * d), pk, pv


@register("gqa", arity=(6, 6), attrs=_ATTN)
def _gqa():
    """gqa(q[1,S,H*D], k, v[1,S,KV*D], past_k, past_v[1,KV,P,D], position_ids[1,S]) -> (out[1,S,H*D], present_k, present_v).

    `attention` with q/k/v and its output token-major ([1, S, heads*D]), the
    cache as in `attention`. position_ids are the absolute positions P..P+S-1
    (the runtime's contract): GroupQueryAttention reads the cache length from
    them, the reference from past_k.
    """

    def infer(ins, a):
        q, k, v, pk, pv, pos = ins
        _check_gqa(ins[:5], pos, "gqa")
        heads, kv, d = _gqa_dims(q.shape[2], pk, "gqa")
        if k.shape[2] != kv * d or v.shape[2] != kv * d or tuple(pk.shape) != tuple(pv.shape):
            raise ValueError(f"gqa: k {k.shape}, v {v.shape}, past {pk.shape}/{pv.shape}")
        return _gqa_outputs(q, q.shape[1], heads, kv, d, pk, pv)

    def ref(q, k, v, past_k, past_v, position_ids, **a):
        kv, d = past_k.shape[1], past_k.shape[3]
        heads = q.shape[2] // d
        return _attend(_heads(q, heads, d), _heads(k, kv, d), _heads(v, kv, d), past_k, past_v, heads, kv, d, a)

    return infer, ref


@register("gqa_packed", arity=(6, 6), attrs=_ATTN)
def _gqa_packed():
    """gqa_packed(qkv[1,S,(H+2KV)*D], past_k, past_v, position_ids, cos_cache, sin_cache[P,D/2]) -> as gqa.

    gqa on the pieces q, k, v of one packed QKV projection, with q and k
    rotated as rotary_cached(., position_ids, cos_cache, sin_cache) does
    (full head width).
    """

    def infer(ins, a):
        qkv, pk, pv, pos, cos, sin = ins
        _check_gqa([qkv, pk, pv], pos, "gqa_packed")
        width, kv, d = _gqa_dims(qkv.shape[2], pk, "gqa_packed")
        heads = width - 2 * kv
        if heads <= 0 or tuple(pk.shape) != tuple(pv.shape) or cos.rank != 2 \
                or tuple(cos.shape) != tuple(sin.shape) or 2 * cos.shape[1] != d:
            raise ValueError(f"gqa_packed: qkv {qkv.shape}, past {pk.shape}/{pv.shape}, tables {cos.shape}/{sin.shape}")
        return _gqa_outputs(qkv, qkv.shape[1], heads, kv, d, pk, pv)

    def ref(qkv, past_k, past_v, position_ids, cos_cache, sin_cache, **a):
        kv, d = past_k.shape[1], past_k.shape[3]
        heads = qkv.shape[2] // d - 2 * kv
        q, k, v = np.split(qkv, [heads * d, (heads + kv) * d], axis=-1)
        rot = get_op("rotary_cached").ref
        q = rot(_heads(q, heads, d), position_ids, cos_cache, sin_cache)
        k = rot(_heads(k, kv, d), position_ids, cos_cache, sin_cache)
        return _attend(q, k, _heads(v, kv, d), past_k, past_v, heads, kv, d, a)

    return infer, ref
