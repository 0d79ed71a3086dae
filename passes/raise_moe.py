"""Raise a mixture-of-experts layer: router (linear, softmax, top-k, renormalisation) + experts -> moe.

The frontend imports each MoE layer as the router's ordinary ops feeding one `moe_experts` node
(edgec.frontend.moe). Folding the router in gives every backend one op that owns the whole layer, so
a runtime can route, compute only the chosen experts and count how often each is chosen. A router
this pass does not recognise fails the build naming what it found: the backends lower `moe`, not
arbitrary routing code.
"""
from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Node, Value

from .match import producer, replace
from .registry import PassResult, register_pass


def _through_casts(v: Value) -> Value:
    """v without the dtype-preserving casts the frontend may leave on the router's path."""
    while (n := producer(v, "cast")) is not None and n.inputs[0].dtype == v.dtype:
        v = n.inputs[0]
    return v


def _same_rows(a: Value, b: Value) -> bool:
    """a and b hold the same tensor: one value, or reshapes of one value to one shape (the router
    and the experts each flatten the layer's input themselves)."""
    def source(v: Value) -> Value:
        while (n := producer(v, "reshape")) is not None:
            v = n.inputs[0]
        return v

    return a is b or (a.shape == b.shape and source(a) is source(b))


def _describe(v: Value) -> str:
    n = v.producer
    return f"{n.op}" if n is not None else f"{v.kind} {v.name}"


def _router(node: Node) -> dict:
    """The moe attributes and router weight of a moe_experts node, or UnsupportedModelError."""
    x, index, weight = node.inputs[:3]
    where = f"MoE layer at {node.outputs[0].name}"
    topk = producer(index, "topk")
    if topk is None or topk.outputs[1] is not index or topk.attrs["axis"] % topk.inputs[0].rank != topk.inputs[0].rank - 1:
        raise UnsupportedModelError(f"{where}: expert indices come from {_describe(index)}, not a top-k over "
                                    "the router's scores; this router kind is not supported")
    w = _through_casts(weight)
    normalize = False
    if w is not topk.outputs[0]:
        div = producer(w, "div")
        total = producer(div.inputs[1], "sum") if div is not None else None
        if (div is None or _through_casts(div.inputs[0]) is not topk.outputs[0] or total is None
                or _through_casts(total.inputs[0]) is not topk.outputs[0] or not total.attrs["keepdim"]
                or [a % 2 for a in total.attrs["axes"]] != [1]):
            raise UnsupportedModelError(f"{where}: expert weights come from {_describe(w)}, not the top-k "
                                        "scores (optionally divided by their sum); this router kind is not supported")
        normalize = True
    scores = _through_casts(topk.inputs[0])
    softmax = producer(scores, "softmax")
    if softmax is None or softmax.attrs["axis"] % scores.rank != scores.rank - 1:
        raise UnsupportedModelError(f"{where}: router scores come from {_describe(scores)}; supported scoring: "
                                    "softmax over the experts (sigmoid and grouped routers are not supported yet)")
    linear = producer(_through_casts(softmax.inputs[0]), "linear")
    if linear is None or len(linear.inputs) != 2 or linear.inputs[1].kind != "weight" or not _same_rows(linear.inputs[0], x):
        raise UnsupportedModelError(f"{where}: the router's logits are not a bias-free linear of the experts' "
                                    "input; this router kind is not supported")
    return {"router": linear.inputs[1], "top_k": topk.attrs["k"], "normalize": normalize}


@register_pass("raise_moe")
def raise_moe(graph: Graph) -> PassResult:
    """Fold each MoE layer's router and experts into one moe op."""
    count = 0
    for node in [n for n in graph.nodes if n.op == "moe_experts"]:
        r = _router(node)
        x, _, _, gate_up, down = node.inputs
        replace(graph, node, graph.make_node("moe", [x, r["router"], gate_up, down],
                                             {"top_k": r["top_k"], "scoring": "softmax",
                                              "normalize": r["normalize"], "act": node.attrs["act"]}))
        count += 1
    return PassResult(f"raised {count} moe", {"moe": count})
