"""Raise a mixture-of-experts layer: the router's ops + the experts -> one moe op.

The frontend imports each MoE layer as the router's ordinary ops feeding one `moe_experts` node
(edgec.frontend.moe). Folding the router in gives every backend one op that owns the whole layer, so
a runtime can route, compute only the chosen experts and count how often each is chosen. The routers
recognised are those whose every op the `moe` op's attributes account for (edgec/ir/ops_moe.py):

- top-k over softmax or sigmoid scores, the weights being the chosen scores (Mixtral, Qwen-MoE), or
  the scores gathered back after choosing by scores + a bias, optionally among the best groups of
  experts (DeepSeek-V3's grouped top-k); then optionally divided by their sum and scaled;
- top-k over the logits, the weights a softmax of the chosen logits (GPT-OSS; equal to a renormalised
  softmax top-k), the router linear optionally biased;
- Phi-MoE's sparsemixer (two top-1 picks, each weighted by a softmax masked by relative distance).

Anything else fails the build naming the op found where the router was expected: the backends lower
`moe`, not arbitrary routing code.
"""
from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Node, Value
from edgec.ir.ops_moe import BIASES

from .match import producer, replace, scalar
from .registry import PassResult, register_pass

SUPPORTED = ("softmax or sigmoid scores with top-k (optionally a score bias, DeepSeek-V3's grouped top-k, "
             "renormalisation and scaling), softmax over the top-k logits, and Phi-MoE's sparsemixer")


class _NoMatch(Exception):
    """The router differs from every kind raise_moe knows; the message names where."""


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


def _node(v: Value, op: str, role: str, **attrs) -> Node:
    """The `op` node making v (past casts) with these attrs ("axis"/"axes" counted from the end), or
    _NoMatch naming what makes v instead."""
    v = _through_casts(v)
    n = producer(v, op)
    if n is not None:
        rank = n.inputs[0].rank
        for k, want in attrs.items():
            got = n.attrs[k]
            if k == "axis":
                got, want = got % rank, want % rank
            elif k == "axes":
                got, want = sorted(a % rank for a in got), sorted(a % rank for a in want)
            if got != want:
                n = None
                break
    if n is None:
        raise _NoMatch(f"the router's {role} comes from {_describe(v)}, not {op}"
                       + (f"({', '.join(f'{k}={w}' for k, w in attrs.items())})" if attrs else ""))
    return n


def _const(graph: Graph, v: Value, role: str) -> float:
    c = scalar(graph, _through_casts(v))
    if c is None:
        raise _NoMatch(f"the router's {role} is {_describe(v)}, not a constant")
    return c


def _is(a: Value, b: Value, role: str) -> None:
    if _through_casts(a) is not _through_casts(b):
        raise _NoMatch(f"the router's {role} is not the value it should be")


def _logits(graph: Graph, v: Value, x: Value) -> tuple[Value, dict]:
    """(router weight, {"logit": bias} or {}) of logits v = linear(x, router[, bias]), x the experts' input."""
    linear = _node(v, "linear", "logits")
    if (linear.inputs[1].kind != "weight" or not _same_rows(linear.inputs[0], x)
            or any(b.kind != "weight" for b in linear.inputs[2:])):
        raise _NoMatch("the router's logits are not a linear of the experts' input by constant weights")
    return linear.inputs[1], ({"logit": linear.inputs[2]} if len(linear.inputs) > 2 else {})


def _weights(graph: Graph, w: Value, index: Value, choose: Node) -> tuple[dict, Value]:
    """(attrs, the scores the weights are read from) for the experts' weights w: the chosen scores,
    optionally divided by their sum (+ a negligible epsilon), optionally times a constant."""
    a = {"normalize": False, "routed_scaling": 1.0}
    w = _through_casts(w)
    if (mul := producer(w, "mul")) is not None:
        a["routed_scaling"], w = _const(graph, mul.inputs[1], "weight scale"), _through_casts(mul.inputs[0])
    if (div := producer(w, "div")) is not None:
        total = _through_casts(div.inputs[1])
        if (eps := producer(total, "add")) is not None:
            if abs(_const(graph, eps.inputs[1], "normalisation epsilon")) > 1e-12:
                raise _NoMatch("the router's normalisation adds a non-negligible epsilon")
            total = eps.inputs[0]
        _is(_node(total, "sum", "normaliser", axes=[-1], keepdim=True).inputs[0], div.inputs[0], "normaliser's input")
        a["normalize"], w = True, _through_casts(div.inputs[0])
    if w is choose.outputs[0]:
        return a, choose.inputs[0]
    gather = _node(w, "gather", "expert weights", axis=-1)
    _is(gather.inputs[1], index, "gathered index")
    return a, gather.inputs[0]


