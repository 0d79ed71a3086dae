"""ONNX lowerings of the LLM ops: embedding, linear, norms, rotary, gated MLPs, attention.

Standard ops only: `rms_norm` is emitted in the shape onnxruntime fuses into
SimplifiedLayerNormalization, `attention` from MatMul/Softmax with a mask
computed at run time. The contrib-kernel forms (MatMulNBits,
GroupQueryAttention, SkipSimplifiedLayerNormalization, RotaryEmbedding) are
in lower_quant.py, lower_gqa.py and lower_fused.py, with these as fallbacks.
"""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from edgec.errors import UnsupportedModelError
from edgec.ir import Node

from .lower_context import INT64_MAX, OnnxContext, lowering, static
from .lower_generic import gelu, keep_above, silu


@lowering("embedding")
def _embedding(cx: OnnxContext, n: Node) -> None:
    table, ids = n.inputs
    idx = ids.name if ids.dtype in ("int32", "int64") else cx.cast(ids.name, ids.dtype, "int64")
    cx.op("Gather", table.name, idx, out=n.output.name, axis=0)


@lowering("linear")
def _linear(cx: OnnxContext, n: Node) -> None:
    x, w = n.inputs[:2]
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    out = n.output
    if w.name in cx.transposed:
        # The weight is stored [in, out]: a plain MatMul, no runtime Transpose.
        wt = cx.cast(cx.transposed[w.name], w.dtype, x.dtype)
        y = cx.op("MatMul", x.name, wt, out=None if bias is not None else out.name)
    elif w.kind == "weight":
        # Shared with a non-linear use (tied embeddings): keep one [out, in] copy and
        # let Gemm(transB) read it, instead of a second transposed copy on disk/in RAM.
        k = static(w.shape[1], "input feature count", n)
        wn = cx.cast(w.name, w.dtype, x.dtype)
        flat = cx.op("Reshape", x.name, cx.ints([-1, k]))
        y2 = cx.op("Gemm", flat, wn, transB=1)
        lead = cx.op("Shape", x.name, start=0, end=x.rank - 1)
        shape = cx.op("Concat", lead, cx.ints([w.shape[0]]), axis=0)
        y = cx.op("Reshape", y2, shape, out=None if bias is not None else out.name)
    else:
        # A computed weight (e.g. dequantized in-graph): onnxruntime folds the
        # Transpose into FusedMatMul(transB=1).
        wn = cx.cast(w.name, w.dtype, x.dtype)
        y = cx.op("MatMul", x.name, cx.op("Transpose", wn, perm=[1, 0]),
                  out=None if bias is not None else out.name)
    if bias is not None:
        cx.op("Add", y, cx.cast(bias.name, bias.dtype, x.dtype), out=out.name)


@lowering("layer_norm")
def _layer_norm(cx: OnnxContext, n: Node) -> None:
    x = n.inputs[0]
    w = n.inputs[1] if len(n.inputs) > 1 else None
    b = n.inputs[2] if len(n.inputs) > 2 else None
    if w is not None:
        scale = cx.cast(w.name, w.dtype, x.dtype)
    elif isinstance(x.shape[-1], int):
        scale = cx.const(np.ones(x.shape[-1]), x.dtype)
    else:
        one = numpy_helper.from_array(np.ones(1, x.dtype))
        scale = cx.op("ConstantOfShape", cx.op("Shape", x.name, start=-1), value=one)
    ins = [x.name, scale] + ([cx.cast(b.name, b.dtype, x.dtype)] if b is not None else [])
    cx.op("LayerNormalization", *ins, out=n.output.name, axis=-1, epsilon=float(n.attrs["eps"]))


@lowering("rms_norm")
def _rms_norm(cx: OnnxContext, n: Node) -> None:
    # Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul in fp32: the exact pattern
    # onnxruntime's SimplifiedLayerNormFusion turns into one fused kernel, while
    # staying standard ONNX (RMSNormalization itself only exists from opset 23).
    x, w = n.inputs
    xf = cx.cast(x.name, x.dtype, "float32")
    ms = cx.reduce_mean(cx.op("Pow", xf, cx.const(2.0, "float32")), [-1], True)
    rms = cx.op("Sqrt", cx.op("Add", ms, cx.const(n.attrs["eps"], "float32")))
    dst = cx.sink(n.output, "float32")
    cx.op("Mul", cx.op("Div", xf, rms), cx.cast(w.name, w.dtype, "float32"), out=dst)
    cx.land(dst, n.output, "float32")


