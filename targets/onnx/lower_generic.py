"""ONNX lowerings of the generic IR ops: elementwise math, reductions, casts and shape ops.

Standard default-domain ops only, so the model runs on any ONNX runtime;
onnxruntime's graph optimizer fuses the decompositions back (Gelu,
MatMul+scale -> FusedMatMul, ...).
"""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from edgec.errors import UnsupportedModelError
from edgec.ir import Node

from .lower_context import INT64_MAX, OnnxContext, lowering


def _direct(onnx_op: str):
    """IR ops that are exactly one ONNX op with the same inputs."""

    def fn(cx: OnnxContext, n: Node) -> None:
        cx.op(onnx_op, *[v.name for v in n.inputs], out=n.output.name)

    fn.__name__ = f"_lower_{onnx_op}"
    return fn


for _ir, _onnx in {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow",
                   "maximum": "Max", "neg": "Neg", "sqrt": "Sqrt", "exp": "Exp", "tanh": "Tanh",
                   "sin": "Sin", "cos": "Cos", "relu": "Relu", "sigmoid": "Sigmoid",
                   "matmul": "MatMul"}.items():
    lowering(_ir)(_direct(_onnx))


@lowering("const")
def _const(cx: OnnxContext, n: Node) -> None:
    arr = np.asarray(n.attrs["value"], dtype=n.attrs["dtype"])
    cx.op("Constant", out=n.output.name, value=numpy_helper.from_array(arr, n.output.name))


@lowering("rsqrt")
def _rsqrt(cx: OnnxContext, n: Node) -> None:
    cx.op("Reciprocal", cx.op("Sqrt", n.inputs[0].name), out=n.output.name)


def silu(cx: OnnxContext, x: str, out: str | None = None) -> str:
    return cx.op("Mul", x, cx.op("Sigmoid", x), out=out)


def gelu(cx: OnnxContext, x: str, dtype: str, approximate: str, out: str | None = None) -> str:
    if approximate not in ("none", "tanh"):
        raise UnsupportedModelError(f"ONNX target: gelu approximate={approximate!r}")
    if cx.opset >= 20:
        return cx.op("Gelu", x, out=out, approximate=approximate)
    # Primitive forms that onnxruntime's GeluFusion / FastGeluFusion recognise.
    c = lambda v: cx.const(v, dtype)  # noqa: E731
    if approximate == "tanh":
        inner = cx.op("Mul", x, cx.op("Mul", x, x))
        inner = cx.op("Add", x, cx.op("Mul", inner, c(0.044715)))
        t = cx.op("Tanh", cx.op("Mul", inner, c(np.sqrt(2.0 / np.pi))))
    else:
        t = cx.op("Erf", cx.op("Div", x, c(np.sqrt(2.0))))
    return cx.op("Mul", cx.op("Mul", x, c(0.5)), cx.op("Add", t, c(1.0)), out=out)


def keep_above(cx: OnnxContext, x: str, dtype: str, threshold: float, out: str | None = None) -> str:
    """x where |x| > threshold else 0 (sparsify, glu's threshold); |x| compared in float32 like the reference."""
    a = cx.cast(cx.op("Abs", x), dtype, "float32")
    keep = cx.op("Greater", a, cx.const(threshold, "float32"))
    return cx.op("Where", keep, x, cx.const(0.0, dtype), out=out)


@lowering("sparsify")
def _sparsify(cx: OnnxContext, n: Node) -> None:
    x = n.inputs[0]
    keep_above(cx, x.name, x.dtype, n.attrs["threshold"], out=n.output.name)


@lowering("silu")
def _silu_op(cx: OnnxContext, n: Node) -> None:
    silu(cx, n.inputs[0].name, out=n.output.name)


@lowering("gelu")
def _gelu_op(cx: OnnxContext, n: Node) -> None:
    x = n.inputs[0]
    gelu(cx, x.name, x.dtype, n.attrs["approximate"], out=n.output.name)


@lowering("cast")
def _cast(cx: OnnxContext, n: Node) -> None:
    x = n.inputs[0]
    cx.cast(x.name, x.dtype, n.attrs["dtype"], out=n.output.name)


@lowering("mean")
def _mean(cx: OnnxContext, n: Node) -> None:
    x = n.inputs[0]
    # The reference accumulates fp16 in fp32 and integers in float64.
    dt = {"float16": "float32", "float32": "float32", "float64": "float64"}.get(x.dtype, "float64")
    dst = cx.sink(n.output, dt)
    cx.reduce_mean(cx.cast(x.name, x.dtype, dt), n.attrs["axes"], n.attrs["keepdim"], out=dst)
    cx.land(dst, n.output, dt)


@lowering("softmax")
def _softmax(cx: OnnxContext, n: Node) -> None:
    cx.op("Softmax", n.inputs[0].name, out=n.output.name, axis=n.attrs["axis"])


# ----------------------------------------------------------------------------- shape ops
@lowering("reshape")
def _reshape(cx: OnnxContext, n: Node) -> None:
    # allowzero=0: a 0 copies the input dim, as in the IR.
    cx.op("Reshape", n.inputs[0].name, cx.ints(n.attrs["shape"]), out=n.output.name, allowzero=0)


@lowering("permute")
def _permute(cx: OnnxContext, n: Node) -> None:
    cx.op("Transpose", n.inputs[0].name, out=n.output.name, perm=list(n.attrs["perm"]))


@lowering("unsqueeze")
def _unsqueeze(cx: OnnxContext, n: Node) -> None:
    cx.op("Unsqueeze", n.inputs[0].name, cx.ints([n.attrs["axis"]]), out=n.output.name)


@lowering("expand")
def _expand(cx: OnnxContext, n: Node) -> None:
    # ONNX Expand broadcasts both ways, so a 1 keeps the input dim like torch's -1.
    shape = [1 if d == -1 else d for d in n.attrs["shape"]]
    cx.op("Expand", n.inputs[0].name, cx.ints(shape), out=n.output.name)


@lowering("slice")
def _slice(cx: OnnxContext, n: Node) -> None:
    a = n.attrs
    cx.slice(n.inputs[0].name, a["axis"], a["start"], a["end"], a["step"], out=n.output.name)


@lowering("concat")
def _concat(cx: OnnxContext, n: Node) -> None:
    cx.op("Concat", *[v.name for v in n.inputs], out=n.output.name, axis=n.attrs["axis"])


@lowering("last_rows")
def _last_rows(cx: OnnxContext, n: Node) -> None:
    x, rows = n.inputs
    start = cx.op("Neg", rows.name)
    cx.op("Slice", x.name, start, cx.ints([INT64_MAX]), cx.ints([1]), out=n.output.name)
