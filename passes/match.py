"""Small helpers for pattern matching on the IR (producer lookups, constants)."""
from __future__ import annotations

import numpy as np

from edgec.ir import Graph, Node, Value


def producer(v: Value, *ops: str) -> Node | None:
    n = v.producer
    if n is not None and (not ops or n.op in ops):
        return n
    return None


def scalar(graph: Graph, v: Value) -> float | None:
    """The value of a scalar constant (a `const` node or a one-element weight)."""
    n = producer(v, "const")
    if n is not None and np.size(n.attrs["value"]) == 1:
        return float(np.asarray(n.attrs["value"]).reshape(()))
    if v.kind == "weight" and int(np.prod(v.shape or (1,))) == 1:
        return float(np.asarray(graph.weight(v)).reshape(()))
    return None


def is_const(v: Value) -> bool:
    return v.kind == "weight" or producer(v, "const") is not None


def last_axis(v: Value, axis: int) -> bool:
    return axis % v.rank == v.rank - 1


def slice_of(v: Value, x: Value, start: int, end, step: int = 1) -> bool:
    """v == x[..., start:end:step] (an end at or past the last axis's size matches its size)."""
    s = producer(v, "slice")
    if s is None or s.inputs[0] is not x or not last_axis(x, s.attrs["axis"]) or s.attrs["step"] != step:
        return False
    e = s.attrs["end"]
    end_ok = e == end or (end == x.shape[-1] and e >= x.shape[-1])
    return s.attrs["start"] == start and end_ok


def rope_core(node: Node, rotated):
    """(x, cos, sin, nodes) if node == x * cos + rotated(x) * sin, in either operand order; `rotated(v)`
    gives (x, the nodes computing v from x) when v is x rotated (rotate-half, rotate-every-two), else None.
    `nodes` are all the nodes of the match."""
    if node.op != "add":
        return None
    for m1, m2 in (node.inputs, node.inputs[::-1]):
        a, b = producer(m1, "mul"), producer(m2, "mul")
        if a is None or b is None:
            continue
        for rot, sin in (b.inputs, b.inputs[::-1]):
            m = rotated(rot)
            if m is None:
                continue
            x, nodes = m
            for xx, cos in (a.inputs, a.inputs[::-1]):
                if xx is x and cos.shape[-1] == x.shape[-1] == sin.shape[-1]:
                    return x, cos, sin, nodes | {node, a, b}
    return None


def replace(graph: Graph, old: Node, new: Node) -> None:
    """Put `new` where `old` was and route old's single output to it."""
    graph.insert_before(old, new)
    graph.replace_all_uses(old.output, new.output)
    graph.remove(old)
