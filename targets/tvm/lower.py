"""Lower an edgec IR graph to a Relax IRModule with the BlockBuilder.

Table-driven like the ONNX target: `LOWERINGS` maps each IR op name to a
function emitting Relax bindings for one node. Generic ops map to Relax ops
(legalized to TIR by TVM); the LLM ops whose fast form is index arithmetic
(quantized/fp16 linear, rotary, attention, int8 rows) are tensor expressions
from kernels.py.

The module has two functions over the same weights, because their best
schedules differ: `prefill` with a symbolic `seq` (matmuls) and `decode` with
seq = 1 (matrix-vector products, where the weight read dominates). Both take
the graph inputs in order and then one tuple of every weight, and return a
tuple of the graph outputs in order. `past` stays symbolic in both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax import op as R

from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Node, Value
from edgec.ir import shapes as S
from edgec.ir.ops_moe import moe_biases
from edgec.ir.quant import PackedLayout
from edgec.ir.weight_source import read_as_weight_only, weight_source
from edgec.targets.lowering import LoweringContext, LoweringTable, check_supported

from . import kernels as K

INT_BIG = 2**62


@dataclass
class Lowered:
    mod: tvm.IRModule
    weights: list[str]  # weight names, in the order of the params tuple


class _Ctx(LoweringContext):
    """Per-function state: symbols, the Relax expression of every IR value."""

    def __init__(self, bb: relax.BlockBuilder, graph: Graph, symbols: dict[str, object]):
        super().__init__(graph)
        self.bb = bb
        self.symbols = symbols  # "seq" -> tirx.Var or 1
        self.env: dict[Value, relax.Expr] = {}

    def dim(self, d):
        if isinstance(d, int):
            return d
        const, syms = S._terms(d)
        expr = None
        for s in syms:
            expr = self.symbols[s] if expr is None else expr + self.symbols[s]
        return expr + const if const else expr

    def shape(self, v: Value) -> list:
        return [self.dim(d) for d in v.shape]

    def __getitem__(self, v: Value) -> relax.Expr:
        return self.env[v]

    def emit(self, expr, name: str = "") -> relax.Expr:
        return self.bb.emit(expr, name_hint=name)

    def te(self, fn, *args, name: str = "", **kwargs) -> relax.Expr:
        return self.bb.emit_te(fn, *args, primfunc_name_hint=name or fn.__name__, **kwargs)


LOWERINGS = LoweringTable("TVM")
lowering = LOWERINGS.register


# ----------------------------------------------------------------------------- generic ops
_BINARY = {"add": R.add, "sub": R.subtract, "mul": R.multiply, "div": R.divide, "pow": R.power,
           "maximum": R.maximum}
_UNARY = {"neg": R.negative, "sqrt": R.sqrt, "rsqrt": R.rsqrt, "exp": R.exp, "tanh": R.tanh,
          "sin": R.sin, "cos": R.cos, "relu": R.nn.relu, "sigmoid": R.sigmoid, "silu": R.nn.silu}


@lowering(*_BINARY)
def _binary(c, n):
    return [_BINARY[n.op](c[n.inputs[0]], c[n.inputs[1]])]


@lowering(*_UNARY)
def _unary(c, n):
    return [_UNARY[n.op](c[n.inputs[0]])]


@lowering("gelu")
def _gelu(c, n):
    x = c[n.inputs[0]]
    return [R.nn.gelu_tanh(x) if n.attrs["approximate"] == "tanh" else R.nn.gelu(x)]


@lowering("const")
def _const(c, n):
    dtype = n.attrs["dtype"]
    return [relax.const(np.asarray(n.attrs["value"], dtype=dtype), dtype)]


@lowering("cast")
def _cast(c, n):
    return [R.astype(c[n.inputs[0]], n.attrs["dtype"])]


@lowering("mean")
def _mean(c, n):
    return [R.mean(c[n.inputs[0]], axis=list(n.attrs["axes"]), keepdims=bool(n.attrs["keepdim"]))]


@lowering("softmax")
def _softmax(c, n):
    return [R.nn.softmax(c[n.inputs[0]], axis=n.attrs["axis"])]


@lowering("reshape")
def _reshape(c, n):
    return [R.reshape(c[n.inputs[0]], c.shape(n.output))]


@lowering("expand")
def _expand(c, n):
    return [R.broadcast_to(c[n.inputs[0]], c.shape(n.output))]


@lowering("permute")
def _permute(c, n):
    return [R.permute_dims(c[n.inputs[0]], list(n.attrs["perm"]))]


@lowering("unsqueeze")
def _unsqueeze(c, n):
    return [R.expand_dims(c[n.inputs[0]], n.attrs["axis"])]


@lowering("slice")
def _slice(c, n):
    x = n.inputs[0]
    axis = n.attrs["axis"] % x.rank
    start, end, step = n.attrs["start"], n.attrs["end"], n.attrs["step"]
    d = x.shape[axis]
    if isinstance(d, int):
        start, end, step = slice(start, end, step).indices(d)
        if step < 0 and end < 0:
            end = -d - 1  # Relax reads a negative end relative to the dim
    else:
        end = c.dim(d) if end >= INT_BIG else end
    return [R.strided_slice(c[x], axes=[axis], begin=[start], end=[end], strides=[step])]


@lowering("concat")
def _concat(c, n):
    return [R.concat([c[v] for v in n.inputs], axis=n.attrs["axis"])]


@lowering("matmul")
def _matmul(c, n):
    return [R.matmul(c[n.inputs[0]], c[n.inputs[1]])]


# ----------------------------------------------------------------------------- LLM ops
@lowering("embedding")
def _embedding(c, n):
    table, ids = n.inputs
    return [R.take(c[table], c[ids], axis=0)]


@lowering("layer_norm")
def _layer_norm(c, n):
    x = n.inputs[0]
    dim = x.shape[-1]
    w = c[n.inputs[1]] if len(n.inputs) > 1 else relax.const(np.ones(dim, x.dtype))
    b = c[n.inputs[2]] if len(n.inputs) > 2 else relax.const(np.zeros(dim, x.dtype))
    return [R.nn.layer_norm(c[x], w, b, axes=[-1], epsilon=float(n.attrs["eps"]))]


@lowering("rms_norm")
def _rms_norm(c, n):
    x, w = n.inputs
    wr = c[w] if w.dtype == x.dtype else R.astype(c[w], x.dtype)
    return [R.nn.rms_norm(c[x], wr, axes=[-1], epsilon=float(n.attrs["eps"]))]


def _keep_above(x, dtype: str, threshold: float):
    """x where |x| > threshold else 0 (sparsify, glu's threshold); |x| compared in float32 like the reference."""
    a = R.abs(x) if dtype == "float32" else R.astype(R.abs(x), "float32")
    keep = R.greater(a, relax.const(np.float32(threshold), "float32"))
    return R.where(keep, x, relax.const(np.zeros((), dtype), dtype))


@lowering("sparsify")
def _sparsify(c, n):
    x = n.inputs[0]
    return [_keep_above(c[x], x.dtype, n.attrs["threshold"])]


@lowering("glu")
def _glu(c, n):
    g, u = (c[v] for v in n.inputs)
    act = {"silu": R.nn.silu, "gelu": R.nn.gelu, "gelu_tanh": R.nn.gelu_tanh, "relu": R.nn.relu}[n.attrs["act"]](g)
    if n.attrs.get("threshold", 0.0):
        act = _keep_above(act, n.inputs[0].dtype, n.attrs["threshold"])
    return [R.multiply(act, u)]


@lowering("rotary")
def _rotary(c, n):
    return [c.te(K.rotary, *(c[v] for v in n.inputs), name="rotary")]


@lowering("rotary_cached")
def _rotary_cached(c, n):
    return [c.te(K.rotary_cached, *(c[v] for v in n.inputs), name="rotary_cached")]


@lowering("add_rms_norm")
def _add_rms_norm(c, n):
    x, skip, w = n.inputs
    total = c.emit(R.add(c[x], c[skip]))
    wr = c[w] if w.dtype == x.dtype else R.astype(c[w], x.dtype)
    return [R.nn.rms_norm(total, wr, axes=[-1], epsilon=float(n.attrs["eps"])), total]


@lowering("split")
def _split(c, n):
    bounds = np.cumsum([int(s) for s in n.attrs["sizes"]])[:-1].tolist()
    parts = c.emit(R.split(c[n.inputs[0]], bounds, axis=n.attrs["axis"]))
    return [relax.TupleGetItem(parts, i) for i in range(len(n.outputs))]


@lowering("attention")
def _attention(c, n):
    """GQA as batched matmuls over KV groups: q [B,H,S,D] is viewed as [B,KV,rep*S,D].

    Plain Relax matmuls, so every target's matmul schedule (dlight on GPUs)
    applies; the mask is an elementwise epilogue computed from indices.
    Attention sinks are one more column of the masked scores (kernels.attention_mask).
    """
    qv, kv_, vv = n.inputs[:3]
    q, k, v = c[qv], c[kv_], c[vv]
    outs = []
    if len(n.inputs) == 5:
        k = c.emit(R.concat([c[n.inputs[3]], k], axis=2), "present_k")
        v = c.emit(R.concat([c[n.inputs[4]], v], axis=2), "present_v")
        outs = [k, v]
    b, heads, s_len, d = c.shape(qv)
    kv, dv = int(kv_.shape[1]), int(vv.shape[3])
    rep = heads // kv
    a = n.attrs
    qg = R.reshape(q, [b, kv, rep * s_len, d])
    scores = c.emit(R.matmul(qg, R.permute_dims(k, [0, 1, 3, 2]), out_dtype="float32"))
    t_len = c.shape(n.outputs[1])[2] if outs else c.shape(kv_)[2]
    scores = c.emit(R.reshape(scores, [b, kv, rep, s_len, t_len]))  # exposes S to the mask
    mask = (float(a["scale"]), float(a["softcap"]), int(a["window"]))
    if a["sinks"]:  # a sink column joins the softmax, then is dropped: it weighs no value
        sinks = relax.const(np.asarray(a["sinks"], np.float32).reshape(kv, rep), "float32")
        masked = c.te(lambda t, sk: K.attention_mask(t, *mask, sinks=sk), scores, sinks, name="attention_mask")
        p = c.emit(R.strided_slice(R.nn.softmax(masked, axis=-1), axes=[4], begin=[0], end=[t_len]))
    else:
        masked = c.te(lambda t: K.attention_mask(t, *mask), scores, name="attention_mask")
        p = R.nn.softmax(masked, axis=-1)
    p = c.emit(R.reshape(p, [b, kv, rep * s_len, t_len]))
    if vv.dtype != "float32":
        v = R.astype(v, "float32")
    o = c.emit(R.matmul(p, v))  # [B, KV, rep*S, Dv]
    o = R.permute_dims(R.reshape(o, [b, heads, s_len, dv]), [0, 2, 1, 3])
    if n.outputs[0].dtype != "float32":
        o = R.astype(o, n.outputs[0].dtype)
    return [o, *outs]


@lowering("gqa", "gqa_packed")
def _gqa(c, n):
    """The token-major attention forms of the ONNX pre-lowering, as heads + `attention`.

    TVM's PRELOWER does not make them; lowered so that any IR graph builds here.
    """
    out, present_k, present_v = n.outputs
    pk, pv = n.inputs[3:5] if n.op == "gqa" else n.inputs[1:3]
    kv, d = int(pk.shape[1]), int(pk.shape[3])
    heads = int(out.shape[2]) // d
    seq = n.inputs[0].shape[1]

    def to_heads(expr, h, dtype):
        v = Value(f"{out.name}_heads", dtype, (1, h, seq, d))
        c.env[v] = c.emit(R.permute_dims(R.reshape(expr, [1, c.dim(seq), h, d]), [0, 2, 1, 3]))
        return v

    dt = n.inputs[0].dtype
    if n.op == "gqa":
        q, k, v = (to_heads(c[x], h, dt) for x, h in zip(n.inputs[:3], (heads, kv, kv)))
    else:
        qkv, _, _, pos, cos, sin = n.inputs
        parts = c.emit(R.split(c[qkv], [heads * d, (heads + kv) * d], axis=-1))
        q, k, v = (to_heads(relax.TupleGetItem(parts, i), h, dt) for i, h in enumerate((heads, kv, kv)))
        for x in (q, k):
            c.env[x] = c.te(K.rotary_cached, c[x], c[pos], c[cos], c[sin], name="rotary_cached")
    o = Value(f"{out.name}_bshd", out.dtype, (1, seq, heads, d))
    attn = Node("attention", [q, k, v, pk, pv], [o, present_k, present_v], dict(n.attrs))
    y, pk_new, pv_new = LOWERINGS.lower(c, attn)
    return [R.reshape(y, c.shape(out)), pk_new, pv_new]


@lowering("last_rows")
def _last_rows(c, n):
    """A row count known at run time only would make a data-dependent shape, which this target's
    functions (static but for seq and past) do not take; TVM's PRELOWER never makes last_rows."""
    raise UnsupportedModelError("the TVM target does not lower last_rows (the ONNX backend's logits_rows "
                                "input); build the graph without that pre-lowering pass")


def _folded(c: _Ctx, w: Value):
    """w's stored form where the linears reading it fold the cast / dequantize into their
    reduction (it is read as their weight only); None: w is read as a computed [N, K] tensor."""
    src = weight_source(w)
    if src is None or (src.node is not None and (not read_as_weight_only(w, c.users(w)) or w in c.graph.outputs)):
        return None
    return src


@lowering("linear")
def _linear(c, n):
    x, w = n.inputs[:2]
    src = _folded(c, w)
    if src is None:  # e.g. a low-rank product
        wargs, make_elem = [c[w]], K.plain_weight
    elif src.form == "packed":
        wargs, make_elem = [c[v] for v in src.stored], lambda *t: K.packed_weight(*t[:3], src.layout, *t[3:])
    else:  # plain, or fp16 storage (the cast is folded in)
        wargs, make_elem = [c[src.stored[0]]], K.plain_weight
    bias = [c[n.inputs[2]]] if len(n.inputs) > 2 else []
    nw, n_out, k_in = len(wargs), int(w.shape[0]), int(w.shape[1])

    def fused(xt, *args):  # emit_te passes tensors only, so the weight format is closed over
        return K.linear(xt, make_elem(*args[:nw]), n_out, k_in, args[nw] if bias else None)

    y = c.te(fused, c[x], *wargs, *bias, name="linear")
    if n.output.dtype != "float32":
        y = R.astype(y, n.output.dtype)
    return [y]


@lowering("dequantize")
def _dequantize(c, n):
    lay = PackedLayout.of(n.attrs["bits"], n.attrs["group_size"], n.attrs["k"])

    def dequantize(*stored):  # emit_te passes tensors only, so the layout is closed over
        return K.dequantize(*stored, layout=lay)

    return [c.te(dequantize, *(c[v] for v in n.inputs), name="dequantize")]


@lowering("quantize_rows")
def _quantize_rows(c, n):
    t = c.te(K.quantize_rows, c[n.inputs[0]], name="quantize_rows")
    return [c.emit(relax.TupleGetItem(t, 0)), c.emit(relax.TupleGetItem(t, 1))]


@lowering("dequantize_rows")
def _dequantize_rows(c, n):
    return [c.te(K.dequantize_rows, *(c[v] for v in n.inputs), name="dequantize_rows")]


@lowering("linear_w8a8")
def _linear_w8a8(c, n):
    x = c[n.inputs[0]]
    t = c.te(K.quantize_rows, x, name="quantize_rows")
    xq, xs = c.emit(relax.TupleGetItem(t, 0)), c.emit(relax.TupleGetItem(t, 1))
    return [c.te(K.linear_w8a8, xq, xs, *(c[v] for v in n.inputs[1:]), name="linear_w8a8")]


# ----------------------------------------------------------------------------- mixture of experts
@lowering("sum")
def _sum(c, n):
    return [R.sum(c[n.inputs[0]], axis=list(n.attrs["axes"]), keepdims=bool(n.attrs["keepdim"]))]


def _top(c, x, k: int, axis: int):
    """(values, indices int64) of the k largest along axis."""
    both = c.emit(R.topk(x, k=k, axis=axis, ret_type="both", largest=True, dtype="int64"))
    return relax.TupleGetItem(both, 0), relax.TupleGetItem(both, 1)


@lowering("topk")
def _topk(c, n):
    x = n.inputs[0]
    return list(_top(c, c[x], n.attrs["k"], n.attrs["axis"] % x.rank))


def _gated(h, inter: int, a: dict, dtype: str):
    """ops_moe.gated on h [.., 2I, 1] (gate rows first)."""
    parts = R.split(h, [inter], axis=2)
    g, u = relax.TupleGetItem(parts, 0), relax.TupleGetItem(parts, 1)
    if a["act"] != "clamped_swiglu":
        fn = {"silu": R.nn.silu, "gelu": R.nn.gelu, "gelu_tanh": R.nn.gelu_tanh, "relu": R.nn.relu}[a["act"]]
        return R.multiply(fn(g), u)
    g = R.minimum(g, _scalar(a["limit"], dtype))
    u = R.clip(u, -a["limit"], a["limit"])
    glu = R.multiply(g, R.sigmoid(R.multiply(g, _scalar(a["alpha"], dtype))))
    return R.multiply(R.add(u, _scalar(1.0, dtype)), glu)


def _expert_bias(c, bias: Value | None, index, y, dtype: str):
    """y [T,k,N,1] + bias[index] (bias [E,N]), or y."""
    if bias is None:
        return y
    b = c[bias] if bias.dtype == dtype else R.astype(c[bias], dtype)
    return R.add(y, R.expand_dims(R.take(b, index, axis=0), [3]))


def _experts(c, x, index, weight, gate_up: Value, down: Value, a: dict, dtype: str, biases: dict):
    """sum_k weight[t,k] * expert_{index[t,k]}(x[t]) for x [T,H]: the chosen experts' weights gathered
    per token and two batched matmuls (a decode step reads only its top-k experts)."""
    inter = down.shape[2]
    h = c.emit(R.matmul(R.take(c[gate_up], index, axis=0), R.expand_dims(x, [1, 3])))   # [T,k,2I,1]
    h = c.emit(_expert_bias(c, biases.get("gate_up"), index, h, dtype))
    y = c.emit(R.matmul(R.take(c[down], index, axis=0), _gated(h, inter, a, dtype)))     # [T,k,H,1]
    y = _expert_bias(c, biases.get("down"), index, y, dtype)
    return R.sum(R.multiply(y, R.expand_dims(weight, [2, 3])), axis=[1, 3])


@lowering("moe_experts")
def _moe_experts(c, n):
    x, index, weight, gate_up, down = n.inputs[:5]
    w = c[weight] if weight.dtype == x.dtype else R.astype(c[weight], x.dtype)
    return [_experts(c, c[x], c[index], w, gate_up, down, n.attrs, x.dtype,
                     dict(zip(("gate_up", "down"), n.inputs[5:])))]


def _scalar(value: float, dtype: str):
    return relax.const(np.asarray(value, dtype), dtype)


def _filled(like, value: float, dtype: str):
    """A tensor of like's shape holding value (zeros + value: R.full_like fails to legalize an infinite value)."""
    return R.add(R.zeros_like(like, dtype=dtype), _scalar(value, dtype))


def _scatter(x, index, axis: int, value: float, dtype: str):
    return R.scatter_elements(x, index, _filled(index, value, dtype), axis=axis)


def _keep_top_groups(c, choice, rows, experts: int, n_group: int, topk_group: int, dtype: str):
    """choice [T,E] at -inf outside the topk_group groups with the best sums of two best scores."""
    size = experts // n_group
    groups = c.emit(R.reshape(choice, [rows, n_group, size]))
    score = c.emit(R.sum(_top(c, groups, 2, 2)[0], axis=[2]))                              # [T,G]
    keep = _scatter(R.zeros_like(score), _top(c, score, topk_group, 1)[1], 1, 1.0, dtype)
    keep = R.reshape(R.broadcast_to(R.expand_dims(keep, [2]), [rows, n_group, size]), [rows, experts])
    return c.emit(R.where(R.astype(keep, "bool"), choice, _scalar(float("-inf"), dtype)))


def _sparsemixer(c, logits, jitter_eps: float, dtype: str):
    """Phi-MoE's two picks (ops_moe._sparsemixer): the best, then the best of the rest."""
    def pick(masked):
        best, index = _top(c, masked, 1, 1)
        far = R.greater(R.divide(R.subtract(best, logits), R.maximum(R.abs(logits), best)),
                        _scalar(2 * jitter_eps, dtype))
        gates = R.nn.softmax(R.where(far, _scalar(float("-inf"), dtype), masked), axis=-1)
        return c.emit(R.gather_elements(gates, index, axis=1)), index

    w1, i1 = pick(logits)
    w2, i2 = pick(c.emit(_scatter(logits, i1, 1, float("-inf"), dtype)))
    return R.concat([w1, w2], axis=1), R.concat([i1, i2], axis=1)


def _route(c, n):
    """(weights [T,k], index [T,k]) the moe node's router picks (ops_moe.route)."""
    x, router = n.inputs[:2]
    a, dtype, experts = n.attrs, x.dtype, router.shape[0]
    biases = moe_biases(n)
    logits = R.matmul(c[x], R.permute_dims(c[router], [1, 0]))
    if "logit" in biases:
        b = biases["logit"]
        logits = R.add(logits, c[b] if b.dtype == dtype else R.astype(c[b], dtype))
    logits = c.emit(logits)
    if a["scoring"] == "sparsemixer":
        weight, index = _sparsemixer(c, logits, a["jitter_eps"], dtype)
    else:
        scores = c.emit(R.nn.softmax(logits, axis=-1) if a["scoring"] == "softmax" else R.sigmoid(logits))
        choice = scores
        if "score" in biases:
            bias = biases["score"]
            choice = c.emit(R.add(scores, c[bias] if bias.dtype == dtype else R.astype(c[bias], dtype)))
        if a["n_group"] > 1:
            choice = _keep_top_groups(c, choice, c.dim(x.shape[0]), experts, a["n_group"], a["topk_group"], dtype)
        weight, index = _top(c, choice, a["top_k"], 1)
        if choice is not scores:
            weight = R.gather_elements(scores, index, axis=1)
    if a["normalize"]:
        weight = c.emit(weight)
        weight = R.divide(weight, R.sum(weight, axis=[1], keepdims=True))
    if a["routed_scaling"] != 1.0:
        weight = R.multiply(weight, _scalar(a["routed_scaling"], dtype))
    return c.emit(weight), c.emit(index)


@lowering("moe")
def _moe(c, n):
    x, _, gate_up, down = n.inputs[:4]
    if x.rank != 2:
        raise UnsupportedModelError(f"TVM target: moe over a rank-{x.rank} input (expected [tokens, hidden])")
    weight, index = _route(c, n)
    return [_experts(c, c[x], index, weight, gate_up, down, n.attrs, x.dtype, moe_biases(n))]


# router ops
@lowering("gather")
def _gather(c, n):
    x, index = n.inputs
    return [R.gather_elements(c[x], c[index], axis=n.attrs["axis"] % x.rank)]


@lowering("scatter")
def _scatter_op(c, n):
    x, index = n.inputs
    return [_scatter(c[x], c[index], n.attrs["axis"] % x.rank, n.attrs["value"], x.dtype)]


@lowering("masked_fill")
def _masked_fill(c, n):
    x, mask = n.inputs
    return [R.where(c[mask], _scalar(n.attrs["value"], x.dtype), c[x])]


@lowering("full_like")
def _full_like(c, n):
    x = n.inputs[0]
    return [_filled(c[x], n.attrs["value"], x.dtype)]


@lowering("greater")
def _greater(c, n):
    return [R.greater(c[n.inputs[0]], c[n.inputs[1]])]


@lowering("logical_not")
def _logical_not(c, n):
    return [R.logical_not(c[n.inputs[0]])]


@lowering("abs")
def _abs(c, n):
    return [R.abs(c[n.inputs[0]])]


# ----------------------------------------------------------------------------- driver
def _relax_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def _emit_function(bb: relax.BlockBuilder, graph: Graph, fname: str, weight_names: list[str],
                   symbols: dict[str, object]) -> None:
    c = _Ctx(bb, graph, symbols)
    params = []
    for v in graph.inputs:
        var = relax.Var(_relax_name(v.name), relax.TensorType(c.shape(v), v.dtype))
        c.env[v] = var
        params.append(var)
    wvals = [graph.weight_values[name] for name in weight_names]
    wtuple = relax.Var("params", relax.TupleType([relax.TensorType(list(v.shape), v.dtype) for v in wvals]))
    with bb.function(fname, [*params, wtuple]):
        with bb.dataflow():
            for i, v in enumerate(wvals):
                c.env[v] = bb.emit(relax.TupleGetItem(wtuple, i), name_hint=_relax_name(v.name))
            # Decide fusions first: an absorbed producer is not emitted at all.
            for node in graph.nodes:
                src = _folded(c, node.inputs[1]) if node.op == "linear" else None
                if src is not None and src.node is not None:
                    c.absorbed.add(id(src.node))
            for node in graph.nodes:
                if id(node) in c.absorbed:
                    continue
                outs = LOWERINGS.lower(c, node)
                for val, expr in zip(node.outputs, outs):
                    c.env[val] = expr if isinstance(expr, relax.Var) else \
                        bb.emit(expr, name_hint=_relax_name(val.name))
            result = bb.emit_output(relax.Tuple([c[v] for v in graph.outputs]))
        bb.emit_func_output(result)


def lower_graph(graph: Graph) -> Lowered:
    """IR -> IRModule with `prefill` (symbolic seq) and `decode` (seq = 1)."""
    check_supported(graph, LOWERINGS)
    weight_names = list(graph.weight_values)
    syms = sorted(graph.symbols())
    bb = relax.BlockBuilder()
    for fname in ("prefill", "decode"):
        symbols = {s: tirx.Var(s, "int64") for s in syms}
        if fname == "decode":
            if "seq" not in symbols:
                continue
            symbols["seq"] = tirx.IntImm("int64", 1)
        _emit_function(bb, graph, fname, weight_names, symbols)
    mod = bb.get()
    return Lowered(mod, weight_names)
