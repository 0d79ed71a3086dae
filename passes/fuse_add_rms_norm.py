"""Fuse a residual add with the rms_norm that reads it: add_rms_norm(x, skip, w) -> (normed, sum).

In a pre-norm decoder every block ends with `h = h + f(h)` and the next block
starts with `rms_norm(h)`; one fused op reads the two rows once and writes
both the sum (the residual stream) and the normalized row (ONNX Runtime's
SkipSimplifiedLayerNormalization).
"""
from edgec.ir import Graph

from .match import producer
from .registry import PassResult, register_pass


@register_pass("fuse_add_rms_norm")
def fuse_add_rms_norm(graph: Graph) -> PassResult:
    """Replace rms_norm(add(x, skip)) by add_rms_norm, which also returns the sum."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "rms_norm":
            continue
        s, w = node.inputs
        add = producer(s, "add")
        if add is None:  # a second norm of the same sum finds it fused already and stays
            continue
        x, skip = add.inputs
        if x.dtype != skip.dtype or list(x.shape) != list(skip.shape) or list(x.shape) != list(s.shape):
            continue  # broadcasting adds are not residual adds
        new = graph.make_node("add_rms_norm", [x, skip, w], {"eps": node.attrs["eps"]})
        graph.insert_before(add, new)
        graph.replace_all_uses(node.output, new.outputs[0])
        graph.replace_all_uses(s, new.outputs[1])
        graph.remove(node)
        graph.remove(add)
        count += 1
    return PassResult(f"fused {count} add+rms_norm", {"add_rms_norm": count})
