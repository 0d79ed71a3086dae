"""Raise interleaved (GPT-J style) RoPE into the rotate-half `rotary` op by reordering head dims.

GPT-J and Cohere rotate the pairs (x0, x1), (x2, x3), ... of each head:

    x * C + flatten(stack([-x[..., 1::2], x[..., ::2]], -1)) * S      C, S: repeat_interleave'd cos, sin

Reordering the rotary dims by P = [0, 2, 4, ..., 1, 3, 5, ...] makes this rotate-half RoPE,
P(out) = rotary(P(x), P(C), P(S)), with tables that repeat their halves as Llama's do. Attention
scores q.k do not change when q and k are reordered alike (v is not), so where both q and k of an
attention are interleaved rotaries each becomes rotary(P(x), P(C), P(S)) and P is never undone:
every backend keeps its one rotary kernel.

- P(x) costs nothing where x is a linear's output split into heads that only this rotary reads
  (q_proj/k_proj): the linear's weight rows and bias are reordered in place. Otherwise (e.g. a norm
  between them) P is a reshape/permute on the activations.
- P(C), P(S) depend on positions only; fuse_rotary folds them into its tables.
- Partial rotary (rotary_dim < head_dim: cat(rotated, x[..., r:])) reorders the first r dims only.
- A rotary applied while the heads are still behind the sequence ([B, S, H, D], GPT-J) is moved behind
  the transpose that follows it, to the [B, H, S, D] layout `rotary` takes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgec.ir import Graph, Node, Value
from edgec.ir.ops import INT_MAX

from .match import last_axis, producer, rope_core, slice_of
from .registry import PassResult, register_pass

_SWAP = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]


@dataclass
class _Rope:
    """One interleaved rotary over the first r dims of `head`: the matched `nodes`, read as `out`."""

    out: Value
    head: Value
    cos: Value
    sin: Value
    r: int
    nodes: set = field(default_factory=set)


def _every_two_of(v: Value):
    """(x, nodes) if v == flatten(stack([-x[..., 1::2], x[..., ::2]], -1), -2) (GPT-J's rotate_every_two)."""
    rs = producer(v, "reshape")
    cat = producer(rs.inputs[0], "concat") if rs is not None else None
    if cat is None or len(cat.inputs) != 2 or not last_axis(cat.output, cat.attrs["axis"]):
        return None
    odd, even = (producer(u, "unsqueeze") for u in cat.inputs)
    if odd is None or even is None or not all(last_axis(u.output, u.attrs["axis"]) for u in (odd, even)):
        return None
    neg = producer(odd.inputs[0], "neg")
    if neg is None or producer(neg.inputs[0], "slice") is None:
        return None
    x = neg.inputs[0].producer.inputs[0]
    d = x.shape[-1]
    if not isinstance(d, int) or d % 2 or tuple(v.shape) != tuple(x.shape):
        return None
    if slice_of(neg.inputs[0], x, 1, d, 2) and slice_of(even.inputs[0], x, 0, d, 2):
        return x, {rs, cat, odd, even, neg, neg.inputs[0].producer, even.inputs[0].producer}
    return None


def _match_core(node: Node):
    """(x, cos, sin, nodes) if node == x * cos + rotate_every_two(x) * sin."""
    return rope_core(node, _every_two_of)


def _keeps_last_axis(n: Node) -> bool:
    return n.op == "cast" or (n.op == "permute" and n.attrs["perm"][-1] == n.output.rank - 1)


def _rope_behind(v: Value, users) -> _Rope | None:
    """The interleaved rotary whose result only attention input v reads (through casts/transposes)."""
    while len(users.get(v, ())) == 1 and v.producer is not None and _keeps_last_axis(v.producer):
        v = v.producer.inputs[0]
    n = v.producer
    if n is None or len(users.get(v, ())) != 1:
        return None
    if n.op == "concat" and len(n.inputs) == 2 and last_axis(n.output, n.attrs["axis"]):
        core = producer(n.inputs[0])
        m = _match_core(core) if core is not None else None
        if m is None or producer(m[0], "slice") is None:
            return None
        x, cos, sin, nodes = m
        head, r = x.producer.inputs[0], x.shape[-1]
        if slice_of(x, head, 0, r) and slice_of(n.inputs[1], head, r, INT_MAX):
            return _Rope(n.output, head, cos, sin, r, nodes | {n, x.producer, n.inputs[1].producer})
        return None
    m = _match_core(n)
    if m is None:
        return None
    x, cos, sin, nodes = m
    return _Rope(n.output, x, cos, sin, x.shape[-1], nodes)


def _order(r: int, d: int) -> np.ndarray:
    """P over a head of d dims: the even rotary dims, the odd ones, then the dims past r."""
    return np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2), np.arange(r, d)])


