"""A linear's weight in every stored form, and taking its output rows or input columns.

A `linear(x, W, bias?)` reads W [N, K] as a plain weight (fp32 / fp16), as
`cast(weight)` (fp16_weights) or as `dequantize(packed, scales, zeros)`
(quantize, gptq, awq), in edgec.ir.weight_source's terms; a `linear_w8a8(x,
wq, w_scale, bias?)` (smoothquant) stores int8 rows with one scale each.
take_rows / take_cols keep some output features / input features (any
order: a permutation reorders them) in whichever form the linear has:

- rows: rows of the stored weight, of packed codes, scales and zeros, of
  wq and w_scale, and of the bias; exact in every form;
- columns: columns of the stored weight or of wq; for packed weights the
  codes move with their group's scale and zero point, which is exact when
  the weight is quantized per output channel or when the kept columns of
  each new group all come from one old group (whole groups move), and
  refused otherwise (the group format has one scale per group).

Weights other nodes also read are copied first, so tied weights stay intact.
"""
from __future__ import annotations

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node
from edgec.ir.ops import get_op
from edgec.ir.quant import PackedLayout, dequantize, pack, pad_columns, padded_k, unpack
from edgec.ir.weight_source import weight_source

LINEAR_OPS = ("linear", "linear_w8a8")


def lm_head_nodes(graph: Graph) -> set[Node]:
    """The linears the graph outputs read without passing another linear (the logits projection)."""
    found, seen, stack = set(), set(), list(graph.outputs)
    while stack:
        v = stack.pop()
        p = v.producer
        if p is None or p in seen:
            continue
        seen.add(p)
        if p.op == "linear":
            found.add(p)
        else:
            stack.extend(p.inputs)
    return found


def own_weight(graph: Graph, node: Node, index: int = 1) -> None:
    """Give `node` a private copy of its weight input if another node reads it too (tied lm_head)."""
    v = node.inputs[index]
    readers = sum(1 for n in graph.nodes for x in n.inputs if x is v) + graph.outputs.count(v)
    if readers > 1:
        node.inputs[index] = graph.add_weight(v.name, np.array(graph.weight(v)))


def set_weight(graph: Graph, node: Node, array: np.ndarray, index: int = 1) -> None:
    """Replace a node's weight array (never in place: arrays may be shared with the source model)."""
    v = node.inputs[index]
    graph.weights[v.name] = array
    v.shape, v.dtype = tuple(array.shape), array.dtype.name


def reinfer(graph: Graph, nodes) -> None:
    """Recompute output types of `nodes` (in graph order) after their inputs changed shape."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for n in sorted(set(nodes), key=order.__getitem__):
        for out, (dtype, shape) in zip(n.outputs, get_op(n.op).infer(n.inputs, n.attrs)):
            out.dtype, out.shape = dtype, tuple(shape)


def _bias_index(node: Node) -> int:
    return 3 if node.op == "linear_w8a8" else 2


def takeable(node: Node) -> bool:
    """Whether take_rows / take_cols / dense_weight understand this linear's weight and bias."""
    if node.op not in LINEAR_OPS:
        return False
    b = _bias_index(node)
    if len(node.inputs) > b and (node.inputs[b].kind != "weight" or node.inputs[b].rank != 1):
        return False
    if node.op == "linear_w8a8":
        return all(v.kind == "weight" for v in node.inputs[1:3])
    src = weight_source(node.inputs[1])
    return src is not None and src.stored[0].rank == 2


def dense_weight(graph: Graph, node: Node) -> np.ndarray:
    """The W [N, K] a takeable linear computes with, as float32 (for scores; the graph is unchanged)."""
    if node.op == "linear_w8a8":
        wq, scale = (np.asarray(graph.weight(v), np.float32) for v in node.inputs[1:3])
        return wq * scale[:, None]
    src = weight_source(node.inputs[1])
    stored = [np.asarray(graph.weight(v)) for v in src.stored]
    if src.form == "packed":
        return dequantize(*stored[:3], src.layout.bits, src.layout.group, src.layout.k, *stored[3:])
    return stored[0].astype(np.float32)


