"""Raise rotate-half RoPE into the `rotary` op.

    x * cos + cat(-x[..., h:], x[..., :h]) * sin                  -> rotary(x, cos, sin)
    cat(rotary(x[..., :r], cos, sin), x[..., r:])                  -> rotary(x, cos, sin)

The second form is partial rotary (GPT-NeoX, StableLM, Phi): `rotary` rotates
the first cos.shape[-1] dims and passes the rest through.
"""
from edgec.ir import Graph
from edgec.ir.ops import INT_MAX

from .match import last_axis, producer, replace, rope_core, slice_of
from .registry import PassResult, register_pass


def _rotate_half_of(v):
    """x if v == rotate_half(x) else None."""
    cat = producer(v, "concat")
    if cat is None or len(cat.inputs) != 2 or not last_axis(v, cat.attrs["axis"]):
        return None
    neg = producer(cat.inputs[0], "neg")
    if neg is None or producer(neg.inputs[0], "slice") is None:
        return None
    x = neg.inputs[0].producer.inputs[0]
    d = x.shape[-1]
    if not isinstance(d, int) or d % 2:
        return None
    h = d // 2
    if slice_of(neg.inputs[0], x, h, d) and slice_of(cat.inputs[1], x, 0, h):
        return x
    return None


def _match_core(node):
    """(x, cos, sin) if node == x * cos + rotate_half(x) * sin."""
    m = rope_core(node, lambda v: None if (x := _rotate_half_of(v)) is None else (x, set()))
    return None if m is None else m[:3]


def _match_partial(node):
    if node.op != "concat" or len(node.inputs) != 2 or not last_axis(node.output, node.attrs["axis"]):
        return None
    rot = producer(node.inputs[0], "rotary")
    if rot is None:
        return None
    head = producer(rot.inputs[0], "slice")
    if head is None:
        return None
    x = head.inputs[0]
    r = rot.inputs[0].shape[-1]
    if slice_of(rot.inputs[0], x, 0, r) and slice_of(node.inputs[1], x, r, INT_MAX):
        return x, rot.inputs[1], rot.inputs[2]
    return None


@register_pass("raise_rotary")
def raise_rotary(graph: Graph) -> PassResult:
    """Replace traced rotate-half RoPE (full or partial) with rotary ops."""
    count = partial = 0
    for node in list(graph.nodes):
        m = _match_core(node)
        if m is not None:
            replace(graph, node, graph.make_node("rotary", list(m)))
            count += 1
    for node in list(graph.nodes):
        m = _match_partial(node)
        if m is not None:
            replace(graph, node, graph.make_node("rotary", list(m)))
            partial += 1
    return PassResult(f"raised {count} rotary ({partial} partial)", {"rotary": count, "partial": partial})
