"""Raise rotate-half RoPE into the `rotary` op.

    x * cos + cat(-x[..., h:], x[..., :h]) * sin                  -> rotary(x, cos, sin)
    cat(rotary(x[..., :r], cos, sin), x[..., r:])                  -> rotary(x, cos, sin)
    cat(x1 * c - x2 * s, x2 * c + x1 * s), x1|x2 = x's halves      -> rotary(x, cat(c, c), cat(s, s))

The second form is partial rotary (GPT-NeoX, StableLM, Phi): `rotary` rotates
the first cos.shape[-1] dims and passes the rest through. The third is the
same rotation written on half-width tables (GPT-OSS).
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


def _products(v, a, b):
    """(the factor other than a in v = a * f, the one other than b in v = b * g) for v's two mul operands."""
    x, y = producer(v[0], "mul"), producer(v[1], "mul")
    if x is None or y is None:
        return None
    fa = next((i for i in x.inputs if i is not a), None) if a in x.inputs else None
    fb = next((i for i in y.inputs if i is not b), None) if b in y.inputs else None
    return None if fa is None or fb is None else (fa, fb)


def _match_halves(node):
    """(x, cos, sin) half-width if node == cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin)."""
    if node.op != "concat" or len(node.inputs) != 2 or not last_axis(node.output, node.attrs["axis"]):
        return None
    sub, add = producer(node.inputs[0], "sub"), producer(node.inputs[1], "add")
    if sub is None or add is None or producer(sub.inputs[0], "mul") is None:
        return None
    first = next((i for i in sub.inputs[0].producer.inputs if producer(i, "slice") is not None), None)
    if first is None:
        return None
    x = first.producer.inputs[0]
    d = x.shape[-1]  # (heads [B, H, S, D] only: not the (re, im) pairs of a complex rotation)
    if x.rank != 4 or not isinstance(d, int) or d % 2 or not slice_of(first, x, 0, d // 2):
        return None
    second = next((i for i in sub.inputs[1].producer.inputs if slice_of(i, x, d // 2, d)), None) \
        if producer(sub.inputs[1], "mul") is not None else None
    if second is None:
        return None
    f1 = _products(sub.inputs, first, second)  # cos, sin
    f2 = _products(add.inputs, second, first) or _products(add.inputs[::-1], second, first)
    if f1 is None or f1 != f2 or any(t.shape[-1] != d // 2 for t in f1):
        return None
    return x, *f1


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
    doubled = {}  # a half-width table -> its full-width concat (q and k share one)
    for node in list(graph.nodes):
        m = _match_halves(node)
        if m is not None:
            x, *tables = m
            for t in tables:
                if t not in doubled:
                    cat = graph.make_node("concat", [t, t], {"axis": t.rank - 1})
                    graph.insert_before(node, cat)
                    doubled[t] = cat.output
            replace(graph, node, graph.make_node("rotary", [x, *(doubled[t] for t in tables)]))
            count += 1
    return PassResult(f"raised {count} rotary ({partial} partial)", {"rotary": count, "partial": partial})
