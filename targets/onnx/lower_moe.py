"""ONNX lowerings of the mixture-of-experts ops (edgec/ir/ops_moe.py), their router ops and the `sum`
reduction.

The experts are computed by gathering the chosen experts' weights per token and two batched
MatMuls: a decode step reads only its top-k experts, as the op promises. The router of every kind
`moe` has is built from the helpers the router ops lower with. Standard ops only.
"""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from edgec.ir import Node, Value

from .lower_context import OnnxContext, lowering, onnx_dtype
from .lower_generic import gelu, silu
from .lower_quant import gathered_experts


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
    h = cx.op("MatMul", gathered_experts(cx, gate_up, index), xt)       # [T,k,2I,1]
    a = cx.op("Mul", _act(cx, cx.slice(h, 2, 0, inter), act, dtype), cx.slice(h, 2, inter, 2 * inter))
    y = cx.op("MatMul", gathered_experts(cx, down, index), a)           # [T,k,H,1]
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


def _filled(cx: OnnxContext, like: str, value: float, dtype: str) -> str:
    """A tensor of like's shape holding value."""
    return cx.op("ConstantOfShape", cx.op("Shape", like), value=numpy_helper.from_array(np.asarray([value], dtype)))


def _scatter(cx: OnnxContext, x: str, index: str, axis: int, value: float, dtype: str, out: str | None = None) -> str:
    return cx.op("ScatterElements", x, index, _filled(cx, index, value, dtype), out=out, axis=axis)


def _masked_fill(cx: OnnxContext, x: str, mask: str, value: float, dtype: str, out: str | None = None) -> str:
    return cx.op("Where", mask, cx.const(value, dtype), x, out=out)


def _keep_top_groups(cx: OnnxContext, choice: str, experts: int, n_group: int, topk_group: int, dtype: str) -> str:
    """choice [T,E] at -inf outside the topk_group groups with the best sums of two best scores."""
    size = experts // n_group
    groups = cx.op("Reshape", choice, cx.ints([-1, n_group, size]))
    score = cx.op("ReduceSum", _topk(cx, groups, 2, 2)[0], cx.ints([2]), keepdims=0)   # [T,G]
    keep = _scatter(cx, _filled(cx, score, 0.0, dtype), _topk(cx, score, topk_group, 1)[1], 1, 1.0, dtype)
    keep = cx.op("Expand", cx.op("Unsqueeze", keep, cx.ints([2])), cx.ints([1, 1, size]))
    keep = cx.op("Cast", cx.op("Reshape", keep, cx.ints([-1, experts])), to=onnx_dtype("bool"))
    return _masked_fill(cx, choice, cx.op("Not", keep), float("-inf"), dtype)


def _sparsemixer(cx: OnnxContext, logits: str, jitter_eps: float, dtype: str) -> tuple[str, str]:
    """Phi-MoE's two picks (ops_moe._sparsemixer): the best, then the best of the rest."""
    def pick(masked):
        best, index = _topk(cx, masked, 1, 1)
        far = cx.op("Greater", cx.op("Div", cx.op("Sub", best, logits), cx.op("Max", cx.op("Abs", logits), best)),
                    cx.const(2 * jitter_eps, dtype))
        gates = cx.op("Softmax", _masked_fill(cx, masked, far, float("-inf"), dtype), axis=-1)
        return cx.op("GatherElements", gates, index, axis=1), index

    w1, i1 = pick(logits)
    w2, i2 = pick(_scatter(cx, logits, i1, 1, float("-inf"), dtype))
    return cx.op("Concat", w1, w2, axis=1), cx.op("Concat", i1, i2, axis=1)


def _route(cx: OnnxContext, n: Node, rows: str) -> tuple[str, str]:
    """(weights [T,k], index [T,k]) the moe node's router picks (ops_moe.route)."""
    a, router, dtype = n.attrs, n.inputs[1], n.inputs[0].dtype
    experts = router.shape[0]
    logits = cx.op("Gemm", rows, router.name, transB=1)
    if a["scoring"] == "sparsemixer":
        weight, index = _sparsemixer(cx, logits, a["jitter_eps"], dtype)
    else:
        scores = cx.op("Softmax", logits, axis=-1) if a["scoring"] == "softmax" else cx.op("Sigmoid", logits)
        choice = scores
        if len(n.inputs) > 4:
            bias = n.inputs[4]
            choice = cx.op("Add", scores, cx.cast(bias.name, bias.dtype, dtype))
        if a["n_group"] > 1:
            choice = _keep_top_groups(cx, choice, experts, a["n_group"], a["topk_group"], dtype)
        weight, index = _topk(cx, choice, a["top_k"], 1)
        if choice is not scores:
            weight = cx.op("GatherElements", scores, index, axis=1)
    if a["normalize"]:
        weight = cx.op("Div", weight, cx.op("ReduceSum", weight, cx.ints([1]), keepdims=1))
    if a["routed_scaling"] != 1.0:
        weight = cx.op("Mul", weight, cx.const(a["routed_scaling"], dtype))
    return weight, index


@lowering("moe")
def _moe(cx: OnnxContext, n: Node) -> None:
    x, _, gate_up, down = n.inputs[:4]
    rows = cx.op("Reshape", x.name, cx.ints([-1, x.shape[-1]]))
    weight, index = _route(cx, n, rows)
    y = _experts(cx, rows, index, weight, gate_up, down, n.attrs["act"], x.dtype)
    cx.op("Reshape", y, cx.op("Shape", x.name), out=n.output.name)


# -------------------------------------------------------------------------------------- router ops
@lowering("gather")
def _gather(cx: OnnxContext, n: Node) -> None:
    x, index = n.inputs
    cx.op("GatherElements", x.name, index.name, out=n.output.name, axis=n.attrs["axis"] % x.rank)


@lowering("scatter")
def _scatter_op(cx: OnnxContext, n: Node) -> None:
    x, index = n.inputs
    _scatter(cx, x.name, index.name, n.attrs["axis"] % x.rank, n.attrs["value"], x.dtype, out=n.output.name)


@lowering("masked_fill")
def _masked_fill_op(cx: OnnxContext, n: Node) -> None:
    x, mask = n.inputs
    _masked_fill(cx, x.name, mask.name, n.attrs["value"], x.dtype, out=n.output.name)


@lowering("full_like")
def _full_like(cx: OnnxContext, n: Node) -> None:
    x = n.inputs[0]
    cx.op("Identity", _filled(cx, x.name, n.attrs["value"], x.dtype), out=n.output.name)


@lowering("greater")
def _greater(cx: OnnxContext, n: Node) -> None:
    cx.op("Greater", *(v.name for v in n.inputs), out=n.output.name)


@lowering("logical_not")
def _logical_not(cx: OnnxContext, n: Node) -> None:
    cx.op("Not", n.inputs[0].name, out=n.output.name)


@lowering("abs")
def _abs(cx: OnnxContext, n: Node) -> None:
    cx.op("Abs", n.inputs[0].name, out=n.output.name)
