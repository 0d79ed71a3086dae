"""Map a torch.export ATen graph to edgec's IR.

Each ATen op maps to one or a few generic IR ops; raising passes later find
rms_norm, rotary and gated MLPs in them. Output shapes and dtypes come from the
exporter's fake tensors (`node.meta["val"]`), so symbolic sizes are read, not
recomputed. Only nodes the logits depend on are mapped; dead code (position
bookkeeping transformers leaves behind) never reaches the IR.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import torch

from ..errors import UnsupportedModelError
from ..ir import Graph, Value
from ..ir.ops import INT_MAX
from . import complex_pairs
from .moe import standard_layout

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64",
           torch.int32: "int32", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
           torch.bfloat16: "float32"}

_IDENTITY = {"aten.alias.default", "aten.clone.default", "aten.contiguous.default",
             "aten.detach.default", "aten.lift_fresh_copy.default", "aten.dropout.default",
             "aten._to_copy.default", "aten.to.dtype", "aten.to.device", "aten.to.dtype_layout",
             "aten.type_as.default"}
_UNARY = {"aten.neg.default": "neg", "aten.rsqrt.default": "rsqrt", "aten.sqrt.default": "sqrt",
          "aten.exp.default": "exp", "aten.tanh.default": "tanh", "aten.sin.default": "sin",
          "aten.cos.default": "cos", "aten.relu.default": "relu", "aten.sigmoid.default": "sigmoid",
          "aten.silu.default": "silu"}
_BINARY = {"aten.add.Tensor": "add", "aten.sub.Tensor": "sub", "aten.mul.Tensor": "mul",
           "aten.div.Tensor": "div", "aten.pow.Tensor_Scalar": "pow", "aten.pow.Tensor_Tensor": "pow",
           "aten.maximum.default": "maximum"}


class Importer:
    def __init__(self, ep: torch.export.ExportedProgram, arch: str):
        self.ep = ep
        self.arch = arch
        self.graph = Graph()
        self.env: dict[Any, Any] = {}
        self.symbols: dict[str, str] = {}

    # -- helpers -------------------------------------------------------------
    def fail(self, node, why: str):
        raise UnsupportedModelError(f"architecture {self.arch!r}: {why} (at {node.format_node()[:160]})")

    def dim(self, d) -> int | str:
        if isinstance(d, int):
            return d
        key = str(d)
        if key not in self.symbols:
            raise UnsupportedModelError(f"architecture {self.arch!r}: symbolic size {key} is not "
                                        "the sequence length")
        return self.symbols[key]

    def meta(self, node) -> tuple[str, tuple]:
        val = node.meta["val"]
        return _DTYPES[val.dtype], tuple(self.dim(d) for d in val.shape)

    def const(self, value, dtype: str) -> Value:
        return self.graph.op("const", value=value, dtype=dtype)

    def tensor(self, arg, dtype: str) -> Value:
        """An IR value for an argument that may be a python scalar."""
        if isinstance(arg, Value):
            return arg if arg.dtype == dtype else self.graph.op("cast", arg, dtype=dtype)
        if isinstance(arg, (bool, int, float)):
            return self.const(float(arg) if dtype.startswith("float") else int(arg), dtype)
        raise TypeError(f"unexpected argument {arg!r}")

    def arg(self, a):
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a)
        return a

    def static_shape(self, node, keep_symbolic_as: int) -> list[int]:
        """Shape from meta with the symbolic dims replaced (-1 for reshape, -1 for expand)."""
        _, shape = self.meta(node)
        sym = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        if len(sym) > 1:
            self.fail(node, "more than one symbolic dimension in a reshape/expand")
        return [keep_symbolic_as if not isinstance(d, int) else d for d in shape]

    # -- main ----------------------------------------------------------------
    def run(self) -> Graph:
        ep, g = self.ep, self.graph
        sig = ep.graph_signature
        params = dict(sig.inputs_to_parameters)
        params.update(sig.inputs_to_buffers)
        params.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}))
        fx = ep.graph
        output_node = next(n for n in fx.nodes if n.op == "output")
        live = self._live(output_node)
        for node in fx.nodes:
            if node.op != "placeholder":
                continue
            if node.name in params:
                if node not in live:
                    continue
                fqn = params[node.name]
                t = ep.state_dict.get(fqn)
                if t is None:
                    t = ep.constants[fqn]
                t = t.detach()
                if t.dtype == torch.bfloat16:
                    t = t.float()
                self.env[node] = g.add_weight(fqn, t.contiguous().numpy())
            else:
                val = node.meta.get("val")
                if not isinstance(val, torch.Tensor):
                    continue
                if val.dim() == 2 and not isinstance(val.shape[1], int):
                    self.symbols.setdefault(str(val.shape[1]), "seq")
                self.env[node] = g.add_input(node.name, *self.meta(node))
        for node in fx.nodes:
            if node.op != "call_function" or node not in live:
                continue
            self.env[node] = self.convert(node)
        outs = output_node.args[0]
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        logits = self.env[outs[0]]
        if logits.dtype != "float32" or logits.kind != "node":
            logits = g.op("cast", logits, dtype="float32")
        logits.name = g.fresh_name("logits")
        g.outputs = [logits]
        return g

    def _live(self, output_node) -> set:
        live = set()
        outs = output_node.args[0]
        stack = list(outs[:1]) if isinstance(outs, (list, tuple)) else [outs]
        while stack:
            n = stack.pop()
            if n in live:
                continue
            live.add(n)
            stack.extend(n.all_input_nodes)
        return live

    def convert(self, node):
        target = node.target
        name = str(target)
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        g = self.graph
        if target is operator.getitem:
            return args[0][args[1]]
        if name == "aten.sym_size.int":
            return node.meta["val"]
        if complex_pairs.involves_complex(node):
            return complex_pairs.convert(self, node, args, kwargs)
        fn = _HANDLERS.get(name)
        if fn is not None:
            return fn(self, node, args, kwargs)
        if name in _IDENTITY:
            dtype, _ = self.meta(node)
            x = args[0]
            return x if x.dtype == dtype else g.op("cast", x, dtype=dtype)
        if name in _UNARY:
            return g.op(_UNARY[name], args[0])
        if name in _BINARY:
            dtype, _ = self.meta(node)
            if kwargs.get("alpha", 1) != 1:
                self.fail(node, "add/sub with alpha != 1")
            a, b = (self.tensor(x, dtype) for x in args[:2])
            return g.op(_BINARY[name], a, b)
        self.fail(node, f"unsupported op {name}")


_HANDLERS: dict[str, Callable] = {}


def handles(*names):
    def deco(fn):
        for n in names:
            _HANDLERS[n] = fn
        return fn
    return deco


@handles("aten.embedding.default")
def _embedding(im, node, args, kw):
    return im.graph.op("embedding", args[0], args[1])


@handles("aten.index.Tensor")
def _index(im, node, args, kw):
    """table[ids] on a constant 2-D table (GPT-J's sin/cos rows at the positions) is an embedding."""
    x, idx = args[0], args[1]
    if x.kind != "weight" or x.rank != 2 or len(idx) != 1 or not isinstance(idx[0], Value):
        im.fail(node, "advanced indexing other than rows of a constant table")
    return im.graph.op("embedding", x, idx[0])


@handles("aten.linear.default")
def _linear(im, node, args, kw):
    x, w = args[:2]
    b = args[2] if len(args) > 2 else kw.get("bias")
    return im.graph.op("linear", x, w, *([b] if b is not None else []))


@handles("aten.addmm.default")
def _addmm(im, node, args, kw):
    """GPT-2's Conv1D: bias + x @ W with W [in, out]; becomes linear with W^T."""
    bias, x, w = args[:3]
    if kw.get("beta", 1) != 1 or kw.get("alpha", 1) != 1:
        im.fail(node, "addmm with alpha/beta != 1")
    g = im.graph
    if w.kind == "weight":
        wt = g.add_weight(w.name + ".T", np.ascontiguousarray(np.asarray(g.weight(w)).T))
        return g.op("linear", x, wt, bias)
    return g.op("add", g.op("matmul", x, w), bias)


@handles("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(im, node, args, kw):
    """x @ W.T of a weight W (Falcon's FalconLinear) is a linear, so the passes see it as one."""
    x, y = args[0], args[1]
    t = y.producer
    if t is not None and t.op == "permute" and t.attrs["perm"] == [1, 0] and t.inputs[0].kind == "weight":
        return im.graph.op("linear", x, t.inputs[0])
    return im.graph.op("matmul", x, y)


@handles("aten.gelu.default")
def _gelu(im, node, args, kw):
    return im.graph.op("gelu", args[0], approximate=kw.get("approximate", "none"))


@handles("aten.mean.dim")
def _mean(im, node, args, kw):
    dims = args[1] if len(args) > 1 else kw.get("dim")
    keep = args[2] if len(args) > 2 else kw.get("keepdim", False)
    return im.graph.op("mean", args[0], axes=list(dims), keepdim=bool(keep))


@handles("aten._softmax.default", "aten.softmax.int")
def _softmax(im, node, args, kw):
    return im.graph.op("softmax", args[0], axis=args[1])


@handles("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default",
         "aten.squeeze.dim", "aten.squeeze.dims", "aten.flatten.using_ints", "aten.unflatten.int")
def _reshape(im, node, args, kw):
    return im.graph.op("reshape", args[0], shape=im.static_shape(node, -1))


@handles("aten.transpose.int")
def _transpose(im, node, args, kw):
    x = args[0]
    perm = list(range(x.rank))
    a, b = args[1] % x.rank, args[2] % x.rank
    perm[a], perm[b] = perm[b], perm[a]
    return im.graph.op("permute", x, perm=perm)


@handles("aten.permute.default")
def _permute(im, node, args, kw):
    x = args[0]
    return im.graph.op("permute", x, perm=[p % x.rank for p in args[1]])


@handles("aten.numpy_T.default", "aten.t.default")
def _reverse_axes(im, node, args, kw):
    x = args[0]
    return im.graph.op("permute", x, perm=list(range(x.rank))[::-1])


@handles("aten.unsqueeze.default")
def _unsqueeze(im, node, args, kw):
    return im.graph.op("unsqueeze", args[0], axis=args[1])


@handles("aten.expand.default")
def _expand(im, node, args, kw):
    x = args[0]
    _, out = im.meta(node)
    pad = (1,) * (len(out) - x.rank) + tuple(x.shape)
    shape = []
    for have, want in zip(pad, out):
        if isinstance(want, int):
            shape.append(want)
        elif have == want:
            shape.append(-1)
        else:
            im.fail(node, "expand of a size-1 dim to the symbolic sequence length")
    return im.graph.op("expand", x, shape=shape)


@handles("aten.repeat_interleave.self_int")
def _repeat_interleave(im, node, args, kw):
    """Each element `repeats` times along `dim`: unsqueeze after it, expand, merge (interleaved RoPE tables)."""
    x, repeats = args[0], args[1]
    dim = args[2] if len(args) > 2 else kw.get("dim")
    if dim is None or not isinstance(repeats, int):
        im.fail(node, "repeat_interleave without a dim or with tensor repeats")
    axis = dim % x.rank
    g = im.graph
    u = g.op("unsqueeze", x, axis=axis + 1)
    shape = [d if isinstance(d, int) else -1 for d in u.shape]
    shape[axis + 1] = repeats
    return g.op("reshape", g.op("expand", u, shape=shape), shape=im.static_shape(node, -1))


def _sym_bound(im, node, x, axis, v, default):
    if v is None:
        return default
    if isinstance(v, int):
        return v
    # a SymInt: only "up to the full (symbolic) length" is supported
    if im.dim(v) == x.shape[axis]:
        return INT_MAX
    im.fail(node, f"slice bound {v} depends on the sequence length")


@handles("aten.slice.Tensor")
def _slice(im, node, args, kw):
    x = args[0]
    axis = (args[1] if len(args) > 1 else kw.get("dim", 0)) % x.rank
    start = args[2] if len(args) > 2 else kw.get("start")
    end = args[3] if len(args) > 3 else kw.get("end")
    step = args[4] if len(args) > 4 else kw.get("step", 1)
    start = _sym_bound(im, node, x, axis, start, 0)
    end = _sym_bound(im, node, x, axis, end, INT_MAX)
    if start == 0 and end >= INT_MAX // 2 and step == 1:
        return x
    return im.graph.op("slice", x, axis=axis, start=start, end=min(end, INT_MAX), step=step)


@handles("aten.select.int")
def _select(im, node, args, kw):
    x, axis, i = args[0], args[1] % args[0].rank, args[2]
    s = im.graph.op("slice", x, axis=axis, start=i, end=i + 1 if i != -1 else INT_MAX)
    return im.graph.op("reshape", s, shape=im.static_shape(node, -1))


@handles("aten.unbind.int")
def _unbind(im, node, args, kw):
    x = args[0]
    axis = (args[1] if len(args) > 1 else kw.get("dim", 0)) % x.rank
    n = x.shape[axis]
    if not isinstance(n, int):
        im.fail(node, "unbind along the sequence axis")
    shape = [d if isinstance(d, int) else -1 for i, d in enumerate(x.shape) if i != axis]
    return [im.graph.op("reshape", s, shape=shape) for s in _slices(im, x, axis, [1] * n)]


@handles("aten.cat.default")
def _cat(im, node, args, kw):
    dtype, _ = im.meta(node)
    xs = [im.tensor(x, dtype) for x in args[0]]
    xs = [x for x in xs if 0 not in x.shape]
    axis = args[1] if len(args) > 1 else kw.get("dim", 0)
    return xs[0] if len(xs) == 1 else im.graph.op("concat", *xs, axis=axis % xs[0].rank)


@handles("aten.stack.default")
def _stack(im, node, args, kw):
    dtype, _ = im.meta(node)
    xs = [im.tensor(x, dtype) for x in args[0]]
    axis = (args[1] if len(args) > 1 else kw.get("dim", 0)) % (xs[0].rank + 1)
    xs = [im.graph.op("unsqueeze", x, axis=axis) for x in xs]
    return xs[0] if len(xs) == 1 else im.graph.op("concat", *xs, axis=axis)


def _split_points(x, axis, sizes):
    out, start = [], 0
    for s in sizes:
        out.append((start, start + s))
        start += s
    return out


def _slices(im, x, axis, sizes):
    return [im.graph.op("slice", x, axis=axis, start=a, end=b)
            for a, b in _split_points(x, axis, sizes)]


@handles("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default")
def _split(im, node, args, kw):
    x = args[0]
    axis = (args[2] if len(args) > 2 else kw.get("dim", 0)) % x.rank
    n = x.shape[axis]
    if not isinstance(n, int):
        im.fail(node, "split along the sequence axis")
    if str(node.target) == "aten.chunk.default":
        size = -(-n // args[1])
        sizes = [min(size, n - i) for i in range(0, n, size)]
    elif isinstance(args[1], int):
        sizes = [min(args[1], n - i) for i in range(0, n, args[1])]
    else:
        sizes = list(args[1])
    return _slices(im, x, axis, sizes)


@handles("aten.layer_norm.default")
def _layer_norm(im, node, args, kw):
    x, shape = args[0], args[1]
    w = args[2] if len(args) > 2 else kw.get("weight")
    b = args[3] if len(args) > 3 else kw.get("bias")
    eps = args[4] if len(args) > 4 else kw.get("eps", 1e-5)
    if len(shape) != 1:
        im.fail(node, "layer_norm over more than the last axis")
    if w is None and b is not None:
        w = im.graph.add_weight("layer_norm.ones", np.ones(shape, np.float32))
    ins = [x] + [v for v in (w, b) if v is not None]
    return im.graph.op("layer_norm", *ins, eps=float(eps))


def _not_read_later(im, node) -> None:
    """An in-place op imports as its functional form only if nothing after it reads the old input."""
    n = node.next
    while n.op != "output":
        if node.args[0] in n.all_input_nodes:
            im.fail(node, "an in-place op whose input is read again afterwards")
        n = n.next


@handles("aten.add_.Tensor", "aten.mul_.Tensor", "aten.div_.Tensor")
def _inplace_binary(im, node, args, kw):
    """`a += b` (Falcon's parallel attention + MLP): the functional op, if nothing later reads the old `a`."""
    _not_read_later(im, node)
    dtype, _ = im.meta(node)
    if kw.get("alpha", 1) != 1:
        im.fail(node, "add_ with alpha != 1")
    a, b = (im.tensor(x, dtype) for x in args[:2])
    return im.graph.op(_BINARY[str(node.target).replace("_.", ".")], a, b)


@handles("edgec.attention.default")
def _attention(im, node, args, kw):
    q, k, v, scale, softcap, window, *rest = args
    sinks = rest[0] if rest else kw.get("sinks")
    if sinks is not None:  # a few logits (one per head): an attribute, read from the weight now
        if sinks.kind != "weight":
            im.fail(node, "attention sinks computed from the input")
        sinks = tuple(float(x) for x in np.asarray(im.graph.weight(sinks), np.float32).reshape(-1))
    return im.graph.op("attention", q, k, v, scale=float(scale), softcap=float(softcap),
                       window=int(window), sinks=sinks or ())


def _converted(im, n):
    """The IR value of fx node n, converted (with what it needs) now if the liveness walk skipped it."""
    if n not in im.env:
        if n.op != "call_function":
            im.fail(n, "a value copied into a buffer needs an input the logits do not use")
        for a in n.all_input_nodes:
            _converted(im, a)
        im.env[n] = im.convert(n)
    return im.env[n]


@handles("aten.new_empty.default")
def _new_empty(im, node, args, kw):
    """An empty tensor filled slice by slice with copy_ (DeepSeek's MLA key: each head's nope part, then
    the shared rope part) is the concat of what is copied in. The copies have no users, so the liveness
    walk skipped them and their sources: those are converted here."""
    dtype, shape = im.meta(node)
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    pieces, readers = [], []  # pieces: (start, end, axis, the copy_ into that slice)
    for view in node.users:
        copies = [u for u in view.users if str(u.target) == "aten.copy_.default" and u.args[0] is view]
        if str(view.target) != "aten.slice.Tensor" or len(copies) != 1 or len(view.users) != 1:
            readers.append(view)
            continue
        axis, start, end, step = (list(view.args[1:]) + [0, 0, None, 1][len(view.args) - 1:])[:4]
        axis %= len(shape)
        end = shape[axis] if end is None else end
        if step != 1 or not all(isinstance(v, int) for v in (start, end, shape[axis])):
            im.fail(view, "a strided or sequence-long slice of an empty tensor")
        pieces.append((start, min(end, shape[axis]), axis, copies[0]))
    pieces.sort(key=lambda p: p[0])
    axis = pieces[0][2] if pieces else None
    tiled = (bool(pieces) and {p[2] for p in pieces} == {axis} and pieces[0][0] == 0
             and pieces[-1][1] == shape[axis] and all(a[1] == b[0] for a, b in zip(pieces, pieces[1:])))
    if not tiled or any(order[r] < order[p[3]] for r in readers for p in pieces):
        im.fail(node, "an empty tensor not filled by copies into consecutive slices along one axis before it is read")
    srcs = []
    for start, end, _, copy in pieces:
        src = im.tensor(_converted(im, copy.args[1]), dtype)
        want = tuple(end - start if i == axis else d for i, d in enumerate(shape))
        if src.shape != want:
            im.fail(copy, f"a copy of {src.shape} into a slice of {want}")
        srcs.append(src)
    return srcs[0] if len(srcs) == 1 else im.graph.op("concat", *srcs, axis=axis)


# -- mixture of experts: the router's reductions and top-k, and edgec's experts op (frontend/moe.py);
# passes/raise_moe.py folds them into one `moe` op
@handles("aten.sum.dim_IntList")
def _sum(im, node, args, kw):
    dims = args[1] if len(args) > 1 else kw.get("dim")
    keep = args[2] if len(args) > 2 else kw.get("keepdim", False)
    if dims is None or kw.get("dtype") is not None:
        im.fail(node, "sum over every axis or with a dtype")
    return im.graph.op("sum", args[0], axes=list(dims), keepdim=bool(keep))


@handles("aten.topk.default")
def _topk(im, node, args, kw):
    x, k = args[0], args[1]
    axis = args[2] if len(args) > 2 else kw.get("dim", -1)
    largest = args[3] if len(args) > 3 else kw.get("largest", True)
    if not largest:
        im.fail(node, "top-k of the smallest values")
    return tuple(im.graph.add_node("topk", [x], {"k": int(k), "axis": int(axis)}).outputs)


@handles("edgec.moe_experts.default")
def _moe_experts(im, node, args, kw):
    names = ("gate_up_bias", "down_bias", "transposed", "interleaved", "alpha", "limit")
    x, index, weight, gate_up, down, act, *rest = args
    opt = {**dict(zip(names, rest)), **kw}
    gate_up_bias, down_bias = opt.get("gate_up_bias"), opt.get("down_bias")
    if opt.get("transposed") or opt.get("interleaved"):  # rewritten once into the moe op's layout
        moved = [v for v in (gate_up, down, gate_up_bias) if v is not None]
        if any(v.kind != "weight" for v in moved):
            im.fail(node, "expert weights computed from the input")
        layout = standard_layout(*(None if v is None else np.asarray(im.graph.weight(v))
                                   for v in (gate_up, down, gate_up_bias)),
                                 bool(opt.get("transposed")), bool(opt.get("interleaved")))
        gate_up, down, gate_up_bias = (None if v is None else im.graph.add_weight(v.name, np.ascontiguousarray(a))
                                       for v, a in zip((gate_up, down, gate_up_bias), layout))
    biases = [b for b in (gate_up_bias, down_bias) if b is not None]
    return im.graph.op("moe_experts", x, index, weight, gate_up, down, *biases, act=act,
                       alpha=float(opt.get("alpha", 1.0)), limit=float(opt.get("limit", 0.0)))


# DeepSeek-V3's grouped top-k masks the experts of the groups it drops (zeros_like, scatter_, masked_fill)
# and reads the chosen experts' scores back (gather); Phi-MoE's sparsemixer picks by max and masks by a
# relative distance (abs, clamp, gt).
@handles("aten.max.dim")
def _max_dim(im, node, args, kw):
    """(values, indices) of the largest along a dim: a top-1."""
    x = args[0]
    axis = (args[1] if len(args) > 1 else kw["dim"]) % x.rank
    values, index = im.graph.add_node("topk", [x], {"k": 1, "axis": axis}).outputs
    if args[2] if len(args) > 2 else kw.get("keepdim", False):
        return values, index
    dims = [d if isinstance(d, int) else -1 for d in values.shape[:axis] + values.shape[axis + 1:]]
    return tuple(im.graph.op("reshape", v, shape=dims) for v in (values, index))


@handles("aten.gather.default")
def _gather(im, node, args, kw):
    x, dim, index = args[:3]
    if kw.get("sparse_grad"):
        im.fail(node, "gather with sparse_grad")
    return im.graph.op("gather", x, index, axis=dim % x.rank)


@handles("aten.scatter.value", "aten.scatter_.value")
def _scatter(im, node, args, kw):
    x, dim, index, value = args[:4]
    if str(node.target).endswith("_.value"):
        _not_read_later(im, node)
    return im.graph.op("scatter", x, index, axis=dim % x.rank, value=float(value))


@handles("aten.masked_fill.Scalar")
def _masked_fill(im, node, args, kw):
    return im.graph.op("masked_fill", args[0], args[1], value=float(args[2]))


@handles("aten.gt.Scalar", "aten.gt.Tensor")
def _greater(im, node, args, kw):
    x = args[0]
    return im.graph.op("greater", x, im.tensor(args[1], x.dtype))


@handles("aten.abs.default")
def _abs(im, node, args, kw):
    return im.graph.op("abs", args[0])


@handles("aten.bitwise_not.default", "aten.logical_not.default")
def _logical_not(im, node, args, kw):
    if args[0].dtype != "bool":
        im.fail(node, f"bitwise not of {args[0].dtype}")
    return im.graph.op("logical_not", args[0])


@handles("aten.zeros_like.default", "aten.ones_like.default", "aten.full_like.default")
def _full_like(im, node, args, kw):
    value = {"aten.zeros_like.default": 0.0, "aten.ones_like.default": 1.0}.get(str(node.target))
    dtype, _ = im.meta(node)
    if dtype != args[0].dtype:
        im.fail(node, f"{node.target} changing the dtype to {dtype}")
    return im.graph.op("full_like", args[0], value=float(args[1]) if value is None else value)


@handles("aten.clamp.Tensor", "aten.clamp_min.Tensor")
def _clamp_min(im, node, args, kw):
    """clamp(x, min=m) with a tensor m: maximum(x, m)."""
    x, low = args[0], args[1] if len(args) > 1 else kw.get("min")
    if (args[2] if len(args) > 2 else kw.get("max")) is not None or low is None:
        im.fail(node, "clamp with an upper bound")
    return im.graph.op("maximum", x, im.tensor(low, x.dtype))


@handles("aten.concat.default")
def _concat(im, node, args, kw):
    return _cat(im, node, args, kw)


# Phi-MoE's rotary embedding computes its inverse frequencies in forward: constants
@handles("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def _arange(im, node, args, kw):
    if not all(isinstance(a, (int, float)) for a in args):
        im.fail(node, "arange with a bound that depends on the input")
    dtype, _ = im.meta(node)
    return im.const(np.arange(*args).astype(dtype).tolist(), dtype)


@handles("aten.pow.Scalar")
def _pow_scalar(im, node, args, kw):
    dtype, _ = im.meta(node)
    return im.graph.op("pow", im.tensor(args[0], dtype), args[1])


@handles("aten.reciprocal.default")
def _reciprocal(im, node, args, kw):
    return im.graph.op("div", im.tensor(1.0, args[0].dtype), args[0])


def to_ir(ep: torch.export.ExportedProgram, arch: str) -> Graph:
    return Importer(ep, arch).run()
