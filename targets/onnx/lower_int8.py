"""ONNX lowerings of the int8 row ops: quantize_rows, dequantize_rows, linear_w8a8.

Standard ops only, chosen so the integers equal the reference's exactly:

- row scale: ReduceMax(Abs(x)) / 127, with 1 where a row is all zero (the
  reference's `where`); same f32 division as numpy.
- codes: Div(x, scale) then QuantizeLinear with scale 1 and a scalar zero
  point. That is one op for round-half-to-even (as np.round) + saturate +
  cast; dividing by 1 is exact, and |x / scale| <= 127 + ulp so saturating
  never differs from the reference's clip to [-127, 127].
- linear_w8a8: onnxruntime 1.31's CPU MatMulInteger takes every u8/s8 pair,
  but s8 x s8 (and s8 x u8) fall off MLAS's fast kernels: on this AVX-512 VNNI
  host, a [1, 576] x [576, 1536] product took ~1.5-3 ms as s8s8 vs ~15-60 us
  as u8s8 and ~125 us as fp32 MatMul. So activations are stored as uint8 with
  zero point 128 (code + 128: the same integers, shifted) against int8
  weights, the layout MLAS (VNNI vpdpbusd, ARM dot products) is built for.
  The int8 weights are fed as uint8 with zero point 128 (u8 x u8): non-VNNI
  AVX2 kernels compute u8 x s8 pairs with vpmaddubsw, whose int16 sums
  saturate (onnxruntime's documented reason for reduce_range), which gave
  errors of 40% on an AVX2-only EPYC; u8 x u8 widens to int16 first and is
  exact there (its speed against u8 x s8 on VNNI hosts is not yet measured).
  DynamicQuantizeMatMul / MatMulIntegerToFloat take one activation scale per
  tensor (or per column), not per token, so they cannot express this op.
- The int32 product is Cast to f32 and multiplied by the token scale, then
  the channel scale, in the reference's order, so results match to rounding.

One activation quantization is emitted per input tensor and shared by every
linear_w8a8 reading it (q/k/v, gate/up), instead of relying on CSE.
"""
from __future__ import annotations

from edgec.ir import Node

from .lower_context import OnnxContext, lowering, onnx_dtype


def _row_scale(cx: OnnxContext, x: str, out: str | None = None) -> str:
    """f32 [..., 1]: max|x| / 127 over the last axis, 1 for all-zero rows."""
    m = cx.op("ReduceMax", cx.op("Abs", x), cx.ints([-1]), keepdims=1) if cx.opset >= 18 \
        else cx.op("ReduceMax", cx.op("Abs", x), axes=[-1], keepdims=1)
    s = cx.op("Div", m, cx.const(127.0, "float32"))
    zero = cx.op("Equal", s, cx.const(0.0, "float32"))
    return cx.op("Where", zero, cx.const(1.0, "float32"), s, out=out)


def _codes(cx: OnnxContext, x: str, scale: str, dtype: str, out: str | None = None) -> str:
    """round(x / scale) as int8, or + 128 as uint8 (saturating QuantizeLinear, scale 1)."""
    zp = cx.const(128 if dtype == "uint8" else 0, dtype)
    return cx.op("QuantizeLinear", cx.op("Div", x, scale), cx.const(1.0, "float32"), zp, out=out)


def _as_f32(cx: OnnxContext, name: str, dtype: str) -> str:
    return cx.cast(name, dtype, "float32")


@lowering("quantize_rows")
def _quantize_rows(cx: OnnxContext, n: Node) -> None:
    x = n.inputs[0]
    xf = _as_f32(cx, x.name, x.dtype)
    scale = _row_scale(cx, xf, out=n.outputs[1].name)
    _codes(cx, xf, scale, "int8", out=n.outputs[0].name)


@lowering("dequantize_rows")
def _dequantize_rows(cx: OnnxContext, n: Node) -> None:
    q, scale = n.inputs
    cx.op("Mul", cx.cast(q.name, q.dtype, "float32"), _as_f32(cx, scale.name, scale.dtype),
          out=n.output.name)


def _activation_u8(cx: OnnxContext, x) -> tuple[str, str]:
    """(uint8 codes + 128, f32 row scale) of x, emitted once per tensor."""
    cache = cx.state(_activation_u8)
    if x.name not in cache:
        xf = _as_f32(cx, x.name, x.dtype)
        scale = _row_scale(cx, xf)
        cache[x.name] = (_codes(cx, xf, scale, "uint8"), scale)
    return cache[x.name]


def _weight_kn(cx: OnnxContext, wq) -> str:
    """The int8 weight as [K, N] for MatMulInteger.

    Stored [N, K] like every IR linear weight; the Transpose of an initializer
    is constant-folded by onnxruntime at session load (and skipped if the
    planner already stored a transposed copy).
    """
    if wq.name in cx.transposed:
        return cx.transposed[wq.name]
    return cx.op("Transpose", wq.name, perm=[1, 0])


def _weight_u8(cx: OnnxContext, w: str) -> str:
    """int8 codes as uint8 with zero point 128 (constant-folded at session load): u8 x u8 runs
    MLAS's exact int16 kernels everywhere, where u8 x s8 saturates on AVX2 without VNNI."""
    wide = cx.op("Cast", w, to=onnx_dtype("int16"))
    return cx.op("Cast", cx.op("Add", wide, cx.const(128, "int16")), to=onnx_dtype("uint8"))


@lowering("linear_w8a8")
def _linear_w8a8(cx: OnnxContext, n: Node) -> None:
    x, wq, w_scale = n.inputs[:3]
    bias = n.inputs[3] if len(n.inputs) > 3 else None
    out = n.output
    xq, xs = _activation_u8(cx, x)
    acc = cx.op("MatMulInteger", xq, _weight_u8(cx, _weight_kn(cx, wq)), cx.const(128, "uint8"),
                cx.const(128, "uint8"))
    y = cx.op("Mul", cx.op("Cast", acc, to=onnx_dtype("float32")), xs)
    last = bias is None and out.dtype == "float32"
    y = cx.op("Mul", y, _as_f32(cx, w_scale.name, w_scale.dtype), out=out.name if last else None)
    if bias is not None:
        y = cx.op("Add", y, _as_f32(cx, bias.name, bias.dtype),
                  out=out.name if out.dtype == "float32" else None)
    if out.dtype != "float32":
        cx.cast(y, "float32", out.dtype, out=out.name)