def _groups(graph: Graph, fill: Node) -> tuple[dict, Value]:
    """({n_group, topk_group}, the unmasked choice scores) of DeepSeek-V3's group mask: the experts
    outside the topk_group groups with the best sums of two best scores set to -inf."""
    if fill.attrs["value"] != float("-inf"):
        raise _NoMatch(f"the router masks experts with {fill.attrs['value']}, not -inf")
    choice = _through_casts(fill.inputs[0])
    mask = _node(_node(fill.inputs[1], "logical_not", "expert mask").inputs[0], "cast", "group mask", dtype="bool")
    rows = _node(mask.inputs[0], "reshape", "group mask")
    spread = _node(rows.inputs[0], "expand", "group mask")
    groups, size = spread.output.shape[1:]
    scatter = _node(_node(spread.inputs[0], "unsqueeze", "group mask", axis=-1).inputs[0], "scatter",
                    "group mask", axis=-1, value=1.0)
    _node(scatter.inputs[0], "full_like", "group mask", value=0.0)
    best = _node(scatter.inputs[1], "topk", "chosen groups", axis=-1)
    _is(best.outputs[1], scatter.inputs[1], "chosen groups")
    total = _node(best.inputs[0], "sum", "group scores", axes=[-1], keepdim=False)
    top2 = _node(total.inputs[0], "topk", "group scores", k=2, axis=-1)
    _is(top2.outputs[0], total.inputs[0], "group scores")
    split = _node(top2.inputs[0], "reshape", "group scores")
    if (rows.output.shape[1:] != choice.shape[1:] or spread.output.shape != split.output.shape
            or split.output.shape[1:] != (groups, size) or groups * size != choice.shape[-1]):
        raise _NoMatch("the router's group mask does not split the experts into consecutive groups")
    _is(split.inputs[0], choice, "grouped scores")
    return {"n_group": groups, "topk_group": best.attrs["k"]}, choice


def _topk_router(graph: Graph, x: Value, index: Value, weight: Value) -> tuple[dict, Value, dict]:
    """Top-k over softmax/sigmoid scores (+ bias, grouped), or softmax over the top-k logits
    -> (moe attrs, router, {bias name: Value})."""
    choose = _node(index, "topk", "expert indices", axis=-1)
    if choose.outputs[1] is not _through_casts(index):
        raise _NoMatch("the expert indices are not a top-k's indices")
    if ((late := producer(_through_casts(weight), "softmax")) is not None
            and _through_casts(late.inputs[0]) is choose.outputs[0] and late.attrs["axis"] % late.inputs[0].rank
            == late.inputs[0].rank - 1):
        router, biases = _logits(graph, choose.inputs[0], x)
        return {"top_k": choose.attrs["k"], "scoring": "softmax", "normalize": True}, router, biases
    attrs, scores = _weights(graph, weight, index, choose)
    attrs["top_k"] = choose.attrs["k"]
    choice = _through_casts(choose.inputs[0])
    if (fill := producer(choice, "masked_fill")) is not None:
        groups, choice = _groups(graph, fill)
        attrs.update(groups)
    extra = {}
    if choice is not _through_casts(scores):
        add = _node(choice, "add", "choice scores")
        bias = add.inputs[1]
        if bias.kind != "weight" or bias.rank != 1:
            raise _NoMatch(f"the router adds {_describe(bias)} to its scores, not a per-expert weight")
        _is(add.inputs[0], scores, "biased scores")
        extra = {"score": bias}
    scores = _through_casts(scores)
    if (n := producer(scores, "softmax")) is not None and n.attrs["axis"] % scores.rank == scores.rank - 1:
        attrs["scoring"] = "softmax"
    elif (n := producer(scores, "sigmoid")) is not None:
        attrs["scoring"] = "sigmoid"
    else:
        raise _NoMatch(f"the router's scores come from {_describe(scores)}, not softmax or sigmoid")
    router, biases = _logits(graph, n.inputs[0], x)
    return attrs, router, {**biases, **extra}


