"""Tensor-expression kernels for the IR ops that have no single Relax op.

Each function takes `te.Tensor`s (placeholders made by `BlockBuilder.emit_te`)
and returns the output tensor(s); Relax legalizes them into one PrimFunc
each, so these are the units the schedules see.

- `linear`: one reduction whose weight element is computed in place from the
  source format (plain, cast from fp16, or packed low-bit codes with group
  scales and zero points), so a quantized weight is never materialized:
  dequantization is fused into the matmul.
- `rotary`, `attention`: index arithmetic instead of slice/concat/repeat, so
  GQA reads each KV head in place and the causal mask is computed, not stored.
"""
from __future__ import annotations

from tvm import te, tirx

from edgec.ir.quant import PackedLayout, code_at


# ----------------------------------------------------------------------------- weights
def plain_weight(w):
    """Element (n, k) of a [N, K] weight, as float32."""
    return lambda n, k: w[n, k].astype("float32")


def packed_weight(packed, scales, zeros, layout: PackedLayout, mins=None):
    """Element (n, k) of edgec.ir.quant's format: (q - zero) * scale (+ min) per group along K.

    Rows are stored padded to whole groups (layout.kp), so the layout is read as is;
    where a code sits in its row is edgec.ir.quant.code_at.
    """
    bits, g, width = layout.bits, layout.group, layout.row_bytes
    mask = (1 << bits) - 1

    if 8 % bits == 0:  # 2, 4, 8 bits: a code never straddles a byte

        def code(n, k):
            at, shift = code_at(k, bits)
            byte = packed[n, at].astype("int32")
            return (byte >> shift.astype("int32")) & mask if bits < 8 else byte
    else:  # 3, 5, 6 bits: read the two bytes the code may straddle (little-endian bit stream)

        def code(n, k):
            lo, shift = code_at(k, bits)
            hi = tirx.min(lo + 1, width - 1)
            pair = packed[n, lo].astype("int32") | (packed[n, hi].astype("int32") << 8)
            return (pair >> shift.astype("int32")) & mask

    def elem(n, k):
        grp = k // g
        w = (code(n, k) - zeros[n, grp].astype("int32")).astype("float32") * scales[n, grp].astype("float32")
        return w if mins is None else w + mins[n, grp].astype("float32")  # float16 scales/minima widen exactly

    return elem


def linear(x, weight_elem, n_out: int, k_in: int, bias=None, name="linear"):
    """y[..., n] = sum_k x[..., k] * W(n, k) (+ bias[n]) in float32."""
    rk = te.reduce_axis((0, k_in), name="k")
    lead = list(x.shape[:-1])

    def body(*idx):
        return te.sum(x[(*idx[:-1], rk)].astype("float32") * weight_elem(idx[-1], rk), axis=rk)

    y = te.compute([*lead, n_out], body, name=name)
    if bias is None:
        return y
    return te.compute(y.shape, lambda *i: y[i] + bias[i[-1]].astype("float32"), name=name + "_bias")


def dequantize(packed, scales, zeros, mins=None, *, layout: PackedLayout):
    """Materialized dequantization (only where a dequantized weight feeds something other than linear)."""
    elem = packed_weight(packed, scales, zeros, layout, mins)
    return te.compute((packed.shape[0], layout.k), lambda n, j: elem(n, j), name="dequantize")


# ----------------------------------------------------------------------------- rotary
def rotary(x, cos, sin):
    """Rotate-half RoPE on the first R dims of the head: x*cos + rotate_half(x)*sin."""
    r = int(cos.shape[-1])
    h = r // 2
    d = int(x.shape[-1])

    def body(b, hd, s, i):
        c = cos[b if int(cos.shape[0]) > 1 else 0, 0, s, tirx.min(i, r - 1)]
        sn = sin[b if int(sin.shape[0]) > 1 else 0, 0, s, tirx.min(i, r - 1)]
        partner = tirx.if_then_else(i < h, -x[b, hd, s, tirx.min(i + h, d - 1)],
                                    x[b, hd, s, tirx.max(i - h, 0)])
        return tirx.if_then_else(i < r, x[b, hd, s, i] * c + partner * sn, x[b, hd, s, i])

    return te.compute(x.shape, body, name="rotary")


