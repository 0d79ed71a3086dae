"""Turn rotary(x, cos, sin) into rotary_cached(x, position_ids, cos_cache, sin_cache).

The traced model computes cos/sin from position_ids at every call (inv_freq
matmul, concat, cos, sin, scaling); every layer then re-reads them and the
backend rotates with ~7 primitive ops per tensor. Here the cos/sin subgraph
is evaluated once, at compile time, for every position of the context
(position_ids = 0..context_length-1), and the rotary becomes a table lookup
that ONNX Runtime runs as one RotaryEmbedding kernel (and that
GroupQueryAttention's do_rotary can absorb). q and k of a layer, and all
layers, share one pair of tables.

Only exact cases are fused: cos/sin must depend on nothing but position_ids
and constants, each position's row must not depend on the other positions
(checked by re-evaluating a shuffled subset), and both halves of every row
must be equal (rotate-half RoPE repeats its frequencies), so the tables can
be stored half-width.
"""
from __future__ import annotations

import numpy as np

from edgec.ir import Graph, Value, get_op

from .registry import PassResult, register_pass


def _evaluator(graph: Graph, positions: Value, pos: np.ndarray):
    """eval(v) -> array of v for the given positions, or None if v depends on other inputs."""
    memo: dict[Value, np.ndarray | None] = {positions: pos}

    def ev(v: Value):
        if v in memo:
            return memo[v]
        if v.kind == "weight":
            return np.asarray(graph.weight(v))
        n = v.producer
        if n is None:  # another graph input
            memo[v] = None
            return None
        args = []
        for i in n.inputs:
            a = ev(i)
            if a is None:
                memo[v] = None
                return None
            args.append(a)
        res = get_op(n.op).ref(*args, **n.attrs)
        for o, r in zip(n.outputs, res if isinstance(res, tuple) else (res,)):
            memo[o] = np.asarray(r)
        return memo[v]

    return ev


def _table(arr, r: int) -> np.ndarray | None:
    """[1, 1, P, R] cos/sin for positions 0..P-1 -> half-width [P, R/2] table, if exact."""
    t = np.asarray(arr)
    if t.ndim != 4 or t.shape[:2] != (1, 1) or t.shape[-1] != r:
        return None
    t = t[0, 0]
    if not np.array_equal(t[:, : r // 2], t[:, r // 2:]):
        return None
    return np.ascontiguousarray(t[:, : r // 2])


@register_pass("fuse_rotary")
def fuse_rotary(graph: Graph) -> PassResult:
    """Precompute RoPE cos/sin tables over the context; rotary becomes a table lookup."""
    positions = next((v for v in graph.inputs if v.name == "position_ids"), None)
    ctx = graph.facts.context_length
    if positions is None or not ctx or list(positions.shape) != [1, "seq"]:
        return PassResult("skipped (no position_ids input or context length)",
                          {"rotary_cached": 0, "table_pairs": 0, "positions": 0})
    full = _evaluator(graph, positions, np.arange(int(ctx), dtype=positions.dtype)[None])
    probe_pos = np.array([[int(ctx) - 1, 0, int(ctx) // 2, 1]], positions.dtype)
    probe = _evaluator(graph, positions, probe_pos)
    tables: dict[bytes, Value] = {}

    def weight_for(arr, name):
        key = arr.tobytes()
        if key not in tables:
            tables[key] = graph.add_weight(name, arr)
        return tables[key]

    count = 0
    for node in list(graph.nodes):
        if node.op != "rotary":
            continue
        x, cos, sin = node.inputs
        r = cos.shape[-1]
        if x.rank != 4 or x.dtype != cos.dtype or list(cos.shape) != [1, 1, "seq", r] \
                or list(sin.shape) != list(cos.shape):
            continue
        c, s = full(cos), full(sin)
        if c is None or s is None:
            continue
        ct, st = _table(c, r), _table(s, r)
        if ct is None or st is None:
            continue
        pc, ps = probe(cos), probe(sin)
        idx = probe_pos[0]
        if not (np.array_equal(pc[0, 0, :, : r // 2], ct[idx]) and np.array_equal(ps[0, 0, :, : r // 2], st[idx])):
            continue  # a position's row depends on the others (e.g. dynamic scaling)
        new = graph.make_node("rotary_cached", [x, positions, weight_for(ct, "rotary.cos_cache"),
                                                weight_for(st, "rotary.sin_cache")])
        graph.insert_before(node, new)
        graph.replace_all_uses(node.output, new.output)
        graph.remove(node)
        count += 1
    pairs = len(tables) // 2
    return PassResult(f"fused {count} rotary into table lookups ({pairs} table pair{'s' if pairs != 1 else ''}, "
                      f"{ctx} positions)", {"rotary_cached": count, "table_pairs": pairs, "positions": int(ctx)})
