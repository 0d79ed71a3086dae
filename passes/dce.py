"""Dead code elimination: drop nodes whose outputs nothing reads, then unused weights."""
from edgec.ir import Graph

from .registry import register_pass


@register_pass("dce")
def dce(graph: Graph) -> str:
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
    return f"removed {removed} nodes, {before - len(graph.weight_values)} weights"