def _private_source(graph: Graph, node: Node) -> Node:
    """The cast / dequantize making node's weight, first copied if something else reads its output."""
    w = node.inputs[1]
    src = w.producer
    if sum(1 for n in graph.nodes for x in n.inputs if x is w) + graph.outputs.count(w) > 1:
        src = graph.make_node(src.op, list(src.inputs), dict(src.attrs), name=w.name)
        graph.insert_before(node, src)
        node.inputs[1] = src.output
    return src


def _set_stored(graph: Graph, node: Node, arrays: dict[int, np.ndarray]) -> None:
    for i, a in arrays.items():
        own_weight(graph, node, i)
        set_weight(graph, node, np.ascontiguousarray(a), i)


def take_rows(graph: Graph, node: Node, rows: np.ndarray) -> None:
    """Keep output features `rows` of a takeable linear (in that order): weight rows and bias.

    The linear's own output type is left to `reinfer` (its consumers change with it).
    """
    b = _bias_index(node)
    if len(node.inputs) > b:
        _set_stored(graph, node, {b: np.asarray(graph.weight(node.inputs[b]))[rows]})
    if node.op == "linear_w8a8":
        _set_stored(graph, node, {i: np.asarray(graph.weight(node.inputs[i]))[rows] for i in (1, 2)})
        return
    if node.inputs[1].kind == "weight":
        _set_stored(graph, node, {1: np.asarray(graph.weight(node.inputs[1]))[rows]})
        return
    src = _private_source(graph, node)
    _set_stored(graph, src, {i: np.asarray(graph.weight(v))[rows] for i, v in enumerate(src.inputs)})
    reinfer(graph, [src])


def take_cols(graph: Graph, node: Node, cols: np.ndarray) -> None:
    """Keep input features `cols` of a takeable linear (in that order).

    Raises EdgecError for a packed weight whose groups `cols` would split (see the module doc).
    """
    if node.op == "linear_w8a8" or node.inputs[1].kind == "weight":
        _set_stored(graph, node, {1: np.asarray(graph.weight(node.inputs[1]))[:, cols]})
        return
    ws = weight_source(node.inputs[1])
    stored = [np.asarray(graph.weight(v)) for v in ws.stored]
    attrs = {}
    if ws.form == "cast":
        new = {0: stored[0][:, cols]}
    else:
        *arrays, attrs = packed_cols(*stored[:3], ws.layout, cols, f"the quantized weight {ws.stored[0].name}",
                                     mins=stored[3] if len(stored) > 3 else None)
        new = dict(enumerate(arrays))
    src = _private_source(graph, node)
    _set_stored(graph, src, new)
    src.attrs.update(attrs)
    reinfer(graph, [src])


def packed_cols(packed, scales, zeros, layout: PackedLayout, cols, what: str = "a quantized weight", mins=None):
    """Columns `cols` of a packed weight: (packed, scales, zeros[, mins], dequantize attrs), exactly.

    Per output channel (one group per row) any columns can be taken; otherwise
    every new group of `layout.group` columns must come from one old group.
    """
    cols = np.asarray(cols, np.int64)
    g, k = layout.group, len(cols)
    codes = unpack(packed, layout.bits, layout.kp)[:, cols]
    old = cols // g
    g2 = k if g == layout.k else g
    firsts = old[::g2]
    if (np.repeat(firsts, g2)[:k] != old).any():
        raise EdgecError(f"cannot move input channels of {what} (quantized in groups of {g}) so that "
                         f"one group holds channels of several: keep or reorder whole groups of {g}, "
                         "quantize per output channel (group_size = 0), or run this before quantization")
    kp = padded_k(k, g2)
    if kp * layout.bits % 8:
        raise EdgecError(f"{what}: {k} columns of {layout.bits}-bit codes do not fill whole bytes")
    scales, zeros = np.asarray(scales)[:, firsts], np.asarray(zeros)[:, firsts]
    attrs = {"bits": layout.bits, "group_size": g2, "k": k}
    if mins is not None:  # a padding code would be the weight `min`, not zero
        if kp != k:
            raise EdgecError(f"{what}: {k} columns do not fill whole groups of {g2}, and its groups have "
                             "float minima (an imported quantized source): keep whole groups")
        return pack(codes, layout.bits), scales, zeros, np.asarray(mins)[:, firsts], attrs
    codes = pad_columns(codes, kp, zeros[:, -1:])  # padding codes are zero weights
    return pack(codes, layout.bits), scales, zeros, attrs
