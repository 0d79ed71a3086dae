"""Lower an edgec IR graph to an ONNX model.

Table-driven: `LOWERINGS` maps every IR op name to one small function that
appends ONNX nodes for one IR node. A new IR op without an entry here is a
compile error (UnsupportedModelError), and a test fails until it gets one.

Naming: graph inputs, outputs and every IR value keep their IR names. IR
names are sanitized to [A-Za-z0-9_], so helper tensors use '/' in their names
(`<ir value>/<hint>`) and transposed weights end in '.T'; neither can collide
with an IR name.

Only standard default-domain ops are emitted (no com.microsoft contrib ops),
so the model runs on any ONNX runtime; onnxruntime's graph optimizer fuses
the decompositions back (RMSNorm -> SimplifiedLayerNormalization, Gelu,
MatMul+scale -> FusedMatMul, ...).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Node, Value

# 21 is what onnxruntime >= 1.20 (our floor) fully supports, gives native Gelu
# (opset 20), and blockwise int4 DequantizeLinear for weight-only quantization.
DEFAULT_OPSET = 21
MIN_OPSET = 17  # LayerNormalization
MAX_OPSET = 21  # every lowering below is written and tested against 17..21

INT64_MAX = 2**63 - 1


def onnx_dtype(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


# ----------------------------------------------------------------------------- initializers
@dataclass
class Initializer:
    """A weight to be stored in the model; `transpose` stores array.T (for linear)."""

    name: str
    array: np.ndarray  # possibly an np.memmap: never copied as a whole
    transpose: bool = False

    @property
    def dtype(self) -> str:
        return self.array.dtype.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.array.shape)) if self.transpose else tuple(self.array.shape)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def chunks(self, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """C-contiguous little-endian pieces of the stored tensor, in order.

        A contiguous (mem)mapped array is yielded as-is (no copy); a transposed
        one is produced a block of rows at a time so peak memory stays bounded.
        """
        a = self.array
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if not self.transpose:
            yield np.ascontiguousarray(a)
            return
        n, k = a.shape  # store [k, n]
        rows = max(1, max_bytes // max(1, n * a.dtype.itemsize))
        for k0 in range(0, k, rows):
            yield np.ascontiguousarray(a[:, k0:k0 + rows].T)

    def to_numpy(self) -> np.ndarray:
        a = np.asarray(self.array)
        return np.ascontiguousarray(a.T if self.transpose else a)


@dataclass
class LoweredModel:
    """The ONNX graph without initializer data, plus the initializers to attach.

    Kept apart so compile_graph can stream (mem-mapped) weights straight into the
    external data file instead of first copying them all into protobuf bytes.
    """

    model: onnx.ModelProto
    initializers: list[Initializer] = field(default_factory=list)


# ----------------------------------------------------------------------------- context
class _Ctx:
    """Emission state: ONNX nodes so far, unique helper names, deduplicated constants."""

    def __init__(self, graph: Graph, opset: int, transposed: dict[str, str]):
        self.graph = graph
        self.opset = opset
        self.transposed = transposed  # weight name -> name of its [in, out] initializer
        self.nodes: list[onnx.NodeProto] = []
        self.scope = "graph"
        self._names: set[str] = {v.name for v in graph.inputs} | set(graph.weight_values)
        self._names |= {o.name for n in graph.nodes for o in n.outputs}
        self._names |= set(transposed.values())
        self._consts: dict[tuple, str] = {}
        self.metadata: dict[str, str] = {}  # -> model.metadata_props (e.g. the KV cache layout)
        self.claimed: set[int] = set()  # ids of IR nodes a fused lowering already emitted (skipped)
        self._users: dict | None = None

    def users(self, v: Value) -> list[Node]:
        """The IR nodes that read v (computed once per graph)."""
        if self._users is None:
            self._users = self.graph.users()
        return self._users.get(v, [])

    def fresh(self, hint: str) -> str:
        base = f"{self.scope}/{hint}"
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, n_out: int = 1, **attrs):
        """Append one ONNX node; returns its output name (or list of names if n_out > 1)."""
        if n_out == 1:
            outs = [out or self.fresh(op_type.lower())]
        else:
            outs = [self.fresh(f"{op_type.lower()}{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self.fresh(f"{op_type}_node"), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype: str) -> str:
        """A small inline Constant (shapes, axes, scalars); identical ones are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            saved, self.scope = self.scope, "const"
            name = self.fresh(f"{dtype}_{'x'.join(map(str, arr.shape)) or 'scalar'}")
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant_node"),
                                               value=numpy_helper.from_array(arr, name)))
            self.scope = saved
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64), "int64")

    def cast(self, name: str, src: str, dst: str, out: str | None = None) -> str:
        if src == dst and out is None:
            return name
        if src == dst:
            return self.op("Identity", name, out=out)
        return self.op("Cast", name, out=out, to=onnx_dtype(dst))

    def promote(self, *values: Value) -> tuple[str, list[str]]:
        """Cast values to their numpy result type (what the reference computes in)."""
        dt = np.result_type(*[np.dtype(v.dtype) for v in values]).name
        return dt, [self.cast(v.name, v.dtype, dt) for v in values]

    def sink(self, value: Value, dtype: str) -> str:
        """Where a lowering computing in `dtype` should write its last op (see land)."""
        return value.name if dtype == value.dtype else self.fresh(f"{dtype}_result")

    def land(self, name: str, value: Value, dtype: str) -> None:
        if dtype != value.dtype:
            self.cast(name, dtype, value.dtype, out=value.name)

    def reduce_mean(self, x: str, axes, keepdims: bool, out: str | None = None) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints(list(axes)), out=out, keepdims=int(keepdims))
        return self.op("ReduceMean", x, out=out, axes=list(axes), keepdims=int(keepdims))

    def slice(self, x: str, axis: int, start: int, end: int, step: int = 1, out: str | None = None) -> str:
        return self.op("Slice", x, self.ints([start]), self.ints([end]), self.ints([axis]),
                       self.ints([step]), out=out)

    def dim(self, x: str, axis: int) -> str:
        """Scalar int64: the runtime size of x along a (non-negative) axis."""
        return self.op("Squeeze", self.op("Shape", x, start=axis, end=axis + 1), self.ints([0]))


