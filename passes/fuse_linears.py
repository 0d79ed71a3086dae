"""Merge sibling linears (QKV, gate/up) into one linear + split.

Linears that read the same activation (q/k/v projections, an MLP's gate and
up) become one linear over row-concatenated weights, followed by `split`. At
batch 1 decode every linear is a matrix-vector product bound by launching
and memory streaming, so one call over [Nq+Nk+Nv, K] beats three.

Weights merge when every member has the same form: plain weights of one
dtype, `cast(weight)` (fp16 storage), `dequantize(packed, scales, zeros)`
with the same bits/group_size/k (rows of packed, scales and zeros
concatenate), or `linear_w8a8` (int8 rows and per-channel scales
concatenate; the per-token activation quantization is shared). Biases are
concatenated; a member without one gets zeros. Runs after compression, which
needs the separate projections (GPTQ/AWQ/SmoothQuant match q/k/v by name).
"""
from __future__ import annotations

import os

import numpy as np

from edgec.ir import Graph, Node, Value

from .registry import register_pass


def _weight_form(graph: Graph, node: Node, users) -> tuple | None:
    """A key that equal-form siblings share, or None if node's weight cannot be merged."""
    if node.op == "linear_w8a8":
        wq, ws = node.inputs[1:3]
        if all(v.kind == "weight" and len(users.get(v, [])) == 1 for v in (wq, ws)):
            return ("w8a8",)
        return None
    w = node.inputs[1]
    if not isinstance(w.shape[0], int) or len(users.get(w, [])) != 1:
        return None
    if w.kind == "weight":
        return ("plain", w.dtype)
    src = w.producer
    if src is None or any(v.kind != "weight" for v in src.inputs):
        return None
    if src.op == "cast":
        return ("cast", src.inputs[0].dtype, src.attrs["dtype"])
    if src.op == "dequantize":
        a = src.attrs
        return ("dequantize", a["bits"], a["group_size"], a["k"])
    return None


def _bias_form(node: Node, first: int) -> str | None:
    """'none', 'weight', or None if the bias is something we do not merge."""
    if len(node.inputs) <= first:
        return "none"
    b = node.inputs[first]
    return "weight" if b.kind == "weight" and b.rank == 1 else None


def _merged_name(names: list[str]) -> str:
    """q_proj.weight, k_proj.weight, v_proj.weight (same prefix) -> ...q_k_v_proj.weight."""
    pre = os.path.commonprefix(names)
    pre = pre[:pre.rfind(".") + 1] if "." in pre else ""
    rest = [n[len(pre):] for n in names]
    suf = os.path.commonprefix([r[::-1] for r in rest])[::-1]
    mids = [r[:len(r) - len(suf)] for r in rest]
    return pre + "_".join(mids) + suf if all(mids) else pre + "merged" + suf


def _cat(graph: Graph, values: list[Value]) -> Value:
    """A new weight: the members' weights concatenated along rows."""
    arrays = [np.asarray(graph.weight(v)) for v in values]
    return graph.add_weight(_merged_name([v.name for v in values]), np.concatenate(arrays, axis=0))


def _merge(graph: Graph, group: list[Node]) -> None:
    first = group[0]
    x, w = first.inputs[:2]
    sizes = [int(n.output.shape[-1]) for n in group]
    new_nodes, dead = [], []
    if first.op == "linear_w8a8":
        ins = [x, _cat(graph, [n.inputs[1] for n in group]), _cat(graph, [n.inputs[2] for n in group])]
    elif w.kind == "weight":
        ins = [x, _cat(graph, [n.inputs[1] for n in group])]
    else:  # cast(weight) or dequantize(packed, scales, zeros): merge the stored tensors
        dead = [n.inputs[1].producer for n in group]
        parts = [_cat(graph, [d.inputs[i] for d in dead]) for i in range(len(dead[0].inputs))]
        wnode = graph.make_node(dead[0].op, parts, dead[0].attrs)
        new_nodes.append(wnode)
        ins = [x, wnode.output]
    bias_at = len(ins)
    biases = [n.inputs[bias_at] if len(n.inputs) > bias_at else None for n in group]
    if any(b is not None for b in biases):
        dtype = next(b.dtype for b in biases if b is not None)
        parts = [np.zeros(size, dtype) if b is None else np.asarray(graph.weight(b))
                 for b, size in zip(biases, sizes)]
        name = _merged_name([b.name for b in biases]) if all(biases) else ins[1].name + ".bias"
        ins.append(graph.add_weight(name, np.concatenate(parts).astype(dtype)))
    lin = graph.make_node(first.op, ins)
    split = graph.make_node("split", [lin.output], {"sizes": sizes, "axis": -1})
    for nd in new_nodes + [lin, split]:
        graph.insert_before(first, nd)
    for n, out in zip(group, split.outputs):
        graph.replace_all_uses(n.output, out)
        graph.remove(n)
    for d in dead:  # their only reader was the merged linear
        graph.remove(d)


@register_pass("fuse_linears", min_group=2)
def fuse_linears(graph: Graph, min_group: int = 2) -> str:
    """Merge linears reading the same input (QKV, gate/up) into one linear + split."""
    users = graph.users()
    groups: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        if node.op not in ("linear", "linear_w8a8") or not isinstance(node.output.shape[-1], int):
            continue
        form = _weight_form(graph, node, users)
        bias = _bias_form(node, 3 if node.op == "linear_w8a8" else 2)
        if form is None or bias is None:
            continue
        x = node.inputs[0]
        if x in node.inputs[1:]:
            continue
        groups.setdefault((node.op, id(x), form), []).append(node)
    merged = linears = 0
    for group in groups.values():
        if len(group) < max(2, min_group):
            continue
        bias_dtypes = {n.inputs[-1].dtype for n in group if len(n.inputs) > (3 if n.op == "linear_w8a8" else 2)}
        if len(bias_dtypes) > 1:
            continue
        _merge(graph, group)
        merged += 1
        linears += len(group)
    graph.prune_weights()
    return f"merged {linears} linears into {merged}"