@lowering("rotary")
def _rotary(cx: OnnxContext, n: Node) -> None:
    x, cos, sin = n.inputs
    r = static(cos.shape[-1], "rotary dim", n)
    dt, (xs, cs, ss) = cx.promote(x, cos, sin)
    full = x.shape[-1] == r
    xr = xs if full else cx.slice(xs, -1, 0, r)
    x1, x2 = cx.op("Split", xr, cx.ints([r // 2, r // 2]), n_out=2, axis=-1)
    rot = cx.op("Concat", cx.op("Neg", x2), x1, axis=-1)
    dst = cx.sink(n.output, dt)
    y = cx.op("Add", cx.op("Mul", xr, cs), cx.op("Mul", rot, ss), out=dst if full else None)
    if not full:
        cx.op("Concat", y, cx.slice(xs, -1, r, INT64_MAX), out=dst, axis=-1)
    cx.land(dst, n.output, dt)


@lowering("glu")
def _glu(cx: OnnxContext, n: Node) -> None:
    g, u = n.inputs
    act = n.attrs["act"]
    dt, (gs, us) = cx.promote(g, u)
    if act == "silu":
        a = silu(cx, gs)
    elif act == "relu":
        a = cx.op("Relu", gs)
    elif act in ("gelu", "gelu_tanh"):
        a = gelu(cx, gs, dt, "tanh" if act == "gelu_tanh" else "none")
    else:
        raise UnsupportedModelError(f"ONNX target: glu act={act!r}")
    if n.attrs.get("threshold", 0.0):
        a = keep_above(cx, a, dt, n.attrs["threshold"])
    dst = cx.sink(n.output, dt)
    cx.op("Mul", a, us, out=dst)
    cx.land(dst, n.output, dt)


@lowering("attention")
def _attention(cx: OnnxContext, n: Node) -> None:
    """Causal GQA attention from primitives, computed in fp32 like the reference.

    GQA never materialises repeated K/V: q is viewed as [B, KV, rep, S, D] and
    k, v as [B, KV, 1, T, D], so MatMul broadcasting shares each kv head with
    its `rep` query heads. The causal mask is built at run time from
    P = T - S (past length): query row i may see key j iff j <= P+i
    (and j > P+i-window with a sliding window). Attention sinks join each
    row's softmax as one more column (see _softmax_with_sinks).
    """
    q, k, v = n.inputs[:3]
    a = n.attrs
    heads = static(q.shape[1], "query head count", n)
    kv_heads = static(k.shape[1], "kv head count", n)
    rep = heads // kv_heads
    kn, vn = k.name, v.name
    if len(n.inputs) == 5:
        pk, pv = n.inputs[3:]
        kn = cx.op("Concat", pk.name, k.name, out=n.outputs[1].name, axis=2)
        vn = cx.op("Concat", pv.name, v.name, out=n.outputs[2].name, axis=2)
    f32 = "float32"
    qf, kf, vf = cx.cast(q.name, q.dtype, f32), cx.cast(kn, k.dtype, f32), cx.cast(vn, v.dtype, f32)
    if rep > 1:
        d = static(q.shape[3], "head dim", n)
        qf = cx.op("Reshape", qf, cx.ints([0, kv_heads, rep, -1, d]))
        kf = cx.op("Unsqueeze", kf, cx.ints([2]))
        vf = cx.op("Unsqueeze", vf, cx.ints([2]))
    rank = 5 if rep > 1 else 4
    k_t = cx.op("Transpose", kf, perm=list(range(rank - 2)) + [rank - 1, rank - 2])
    s = cx.op("Mul", cx.op("MatMul", qf, k_t), cx.const(a["scale"], f32))
    if a["softcap"]:
        cap = cx.const(a["softcap"], f32)
        s = cx.op("Mul", cx.op("Tanh", cx.op("Div", s, cap)), cap)

    # mask[i, j] over [S, T], broadcast against the scores
    t = cx.dim(kn, 2)
    qpos = cx.op("Range", cx.op("Sub", t, cx.dim(q.name, 2)), t, cx.const(1, "int64"))
    qpos = cx.op("Unsqueeze", qpos, cx.ints([1]))
    kpos = cx.op("Range", cx.const(0, "int64"), t, cx.const(1, "int64"))
    allowed = cx.op("LessOrEqual", kpos, qpos)
    if a["window"]:
        lo = cx.op("Sub", qpos, cx.const(int(a["window"]), "int64"))
        allowed = cx.op("And", allowed, cx.op("Greater", kpos, lo))
    s = cx.op("Where", allowed, s, cx.const(np.finfo(np.float32).min, f32))
    if a["sinks"]:
        p = _softmax_with_sinks(cx, s, a["sinks"], kv_heads, rep)
    else:
        p = cx.op("Softmax", s, axis=-1)
    o = cx.op("MatMul", p, vf)

    out = n.outputs[0]
    dst = cx.sink(out, f32)
    if rep > 1:  # [B, KV, rep, S, Dv] -> [B, S, KV, rep, Dv] -> [B, S, H, Dv]
        o = cx.op("Transpose", o, perm=[0, 3, 1, 2, 4])
        cx.op("Reshape", o, cx.ints([0, 0, heads, -1]), out=dst)
    else:  # [B, H, S, Dv] -> [B, S, H, Dv]
        cx.op("Transpose", o, out=dst, perm=[0, 2, 1, 3])
    cx.land(dst, out, f32)


def _softmax_with_sinks(cx: OnnxContext, s: str, sinks, kv_heads: int, rep: int) -> str:
    """Softmax over the last axis of the fp32 scores with each head's sink logit in the denominator.

    The sink is appended as a column (a [.., H, 1, 1] constant expanded to the
    rows of `s`), the row softmax taken over T+1 columns (one fused Softmax,
    max-subtracted with the sink included, as the reference), and the sink's
    column dropped: it weighs no value.
    """
    rank = 5 if rep > 1 else 4
    sink = np.asarray(sinks, np.float32).reshape([1, kv_heads, rep, 1, 1] if rep > 1 else [1, -1, 1, 1])
    rows = cx.op("Concat", cx.op("Shape", s, start=0, end=rank - 1), cx.ints([1]), axis=0)
    col = cx.op("Expand", cx.const(sink, "float32"), rows)
    p = cx.op("Softmax", cx.op("Concat", s, col, axis=-1), axis=-1)
    return cx.slice(p, rank - 1, 0, -1)