def _static(d, what: str, node: Node) -> int:
    if not isinstance(d, int):
        raise UnsupportedModelError(f"ONNX target: {node.op} needs a static {what}, got {d!r}")
    return d


# ----------------------------------------------------------------------------- the table
Lowering = Callable[[_Ctx, Node], None]
LOWERINGS: dict[str, Lowering] = {}


def lowering(*names: str):
    def deco(fn: Lowering) -> Lowering:
        for name in names:
            LOWERINGS[name] = fn
        return fn

    return deco


def _direct(onnx_op: str) -> Lowering:
    """IR ops that are exactly one ONNX op with the same inputs."""

    def fn(cx: _Ctx, n: Node) -> None:
        cx.op(onnx_op, *[v.name for v in n.inputs], out=n.output.name)

    fn.__name__ = f"_lower_{onnx_op}"
    return fn


for _ir, _onnx in {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow",
                   "maximum": "Max", "neg": "Neg", "sqrt": "Sqrt", "exp": "Exp", "tanh": "Tanh",
                   "sin": "Sin", "cos": "Cos", "relu": "Relu", "sigmoid": "Sigmoid",
                   "matmul": "MatMul"}.items():
    LOWERINGS[_ir] = _direct(_onnx)


@lowering("const")
def _const(cx: _Ctx, n: Node) -> None:
    arr = np.asarray(n.attrs["value"], dtype=n.attrs["dtype"])
    cx.op("Constant", out=n.output.name, value=numpy_helper.from_array(arr, n.output.name))


@lowering("rsqrt")
def _rsqrt(cx: _Ctx, n: Node) -> None:
    cx.op("Reciprocal", cx.op("Sqrt", n.inputs[0].name), out=n.output.name)


def _silu(cx: _Ctx, x: str, out: str | None = None) -> str:
    return cx.op("Mul", x, cx.op("Sigmoid", x), out=out)


