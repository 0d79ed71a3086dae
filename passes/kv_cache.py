"""Give every attention a KV cache so one graph serves prefill and decode.

Each attention gains inputs past_key.N / past_value.N ([1, kv_heads, past,
head_dim]) and outputs present_key.N / present_value.N ([1, kv_heads,
past+seq, head_dim]). position_ids stay a graph input, so callers pass
absolute positions at every step.
"""
from edgec.ir import Graph

from .registry import register_pass


@register_pass("kv_cache")
def kv_cache(graph: Graph) -> str:
    """Add past/present KV tensors to every attention op."""
    layers = 0
    for node in list(graph.nodes):
        if node.op != "attention" or len(node.inputs) != 3:
            continue
        q, k, v = node.inputs
        pk = graph.add_input(f"past_key.{layers}", k.dtype, k.shape[:2] + ("past",) + k.shape[3:])
        pv = graph.add_input(f"past_value.{layers}", v.dtype, v.shape[:2] + ("past",) + v.shape[3:])
        new = graph.make_node("attention", [q, k, v, pk, pv], node.attrs)
        graph.insert_before(node, new)
        graph.replace_all_uses(node.output, new.outputs[0])
        graph.remove(node)
        new.outputs[1].name = graph.fresh_name(f"present_key.{layers}")
        new.outputs[2].name = graph.fresh_name(f"present_value.{layers}")
        graph.outputs += [new.outputs[1], new.outputs[2]]
        layers += 1
    graph.meta["kv_layers"] = layers
    return f"cached {layers} attention layers"
