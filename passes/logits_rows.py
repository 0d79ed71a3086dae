"""Logits for the last rows only (a pre-lowering pass of the ONNX and C backends).

Adds the graph input `logits_rows` (int64 [1]): how many of the last
positions get logits. The logits projection reads `last_rows(x, logits_rows)`
instead of x, so a prompt's prefill in the generation loop projects its last
row only (the head is ~20% of a small model's prefill FLOPs); feeding the
sequence length gives every row. The `logits` output becomes
[1, logits_rows, V].
"""
from __future__ import annotations

from edgec.interface import LOGITS_ROWS
from edgec.ir import Graph, Node, get_op

from .registry import PassResult, register_pass

_ROW_WISE = {"cast", "mul", "div", "tanh", "add", "softcap"}  # ops after the head that act per row


def _head_chain(graph: Graph) -> list[Node] | None:
    """[head linear, row-wise ops...] that make the `logits` output [1, seq, V], each value read once."""
    out = next((v for v in graph.outputs if v.name == "logits"), None)
    if out is None or out.rank != 3:
        return None
    head = graph.producing_linear(out, through=lambda node: node.op in _ROW_WISE)
    if head is None or head.inputs[0].rank != 3:
        return None
    users = graph.users()
    chain, v = [head], head.output
    while v is not out:
        readers = users.get(v, [])
        if len(readers) != 1 or v in graph.outputs:
            return None
        chain.append(readers[0])
        v = readers[0].output
    return chain


@register_pass("logits_rows")
def logits_rows(graph: Graph) -> PassResult:
    """Add the `logits_rows` input: the logits projection runs on the last rows only."""
    taken = {v.name for v in graph.inputs} | set(graph.weight_values) | {o.name for n in graph.nodes for o in n.outputs}
    chain = None if LOGITS_ROWS in taken else _head_chain(graph)
    if chain is None:
        return PassResult("no logits head to slice", {"sliced": 0})
    head = chain[0]
    rows = graph.add_input(LOGITS_ROWS, "int64", (1,))
    rows.name = LOGITS_ROWS  # no live value has the name (checked); fresh_name may know it from a removed one
    last = graph.make_node("last_rows", [head.inputs[0], rows], {"dim": LOGITS_ROWS})
    graph.insert_before(head, last)
    head.inputs[0] = last.output
    for node in chain:  # the rows axis of every value up to `logits` is now logits_rows
        for out, (dtype, shape) in zip(node.outputs, get_op(node.op).infer(node.inputs, node.attrs)):
            out.shape = tuple(shape)
    return PassResult(f"logits of the last {LOGITS_ROWS} rows only ({len(chain)} ops)", {"sliced": 1})