def _gelu(cx: _Ctx, x: str, dtype: str, approximate: str, out: str | None = None) -> str:
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


@lowering("silu")
def _silu_op(cx: _Ctx, n: Node) -> None:
    _silu(cx, n.inputs[0].name, out=n.output.name)


@lowering("gelu")
def _gelu_op(cx: _Ctx, n: Node) -> None:
    x = n.inputs[0]
    _gelu(cx, x.name, x.dtype, n.attrs["approximate"], out=n.output.name)


@lowering("cast")
def _cast(cx: _Ctx, n: Node) -> None:
    x = n.inputs[0]
    cx.cast(x.name, x.dtype, n.attrs["dtype"], out=n.output.name)


@lowering("mean")
def _mean(cx: _Ctx, n: Node) -> None:
    x = n.inputs[0]
    # The reference accumulates fp16 in fp32 and integers in float64.
    dt = {"float16": "float32", "float32": "float32", "float64": "float64"}.get(x.dtype, "float64")
    dst = cx.sink(n.output, dt)
    cx.reduce_mean(cx.cast(x.name, x.dtype, dt), n.attrs["axes"], n.attrs["keepdim"], out=dst)
    cx.land(dst, n.output, dt)


@lowering("softmax")
def _softmax(cx: _Ctx, n: Node) -> None:
    cx.op("Softmax", n.inputs[0].name, out=n.output.name, axis=n.attrs["axis"])


# ----------------------------------------------------------------------------- shape ops
@lowering("reshape")
def _reshape(cx: _Ctx, n: Node) -> None:
    # allowzero=0: a 0 copies the input dim, as in the IR.
    cx.op("Reshape", n.inputs[0].name, cx.ints(n.attrs["shape"]), out=n.output.name, allowzero=0)


@lowering("permute")
def _permute(cx: _Ctx, n: Node) -> None:
    cx.op("Transpose", n.inputs[0].name, out=n.output.name, perm=list(n.attrs["perm"]))


@lowering("unsqueeze")
def _unsqueeze(cx: _Ctx, n: Node) -> None:
    cx.op("Unsqueeze", n.inputs[0].name, cx.ints([n.attrs["axis"]]), out=n.output.name)


@lowering("expand")
def _expand(cx: _Ctx, n: Node) -> None:
    # ONNX Expand broadcasts both ways, so a 1 keeps the input dim like torch's -1.
    shape = [1 if d == -1 else d for d in n.attrs["shape"]]
    cx.op("Expand", n.inputs[0].name, cx.ints(shape), out=n.output.name)


@lowering("slice")
def _slice(cx: _Ctx, n: Node) -> None:
    a = n.attrs
    cx.slice(n.inputs[0].name, a["axis"], a["start"], a["end"], a["step"], out=n.output.name)


@lowering("concat")
def _concat(cx: _Ctx, n: Node) -> None:
    cx.op("Concat", *[v.name for v in n.inputs], out=n.output.name, axis=n.attrs["axis"])


# ----------------------------------------------------------------------------- LLM ops
@lowering("embedding")
def _embedding(cx: _Ctx, n: Node) -> None:
    table, ids = n.inputs
    idx = ids.name if ids.dtype in ("int32", "int64") else cx.cast(ids.name, ids.dtype, "int64")
    cx.op("Gather", table.name, idx, out=n.output.name, axis=0)


@lowering("linear")
def _linear(cx: _Ctx, n: Node) -> None:
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
        k = _static(w.shape[1], "input feature count", n)
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
def _layer_norm(cx: _Ctx, n: Node) -> None:
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
def _rms_norm(cx: _Ctx, n: Node) -> None:
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
def _rotary(cx: _Ctx, n: Node) -> None:
    x, cos, sin = n.inputs
    r = _static(cos.shape[-1], "rotary dim", n)
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
def _glu(cx: _Ctx, n: Node) -> None:
    g, u = n.inputs
    act = n.attrs["act"]
    dt, (gs, us) = cx.promote(g, u)
    if act == "silu":
        a = _silu(cx, gs)
    elif act in ("gelu", "gelu_tanh"):
        a = _gelu(cx, gs, dt, "tanh" if act == "gelu_tanh" else "none")
    else:
        raise UnsupportedModelError(f"ONNX target: glu act={act!r}")
    dst = cx.sink(n.output, dt)
    cx.op("Mul", a, us, out=dst)
    cx.land(dst, n.output, dt)


