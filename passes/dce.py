"""Dead code elimination: drop nodes whose outputs nothing reads, then unused weights."""
from edgec.ir import Graph

from .registry import PassResult, register_pass


@register_pass("dce")
def dce(graph: Graph) -> PassResult:
    """Remove nodes and weights the outputs do not depend on."""
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    removed = len(graph.nodes) - len(kept)
    graph.nodes = list(reversed(kept))
    before = len(graph.weight_values)
    graph.prune_weights()
    weights = before - len(graph.weight_values)
    return PassResult(f"removed {removed} nodes, {weights} weights",
                      {"removed_nodes": removed, "removed_weights": weights})