def _pick(graph: Graph, w: Value, i: Value, masked: Value, logits: Value) -> float:
    """One sparsemixer pick: w = softmax(masked without the experts farther than a threshold from the
    best)[i], (best, i) = the top-1 of masked. Returns the threshold (2 * jitter_eps)."""
    best = _node(i, "topk", "sparsemixer pick", k=1, axis=-1)
    _is(best.outputs[1], i, "sparsemixer index")
    _is(best.inputs[0], masked, "sparsemixer's picked scores")
    gather = _node(w, "gather", "sparsemixer weight", axis=-1)
    _is(gather.inputs[1], i, "sparsemixer index")
    fill = _node(_node(gather.inputs[0], "softmax", "sparsemixer weight", axis=-1).inputs[0], "masked_fill",
                 "sparsemixer mask", value=float("-inf"))
    _is(fill.inputs[0], masked, "sparsemixer's masked scores")
    far = _node(fill.inputs[1], "greater", "sparsemixer mask")
    div = _node(far.inputs[0], "div", "sparsemixer distance")
    sub = _node(div.inputs[0], "sub", "sparsemixer distance")
    factor = _node(div.inputs[1], "maximum", "sparsemixer distance")
    for v, want, role in ((sub.inputs[0], best.outputs[0], "best score"), (sub.inputs[1], logits, "distance"),
                          (_node(factor.inputs[0], "abs", "sparsemixer scale").inputs[0], logits, "scale"),
                          (factor.inputs[1], best.outputs[0], "scale floor")):
        _is(v, want, f"sparsemixer {role}")
    return _const(graph, far.inputs[1], "sparsemixer threshold")


def _sparsemixer_router(graph: Graph, x: Value, index: Value, weight: Value) -> tuple[dict, Value, dict]:
    """Phi-MoE's sparsemixer (top-2) -> (moe attrs, router, {bias name: Value})."""
    picks = _node(index, "concat", "expert indices", axis=-1)
    weights = _node(weight, "concat", "expert weights", axis=-1)
    if len(picks.inputs) != 2 or len(weights.inputs) != 2:
        raise _NoMatch("the sparsemixer does not pick two experts")
    logits = _through_casts(_node(picks.inputs[0], "topk", "first expert", k=1, axis=-1).inputs[0])
    rest = _node(picks.inputs[1], "topk", "second expert", k=1, axis=-1).inputs[0]
    scatter = _node(rest, "scatter", "second expert's scores", axis=-1, value=float("-inf"))
    _is(scatter.inputs[0], logits, "second expert's scores")
    _is(scatter.inputs[1], picks.inputs[0], "first expert excluded")
    t1 = _pick(graph, weights.inputs[0], picks.inputs[0], logits, logits)
    t2 = _pick(graph, weights.inputs[1], picks.inputs[1], scatter.output, logits)
    if t1 != t2 or t1 < 0:
        raise _NoMatch(f"the sparsemixer's two thresholds differ ({t1}, {t2})")
    attrs = {"top_k": 2, "scoring": "sparsemixer", "normalize": False, "jitter_eps": t1 / 2}
    return (attrs, *_logits(graph, logits, x))


def _router(graph: Graph, node: Node) -> tuple[dict, Value, dict]:
    """The moe attributes, router weight and router biases ({"score"/"logit": Value}) of a moe_experts node."""
    x, index, weight = node.inputs[:3]
    kind = _sparsemixer_router if producer(_through_casts(index), "concat") is not None else _topk_router
    try:
        return kind(graph, x, index, weight)
    except _NoMatch as e:
        raise UnsupportedModelError(f"MoE layer at {node.outputs[0].name}: {e}; this router kind is not "
                                    f"supported (supported: {SUPPORTED})") from None


@register_pass("raise_moe")
def raise_moe(graph: Graph) -> PassResult:
    """Fold each MoE layer's router and experts into one moe op."""
    count = 0
    for node in [n for n in graph.nodes if n.op == "moe_experts"]:
        attrs, router, biases = _router(graph, node)
        x, _, _, gate_up, down = node.inputs[:5]
        biases.update(zip(("gate_up", "down"), node.inputs[5:]))
        names = tuple(b for b in BIASES if b in biases)
        replace(graph, node, graph.make_node("moe", [x, router, gate_up, down, *(biases[b] for b in names)],
                                             {**attrs, **node.attrs, "biases": names}))
        count += 1
    return PassResult(f"raised {count} moe", {"moe": count})