def _fold_into_linear(graph: Graph, rope: _Rope, users) -> bool:
    """Reorder the rows of the linear that makes rope.head (q_proj/k_proj) in place, if only the rotary
    reads what it makes; False (nothing changed) otherwise."""
    inner = [o for n in rope.nodes for o in n.outputs if o is not rope.out] + [rope.head]
    if any(u not in rope.nodes for o in inner for u in users.get(o, ())):
        return False
    v = rope.head
    while v.producer is not None and _keeps_last_axis(v.producer):
        v = v.producer.inputs[0]
        if len(users.get(v, ())) != 1:
            return False
    split = producer(v, "reshape")
    if split is None or v.rank < 2 or not all(isinstance(d, int) for d in v.shape[-2:]):
        return False
    flat = split.inputs[0]
    heads, d = v.shape[-2:]
    lin = producer(flat, "linear")
    if (lin is None or len(users.get(flat, ())) != 1 or flat.shape[-1] != heads * d
            or tuple(flat.shape[:-1]) != tuple(v.shape[:-2])):
        return False
    params = lin.inputs[1:]
    if any(w.kind != "weight" or users.get(w) != [lin] for w in params):
        return False
    rows = (np.arange(heads)[:, None] * d + _order(rope.r, d)[None]).reshape(-1)
    for w in params:
        graph.weights[w.name] = np.ascontiguousarray(np.asarray(graph.weight(w))[rows])
    return True


def _insert_after(graph: Graph, v: Value, nodes: list[Node]) -> None:
    i = 0 if v.producer is None else graph.nodes.index(v.producer) + 1
    graph.nodes[i:i] = nodes


def _reordered(graph: Graph, v: Value, r: int) -> Value:
    """P(v) along the last axis: a new weight for a weight, else reshape/permute ops right after v."""
    d = v.shape[-1]
    if v.kind == "weight":
        arr = np.asarray(graph.weight(v))[..., _order(r, d)]
        return graph.add_weight(v.name + ".halves", np.ascontiguousarray(arr))
    nodes: list[Node] = []

    def op(name, *ins, **attrs):
        nodes.append(graph.make_node(name, ins, attrs))
        return nodes[-1].output

    last = v.rank - 1
    head = v if r == d else op("slice", v, axis=last, start=0, end=r)
    shape = [s if isinstance(s, int) else -1 for s in head.shape]
    pairs = op("reshape", head, shape=shape[:-1] + [r // 2, 2])
    out = op("reshape", op("permute", pairs, perm=list(range(last)) + [last + 1, last]), shape=shape)
    if r < d:
        out = op("concat", out, op("slice", v, axis=last, start=r, end=INT_MAX), axis=last)
    _insert_after(graph, v, nodes)
    return out


def _swapped(graph: Graph, v: Value) -> Value:
    """v with axes 1 and 2 swapped, right after v."""
    n = graph.make_node("permute", [v], {"perm": _SWAP})
    _insert_after(graph, v, [n])
    return n.output


def _layout(v: Value) -> str | None:
    """'bhsd' or 'bshd' by where the (symbolic) sequence axis of a 4-D head tensor is."""
    if v.rank != 4:
        return None
    seq = [i for i, d in enumerate(v.shape) if not isinstance(d, int)]
    return {(2,): "bhsd", (1,): "bshd"}.get(tuple(seq))


def _rewrite(graph: Graph, rope: _Rope, users, tables: dict) -> bool:
    """Replace rope by rotary(P(head), P(cos), P(sin)) in [B, H, S, D]; True if the weights took P."""
    layout = _layout(rope.head)
    folded = _fold_into_linear(graph, rope, users)
    head = rope.head if folded else _reordered(graph, rope.head, rope.r)
    cs = []
    for t in (rope.cos, rope.sin):
        if (t, layout) not in tables:
            p = _reordered(graph, t, rope.r)
            tables[t, layout] = _swapped(graph, p) if layout == "bshd" else p
        cs.append(tables[t, layout])
    if layout == "bshd":
        head = _swapped(graph, head)
    rot = graph.make_node("rotary", [head, *cs])
    graph.insert_before(rope.out.producer, rot)
    if layout == "bhsd":
        graph.replace_all_uses(rope.out, rot.output)
        return folded
    back = graph.make_node("permute", [rot.output], {"perm": _SWAP})  # undone by the transpose after it
    graph.insert_before(rope.out.producer, back)
    graph.replace_all_uses(rope.out, back.output)
    for n in list(graph.nodes):
        if n.op == "permute" and n.inputs[0] is back.output and n.attrs["perm"] == _SWAP:
            graph.replace_all_uses(n.output, rot.output)
    return folded


def _fits(rope: _Rope) -> bool:
    """rotary takes x [B, H, S, D] and cos/sin [1, 1, S, r] once the layout is [B, H, S, D]."""
    layout = _layout(rope.head)
    cos_heads_axis = 1 if layout == "bhsd" else 2
    return (layout is not None and rope.r % 2 == 0 and rope.cos.rank == 4
            and rope.cos.shape[cos_heads_axis] == 1 and tuple(rope.cos.shape) == tuple(rope.sin.shape))


@register_pass("raise_interleaved_rotary")
def raise_interleaved_rotary(graph: Graph) -> PassResult:
    """Rewrite interleaved RoPE on q and k as rotate-half rotary ops, head dims reordered alike."""
    count = folded = 0
    tables: dict = {}
    for att in [n for n in graph.nodes if n.op == "attention"]:
        users = graph.users()
        q, k = (_rope_behind(v, users) for v in att.inputs[:2])
        if q is None or k is None or q.r != k.r or not (_fits(q) and _fits(k)) \
                or _layout(q.head) != _layout(k.head) or q.head.shape[-1] != k.head.shape[-1]:
            continue
        for rope in (q, k):
            folded += _rewrite(graph, rope, users, tables)
            count += 1
    return PassResult(f"raised {count} interleaved rotary ({folded} reordered in their linear's rows)",
                      {"rotary": count, "folded": folded})
