"""Raise the rms_norm pattern transformers' RMSNorm modules trace into.

    w * cast?(x * rsqrt(mean(x^2, -1, keepdim) + eps))   ->   rms_norm(x, w, eps)

`x` may itself be a cast to fp32. Gemma's `(1 + w)` has been folded to a
weight by fold_constants by the time this runs.
"""
from edgec.ir import Graph

from .match import last_axis, producer, replace, scalar
from .registry import PassResult, register_pass


def _match(graph: Graph, node):
    a, b = node.inputs
    for w, normed in ((a, b), (b, a)):
        if w.kind != "weight" or w.rank != 1:
            continue
        inner = producer(normed, "cast")
        n = producer(inner.inputs[0] if inner else normed, "mul")
        if n is None:
            continue
        for x, r in (n.inputs, n.inputs[::-1]):
            rs = producer(r, "rsqrt")
            add = rs and producer(rs.inputs[0], "add")
            if not add:
                continue
            for m, e in (add.inputs, add.inputs[::-1]):
                mean = producer(m, "mean")
                eps = scalar(graph, e)
                if mean is None or eps is None or not mean.attrs["keepdim"]:
                    continue
                if len(mean.attrs["axes"]) != 1 or not last_axis(x, mean.attrs["axes"][0]):
                    continue
                p = producer(mean.inputs[0], "pow")
                if p is None or p.inputs[0] is not x or scalar(graph, p.inputs[1]) != 2.0:
                    continue
                if w.shape[0] != x.shape[-1] or w.dtype != x.dtype:
                    continue
                return x, w, eps
    return None


@register_pass("raise_rms_norm")
def raise_rms_norm(graph: Graph) -> PassResult:
    """Replace the traced RMSNorm arithmetic with one rms_norm op."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "mul":
            continue
        m = _match(graph, node)
        if m is None:
            continue
        x, w, eps = m
        new = graph.make_node("rms_norm", [x, w], {"eps": eps})
        if new.output.dtype != node.output.dtype:
            continue
        replace(graph, node, new)
        count += 1
    return PassResult(f"raised {count} rms_norm", {"rms_norm": count})