@lowering("attention")
def _attention(cx: _Ctx, n: Node) -> None:
    """Causal GQA attention from primitives, computed in fp32 like the reference.

    GQA never materialises repeated K/V: q is viewed as [B, KV, rep, S, D] and
    k, v as [B, KV, 1, T, D], so MatMul broadcasting shares each kv head with
    its `rep` query heads. The causal mask is built at run time from
    P = T - S (past length): query row i may see key j iff j <= P+i
    (and j > P+i-window with a sliding window).
    """
    q, k, v = n.inputs[:3]
    a = n.attrs
    heads = _static(q.shape[1], "query head count", n)
    kv_heads = _static(k.shape[1], "kv head count", n)
    rep = heads // kv_heads
    kn, vn = k.name, v.name
    if len(n.inputs) == 5:
        pk, pv = n.inputs[3:]
        kn = cx.op("Concat", pk.name, k.name, out=n.outputs[1].name, axis=2)
        vn = cx.op("Concat", pv.name, v.name, out=n.outputs[2].name, axis=2)
    f32 = "float32"
    qf, kf, vf = cx.cast(q.name, q.dtype, f32), cx.cast(kn, k.dtype, f32), cx.cast(vn, v.dtype, f32)
    if rep > 1:
        d = _static(q.shape[3], "head dim", n)
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
    o = cx.op("MatMul", cx.op("Softmax", s, axis=-1), vf)

    out = n.outputs[0]
    dst = cx.sink(out, f32)
    if rep > 1:  # [B, KV, rep, S, Dv] -> [B, S, KV, rep, Dv] -> [B, S, H, Dv]
        o = cx.op("Transpose", o, perm=[0, 3, 1, 2, 4])
        cx.op("Reshape", o, cx.ints([0, 0, heads, -1]), out=dst)
    else:  # [B, H, S, Dv] -> [B, S, H, Dv]
        cx.op("Transpose", o, out=dst, perm=[0, 2, 1, 3])
    cx.land(dst, out, f32)


# ----------------------------------------------------------------------------- driver
def _value_info(v: Value) -> onnx.ValueInfoProto:
    # Symbolic dims ("seq", "past+seq") become dim_params.
    return helper.make_tensor_value_info(v.name, onnx_dtype(v.dtype), list(v.shape))


def _plan_weights(graph: Graph) -> tuple[list[Initializer], dict[str, str]]:
    """One initializer per used weight; weights read only as a linear's W are stored transposed."""
    uses: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for n in graph.nodes:
        for i, v in enumerate(n.inputs):
            if v.kind == "weight":
                uses[v.name].append((n.op, i))
    for v in graph.outputs:
        if v.kind == "weight":
            uses[v.name].append(("output", 0))
    inits, transposed = [], {}
    for name in graph.weight_values:
        if name not in uses:
            continue  # unused weights would only be dropped by the runtime
        arr = graph.weights[name]
        if all(op == "linear" and i == 1 for op, i in uses[name]) and np.ndim(arr) == 2:
            transposed[name] = f"{name}.T"
            inits.append(Initializer(transposed[name], arr, transpose=True))
        else:
            inits.append(Initializer(name, arr))
    return inits, transposed


LOGITS_ROWS = "logits_rows"  # extra ONNX input: how many of the last positions get logits
_ROW_WISE = {"cast", "mul", "div", "tanh", "add", "softcap"}  # ops after the head that act per row


def _logits_head(graph: Graph) -> Node | None:
    """The linear that makes the `logits` output [1, seq, V] (through row-wise ops), if there is one.

    Its input is sliced to the last `logits_rows` positions: generation needs the
    last row only, and the head is ~20% of a small model's prefill FLOPs.
    """
    out = next((v for v in graph.outputs if v.name == "logits"), None)
    if out is None or out.rank != 3 or any(v.name == LOGITS_ROWS for v in graph.inputs):
        return None
    n = graph.producing_linear(out, through=lambda node: node.op in _ROW_WISE)
    if n is None or n.inputs[0].rank != 3:
        return None
    return n


