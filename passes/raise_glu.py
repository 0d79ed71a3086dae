"""Raise gated MLP activations: act(gate) * up -> glu(gate, up, act) (SwiGLU, GeGLU, ReGLU)."""
from edgec.ir import Graph

from .match import producer, replace
from .registry import PassResult, register_pass

_ACTS = {"silu": "silu", "relu": "relu", ("gelu", "none"): "gelu", ("gelu", "tanh"): "gelu_tanh"}


@register_pass("raise_glu")
def raise_glu(graph: Graph) -> PassResult:
    """Fuse act(gate) * up into one glu op."""
    users = graph.users()
    count = 0
    for node in list(graph.nodes):
        if node.op != "mul":
            continue
        for g, u in (node.inputs, node.inputs[::-1]):
            act = producer(g, "silu", "gelu", "relu")
            if act is None or len(users.get(g, [])) != 1 or g.shape != u.shape:
                continue
            key = act.op if act.op in ("silu", "relu") else ("gelu", act.attrs["approximate"])
            replace(graph, node, graph.make_node("glu", [act.inputs[0], u], {"act": _ACTS[key]}))
            count += 1
            break
    return PassResult(f"raised {count} glu", {"glu": count})
