"""Constant folding: evaluate nodes whose inputs are all constants at compile time.

This turns e.g. Gemma's `1 + norm.weight` into one weight, so raising passes
see a plain weighted rms_norm. Results larger than their inputs (an expand of
a constant) are left alone so the artifact does not grow.
"""
import numpy as np

from edgec.ir import Graph
from edgec.ir.ops import get_op

from .match import is_const
from .registry import PassResult, register_pass


@register_pass("fold_constants")
def fold_constants(graph: Graph) -> PassResult:
    """Evaluate all-constant subgraphs into weights."""
    folded = 0
    for node in list(graph.nodes):
        if node.op == "const" or not node.inputs or not all(is_const(v) for v in node.inputs):
            continue
        if len(node.outputs) != 1:
            continue
        args = [np.asarray(graph.weight(v)) if v.kind == "weight" else
                get_op("const").ref(**v.producer.attrs) for v in node.inputs]
        result = np.asarray(get_op(node.op).ref(*args, **node.attrs))
        if result.size > max(a.size for a in args):
            continue
        hint = next((v.name for v in node.inputs if v.kind == "weight"), node.output.name)
        w = graph.add_weight(f"{hint}.{node.op}", np.ascontiguousarray(result))
        graph.replace_all_uses(node.output, w)
        graph.remove(node)
        folded += 1
    return PassResult(f"folded {folded} nodes", {"folded_nodes": folded})