def _last_rows(cx: "_Ctx", head: Node) -> Node:
    """head with its input x[:, -logits_rows:, :] (a copy: the IR graph is not changed)."""
    x = head.inputs[0]
    start = cx.op("Neg", LOGITS_ROWS)
    rows = cx.op("Slice", x.name, start, cx.ints([INT64_MAX]), cx.ints([1]))
    sliced = Value(rows, x.dtype, (x.shape[0], LOGITS_ROWS, x.shape[2]))
    return Node(head.op, [sliced, *head.inputs[1:]], head.outputs, dict(head.attrs))


def _live_nodes(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the outputs depend on, in order: a fused lowering (e.g. GQA on a packed QKV) may
    make the nodes that prepared its unfused inputs dead."""
    needed, live = set(outputs), []
    for nd in reversed(nodes):
        if needed.intersection(nd.output):
            live.append(nd)
            needed.update(i for i in nd.input if i)
    return live[::-1]


def lower_graph(graph: Graph, opset: int = DEFAULT_OPSET) -> LoweredModel:
    """Lower `graph`; initializer data is left out of the proto (see LoweredModel)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(f"ONNX target: opset {opset} not supported "
                                    f"(use {MIN_OPSET}..{MAX_OPSET})")
    missing = sorted({n.op for n in graph.nodes} - set(LOWERINGS))
    if missing:
        raise UnsupportedModelError(f"ONNX target: no lowering for op(s) {', '.join(map(repr, missing))}")
    for v in graph.outputs:
        if v.kind != "node":
            raise UnsupportedModelError(f"ONNX target: graph output {v.name!r} is a {v.kind}, not computed")
    inits, transposed = _plan_weights(graph)
    cx = _Ctx(graph, opset, transposed)
    head = _logits_head(graph)
    for n in graph.nodes:
        if id(n) in cx.claimed:
            continue
        cx.scope = n.outputs[0].name if n.outputs else n.op
        if n is head:
            n = _last_rows(cx, n)
        LOWERINGS[n.op](cx, n)
    nodes = _live_nodes(cx.nodes, [v.name for v in graph.outputs])
    # A fused lowering may leave a weight unread (MatMulNBits' default zero points): don't store it.
    read = {name for nd in nodes for name in nd.input}
    inits = [i for i in inits if i.name in read]
    inputs = [_value_info(v) for v in graph.inputs]
    outputs = [_value_info(v) for v in graph.outputs]
    if head is not None:
        inputs.append(helper.make_tensor_value_info(LOGITS_ROWS, onnx.TensorProto.INT64, [1]))
        dims = outputs[[v.name for v in graph.outputs].index("logits")].type.tensor_type.shape.dim
        dims[1].Clear()
        dims[1].dim_param = LOGITS_ROWS
    g = helper.make_graph(nodes, graph.meta.get("name", "edgec"), inputs, outputs)
    opsets = [helper.make_opsetid("", opset)]
    ir_version = helper.find_min_ir_version_for(opsets)
    # Contrib ops (e.g. com.microsoft MatMulNBits from lower_quant.py) need their domain declared.
    opsets += [helper.make_opsetid(d, 1) for d in sorted({nd.domain for nd in nodes} - {"", "ai.onnx"})]
    model = helper.make_model(g, opset_imports=opsets, producer_name="edgec", ir_version=ir_version)
    helper.set_model_props(model, cx.metadata)
    return LoweredModel(model, inits)


def lower(graph: Graph, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Lower `graph` to a self-contained ModelProto (weights inline; under 2 GB only).

    For real models use compile_graph, which writes weights as external data.
    """
    lowered = lower_graph(graph, opset)
    model = lowered.model
    for init in lowered.initializers:
        model.graph.initializer.append(numpy_helper.from_array(init.to_numpy(), init.name))
    return model