def rotary_cached(x, pos, cos_cache, sin_cache):
    """rotary with cos/sin looked up per position in half-width tables [P, R/2]."""
    half = int(cos_cache.shape[1])
    r = 2 * half
    d = int(x.shape[-1])

    def body(b, hd, s, i):
        p = pos[b, s]
        j = i % half
        partner = tirx.if_then_else(i < half, -x[b, hd, s, tirx.min(i + half, d - 1)],
                                    x[b, hd, s, tirx.max(i - half, 0)])
        rot = x[b, hd, s, i] * cos_cache[p, j].astype(x.dtype) + partner * sin_cache[p, j].astype(x.dtype)
        return tirx.if_then_else(i < r, rot, x[b, hd, s, i])

    return te.compute(x.shape, body, name="rotary_cached")


# ----------------------------------------------------------------------------- attention
def attention_mask(scores, scale: float, softcap: float, window: int, sinks=None):
    """Scale, soft-cap and causally mask grouped scores [B, KV, rep, S, T].

    Query i sits at position T - S + i and sees keys j <= T - S + i. With
    `sinks` ([KV, rep] float32: the sink logit of query head g*rep + r) the
    result has one more column, T, holding each row's sink: a softmax over
    T+1 columns then counts it in the denominator (attention sinks), and the
    caller drops that column before the value matmul.
    """
    s_len, t_len = scores.shape[3], scores.shape[4]
    neg_inf = tirx.const(float("-inf"), "float32")

    def body(b, g, r, i, j):
        s = scores[b, g, r, i, j].astype("float32") * tirx.const(scale, "float32")
        if softcap:
            cap = tirx.const(softcap, "float32")
            s = tirx.tanh(s / cap) * cap
        qpos = t_len - s_len + i
        ok = j <= qpos
        if window:
            ok = tirx.all(ok, j > qpos - window)
        return tirx.if_then_else(ok, s, neg_inf)

    if sinks is None:
        return te.compute(scores.shape, body, name="masked_scores")

    def with_sink(b, g, r, i, j):  # the key index clamped so that the reads stay inside `scores`
        return tirx.if_then_else(j < t_len, body(b, g, r, i, tirx.min(j, t_len - 1)), sinks[g, r])

    return te.compute((*scores.shape[:4], t_len + 1), with_sink, name="masked_scores")


# ----------------------------------------------------------------------------- int8 rows / W8A8
def quantize_rows(x):
    """Symmetric per-row int8 over the last axis: (q int8, scale f32 [..., 1])."""
    rd = te.reduce_axis((0, x.shape[-1]), name="d")
    amax = te.compute((*x.shape[:-1], 1), lambda *i: te.max(tirx.abs(x[(*i[:-1], rd)]), axis=rd),
                      name="amax")
    scale = te.compute(amax.shape, lambda *i: tirx.if_then_else(
        amax[i] == 0.0, tirx.const(1.0, "float32"), amax[i] / tirx.const(127.0, "float32")), name="scale")
    q = te.compute(x.shape, lambda *i: tirx.max(tirx.min(
        tirx.round(x[i] / scale[(*i[:-1], 0)]), 127.0), -127.0).astype("int8"), name="q")
    return q, scale


def dequantize_rows(q, scale):
    return te.compute(q.shape, lambda *i: q[i].astype("float32") * scale[(*i[:-1], 0)], name="deq_rows")


def linear_w8a8(xq, xs, wq, w_scale, bias=None):
    """int32 accumulation of int8 activations (per-row scale) and int8 weights (per-channel scale)."""
    n, k = int(wq.shape[0]), int(wq.shape[1])
    rk = te.reduce_axis((0, k), name="k")
    acc = te.compute((*xq.shape[:-1], n), lambda *i: te.sum(
        xq[(*i[:-1], rk)].astype("int32") * wq[i[-1], rk].astype("int32"), axis=rk), name="acc")

    def body(*i):
        y = acc[i].astype("float32") * xs[(*i[:-1], 0)] * w_scale[i[-1]]
        return y + bias[i[-1]] if bias is not None else y

    return te.compute(acc.shape, body, name="linear_w8a8")
