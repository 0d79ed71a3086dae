"""ONNX lowerings of the mixture-of-experts ops (edgec/ir/ops_moe.py), their router ops and the `sum`
reduction.

Where onnxruntime's `com.microsoft.MoE` contrib op computes the layer exactly (softmax top-k routers,
optionally renormalised, with SwiGLU experts, GPT-OSS's clamped one included, fp32) it is used: its CPU
kernel takes gate and up interleaved in one matrix (swiglu_fusion=1), which the lowering writes as a
reordered copy of the experts' gate_up (measured: benchmarks/moe_onnx_kernels.py). Otherwise (other
routers and activations, quantized or fp16 experts, or the backend option moe_kernel=gather) the experts
are computed by gathering the chosen experts' weights per token and two batched MatMuls: a decode step
reads only its top-k experts, as the op promises. The router of every kind `moe` has is built from the
helpers the router ops lower with.
"""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from edgec.ir import Node, Value
from edgec.ir.ops_moe import moe_biases

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


def _gated(cx: OnnxContext, h: str, inter: int, a: dict, dtype: str) -> str:
    """ops_moe.gated on h [.., 2I, 1] (gate rows first)."""
    g, u = cx.slice(h, 2, 0, inter), cx.slice(h, 2, inter, 2 * inter)
    if a["act"] != "clamped_swiglu":
        return cx.op("Mul", _act(cx, g, a["act"], dtype), u)
    limit = a["limit"]
    g = cx.op("Min", g, cx.const(limit, dtype))
    u = cx.op("Clip", u, cx.const(-limit, dtype), cx.const(limit, dtype))
    glu = cx.op("Mul", g, cx.op("Sigmoid", cx.op("Mul", g, cx.const(a["alpha"], dtype))))
    return cx.op("Mul", cx.op("Add", u, cx.const(1.0, dtype)), glu)


def _expert_bias(cx: OnnxContext, bias: Value | None, index: str, y: str, dtype: str) -> str:
    """y [T,k,N,1] + bias[index] (bias [E,N]), or y."""
    if bias is None:
        return y
    rows = cx.op("Gather", cx.cast(bias.name, bias.dtype, dtype), index, axis=0)   # [T,k,N]
    return cx.op("Add", y, cx.op("Unsqueeze", rows, cx.ints([3])))


def _experts(cx: OnnxContext, x: str, index: str, weight: str, gate_up: Value, down: Value, a: dict,
             dtype: str, biases: dict | None = None, out: str | None = None) -> str:
    """sum_k weight[t,k] * expert_{index[t,k]}(x[t]) for x [T,H]: gather each token's experts' weights."""
    hidden, inter = down.shape[1], down.shape[2]
    biases = biases or {}
    xt = cx.op("Reshape", x, cx.ints([-1, 1, hidden, 1]))                        # [T,1,H,1]
    h = cx.op("MatMul", gathered_experts(cx, gate_up, index), xt)       # [T,k,2I,1]
    h = _expert_bias(cx, biases.get("gate_up"), index, h, dtype)
    y = cx.op("MatMul", gathered_experts(cx, down, index), _gated(cx, h, inter, a, dtype))   # [T,k,H,1]
    y = _expert_bias(cx, biases.get("down"), index, y, dtype)
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
    x, index, weight, gate_up, down = n.inputs[:5]
    _experts(cx, x.name, index.name, cx.cast(weight.name, weight.dtype, x.dtype), gate_up, down,
             n.attrs, x.dtype, dict(zip(("gate_up", "down"), n.inputs[5:])), out=n.output.name)


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
    biases = moe_biases(n)
    logits = cx.op("Gemm", rows, router.name, transB=1)
    if "logit" in biases:
        logits = cx.op("Add", logits, cx.cast(biases["logit"].name, biases["logit"].dtype, dtype))
    if a["scoring"] == "sparsemixer":
        weight, index = _sparsemixer(cx, logits, a["jitter_eps"], dtype)
    else:
        scores = cx.op("Softmax", logits, axis=-1) if a["scoring"] == "softmax" else cx.op("Sigmoid", logits)
        choice = scores
        if "score" in biases:
            bias = biases["score"]
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


def _contrib_moe(cx: OnnxContext, n: Node) -> bool:
    """n as onnxruntime's MoE op (router logits -> its softmax top-k) if that computes it exactly; else False.

    The op's SwiGLU is G * sigmoid(alpha * G) * (L + beta) with G, L clamped by swiglu_limit: alpha 1,
    beta 0 and no limit is silu(gate) * up; GPT-OSS's is alpha 1.702, beta 1, its limit."""
    a, b = n.attrs, moe_biases(n)
    x, router, gate_up, down = n.inputs[:4]
    if (cx.moe_kernel != "auto" or a["scoring"] != "softmax" or a["n_group"] != 1 or a["routed_scaling"] != 1.0
            or "score" in b or a["act"] not in ("silu", "clamped_swiglu") or x.dtype != "float32"
            or any(v.kind != "weight" or v.dtype != "float32" for v in (router, gate_up, down, *b.values()))):
        return False
    inter, hidden = down.shape[2], down.shape[1]
    order = np.stack([np.arange(inter), np.arange(inter, 2 * inter)], 1).reshape(-1)  # gate0, up0, gate1, ...
    rows = cx.op("Reshape", x.name, cx.ints([-1, hidden]))
    logits = cx.op("Gemm", rows, router.name, *([b["logit"].name] if "logit" in b else []), transB=1)
    clamped = a["act"] == "clamped_swiglu"
    extra = {"swiglu_limit": float(a["limit"])} if clamped else {}
    y = cx.op("MoE", rows, logits, cx.reordered_weight(gate_up, "interleaved", order),
              cx.reordered_weight(b["gate_up"], "interleaved", order) if "gate_up" in b else "",
              down.name, b["down"].name if "down" in b else "", domain="com.microsoft", k=int(a["top_k"]),
              activation_type="swiglu", activation_alpha=float(a["alpha"]) if clamped else 1.0,
              activation_beta=1.0 if clamped else 0.0, swiglu_fusion=1,
              normalize_routing_weights=int(bool(a["normalize"])), **extra)
    cx.op("Reshape", y, cx.op("Shape", x.name), out=n.output.name)
    return True


@lowering("moe")
def _moe(cx: OnnxContext, n: Node) -> None:
    if _contrib_moe(cx, n):
        return
    x, _, gate_up, down = n.inputs[:4]
    rows = cx.op("Reshape", x.name, cx.ints([-1, x.shape[-1]]))
    weight, index = _route(cx, n, rows)
    y = _experts(cx, rows, index, weight, gate_up, down, n.attrs, x.dtype, moe_biases(n))
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
