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
from edgec.ir.weight_source import weight_source

from .registry import PassResult, register_pass


def _weight_form(node: Node, users) -> tuple | None:
    """A key that equal-form siblings share, or None if node's weight cannot be merged."""
    if node.op == "linear_w8a8":
        wq, ws = node.inputs[1:3]
        if all(v.kind == "weight" and len(users.get(v, [])) == 1 for v in (wq, ws)):
            return ("w8a8",)
        return None
    w = node.inputs[1]
    if not isinstance(w.shape[0], int) or len(users.get(w, [])) != 1:
        return None
    src = weight_source(w)
    return None if src is None else src.key


def _placement(node: Node) -> tuple:
    """Where the linear runs and which memory tiers hold its weights: only equals are merged
    (one linear cannot run on two devices or read from two memories)."""
    stored = [v for v in node.inputs[1:] if v.kind == "weight"]
    src = weight_source(node.inputs[1]) if node.op == "linear" else None
    stored += list(src.stored) if src is not None else []
    return node.meta.placement, tuple(sorted({v.meta.tier or "" for v in stored}))


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
    merged = graph.add_weight(_merged_name([v.name for v in values]), np.concatenate(arrays, axis=0))
    merged.meta = values[0].meta.copy()  # the members share their tier (see _placement)
    return merged


def _merge(graph: Graph, group: list[Node]) -> None:
    first = group[0]
    x = first.inputs[0]
    sizes = [int(n.output.shape[-1]) for n in group]
    new_nodes, dead = [], []
    if first.op == "linear_w8a8":
        ins = [x, _cat(graph, [n.inputs[1] for n in group]), _cat(graph, [n.inputs[2] for n in group])]
    else:
        sources = [weight_source(n.inputs[1]) for n in group]
        parts = [_cat(graph, [s.stored[i] for s in sources]) for i in range(len(sources[0].stored))]
        if sources[0].node is None:  # plain weights
            ins = [x, parts[0]]
        else:  # cast(weight) or dequantize(packed, scales, zeros): the stored tensors merge
            dead = [s.node for s in sources]
            wnode = graph.make_node(dead[0].op, parts, dead[0].attrs)
            wnode.meta = dead[0].meta.copy()  # e.g. the provenance of imported blocks
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
    lin.meta = first.meta.copy()
    split = graph.make_node("split", [lin.output], {"sizes": sizes, "axis": -1})
    for nd in new_nodes + [lin, split]:
        graph.insert_before(first, nd)
    for n, out in zip(group, split.outputs):
        graph.replace_all_uses(n.output, out)
        graph.remove(n)
    for d in dead:  # their only reader was the merged linear
        graph.remove(d)


@register_pass("fuse_linears", min_group=2)
def fuse_linears(graph: Graph, min_group: int = 2) -> PassResult:
    """Merge linears reading the same input (QKV, gate/up) into one linear + split."""
    users = graph.users()
    groups: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        if node.op not in ("linear", "linear_w8a8") or not isinstance(node.output.shape[-1], int):
            continue
        form = _weight_form(node, users)
        bias = _bias_form(node, 3 if node.op == "linear_w8a8" else 2)
        if form is None or bias is None:
            continue
        x = node.inputs[0]
        if x in node.inputs[1:]:
            continue
        groups.setdefault((node.op, id(x), form, _placement(node)), []).append(node)
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
    return PassResult(f"merged {linears} linears into {merged}", {"linears": linears, "merged": merged})
