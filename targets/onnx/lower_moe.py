"""ONNX lowerings of the mixture-of-experts ops (edgec/ir/ops_moe.py) and the `sum` reduction.

The experts are computed by gathering the chosen experts' weights per token and two batched
MatMuls: a decode step reads only its top-k experts, as the op promises. Standard ops only.
"""
from __future__ import annotations

from onnx import helper

from edgec.ir import Node, Value

from .lower_context import OnnxContext, lowering
from .lower_generic import gelu, silu


def _act(cx: OnnxContext, x: str, act: str, dtype: str) -> str:
    if act == "silu":
        return silu(cx, x)
    if act == "relu":
        return cx.op("Relu", x)
    return gelu(cx, x, dtype, "tanh" if act == "gelu_tanh" else "none")


def _topk(cx: OnnxContext, x: str, k: int, axis: int, outs: list[str] | None = None) -> list[str]:
    outs = outs or [cx.fresh("topk_values"), cx.fresh("topk_indices")]
    cx.nodes.append(helper.make_node("TopK", [x, cx.ints([k])], outs, name=cx.fresh("TopK_node"),
                                     axis=axis, largest=1, sorted=1))
    return outs


def _experts(cx: OnnxContext, x: str, index: str, weight: str, gate_up: Value, down: Value, act: str,
             dtype: str, out: str | None = None) -> str:
    """sum_k weight[t,k] * expert_{index[t,k]}(x[t]) for x [T,H]: gather each token's experts' weights."""
    hidden, inter = down.shape[1], down.shape[2]
    xt = cx.op("Reshape", x, cx.ints([-1, 1, hidden, 1]))                        # [T,1,H,1]
    h = cx.op("MatMul", cx.op("Gather", gate_up.name, index, axis=0), xt)       # [T,k,2I,1]
    a = cx.op("Mul", _act(cx, cx.slice(h, 2, 0, inter), act, dtype), cx.slice(h, 2, inter, 2 * inter))
    y = cx.op("MatMul", cx.op("Gather", down.name, index, axis=0), a)           # [T,k,H,1]
    y = cx.op("Mul", y, cx.op("Unsqueeze", weight, cx.ints([2, 3])))
    return cx.op("ReduceSum", y, cx.ints([1, 3]), out=out, keepdims=0)         # [T,H]


@lowering("sum")
def _sum(cx: OnnxContext, n: Node) -> None:
    cx.op("ReduceSum", n.inputs[0].name, cx.ints(n.attrs["axes"]), out=n.output.name,
          keepdims=int(n.attrs["keepdim"]))


@lowering("topk")
def _topk_op(cx: OnnxContext, n: Node) -> None:
    x = n.inputs[0]
    _topk(cx, x.name, n.attrs["k"], n.attrs["axis"] % x.rank, [o.name for o in n.outputs])


@lowering("moe_experts")
def _moe_experts(cx: OnnxContext, n: Node) -> None:
    x, index, weight, gate_up, down = n.inputs
    _experts(cx, x.name, index.name, cx.cast(weight.name, weight.dtype, x.dtype), gate_up, down,
             n.attrs["act"], x.dtype, out=n.output.name)


@lowering("moe")
def _moe(cx: OnnxContext, n: Node) -> None:
    x, router, gate_up, down = n.inputs
    a = n.attrs
    rows = cx.op("Reshape", x.name, cx.ints([-1, x.shape[-1]]))
    scores = cx.op("Softmax", cx.op("Gemm", rows, router.name, transB=1), axis=-1)
    weight, index = _topk(cx, scores, a["top_k"], 1)
    if a["normalize"]:
        weight = cx.op("Div", weight, cx.op("ReduceSum", weight, cx.ints([1]), keepdims=1))
    y = _experts(cx, rows, index, weight, gate_up, down, a["act"], x.dtype)
    cx.op("Reshape", y, cx.op("Shape", x.name), out=n.output.name)
