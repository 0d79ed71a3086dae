"""Mixture-of-experts ops.

- topk(x, k, axis) -> (values, indices int64): the k largest along an axis, largest first (the
  router's choice before raise_moe folds it).
- moe_experts(x[T,H], index[T,k] int64, weight[T,k], gate_up[E,2I,H], down[E,H,I],
  [gate_up_bias[E,2I], down_bias[E,H]]; act, alpha, limit): the routed experts of one layer as the
  frontend imports them (edgec.frontend.moe).
- moe(x[...,H], router[E,H], gate_up[E,2I,H], down[E,H,I], *biases; top_k, scoring, normalize, act,
  alpha, limit, n_group, topk_group, routed_scaling, jitter_eps, biases): router and experts in one op
  (passes/raise_moe.py makes it), see `route`; then sum_k weight_k * down[e_k] @ gated(gate_up[e_k] x).
  Only routed experts are computed. The attribute `biases` names the optional inputs after `down`, in
  order (BIASES): "score" [E] (added to the scores to choose, DeepSeek-V3), "logit" [E] (the router
  linear's bias, GPT-OSS), "gate_up" [E,2I] and "down" [E,H] (the experts' biases, GPT-OSS); read them
  with `moe_biases`.
- Router ops (gather, scatter, masked_fill, greater, abs, logical_not, full_like): the tensor ops
  transformers' routers are imported as, with torch's semantics. raise_moe folds them into `moe`.

Every expert is a gated FFN with gate and up stacked in one tensor, gate first (transformers'
layout): act(gate) * up, or GPT-OSS's "clamped_swiglu": gate = min(gate, limit), up = clamp(up,
-limit, limit), (up + 1) * gate * sigmoid(alpha * gate). Ties in top-k go to the lower expert index, as
torch.topk does on CPU.
"""
from __future__ import annotations

import math

import numpy as np

from . import shapes as S
from .ops import REQUIRED, _gelu, _norm_axis, _silu, _unary, register

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "clamped_swiglu")
BIASES = ("score", "logit", "gate_up", "down")
SCORINGS = ("softmax", "sigmoid", "sparsemixer")
ROUTING_ATTRS = ("top_k", "scoring", "normalize", "n_group", "topk_group", "routed_scaling", "jitter_eps")


def top_k(x: np.ndarray, k: int, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The k largest values along axis and their indices, largest first, ties by lower index."""
    idx = np.argsort(-x, axis=axis, kind="stable")
    idx = np.take(idx, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def expert_act(g: np.ndarray, act: str) -> np.ndarray:
    if act == "silu":
        return _silu(g)
    if act == "relu":
        return np.maximum(g, 0).astype(g.dtype)
    return _gelu(g, "tanh" if act == "gelu_tanh" else "none")


def gated(h: np.ndarray, act: str, alpha: float = 1.0, limit: float = 0.0) -> np.ndarray:
    """An expert's hidden activations from h = [gate | up] (rows [T, 2I])."""
    inter = h.shape[-1] // 2
    g, u = h[..., :inter], h[..., inter:]
    if act != "clamped_swiglu":
        return expert_act(g, act) * u
    g = np.minimum(g, np.float32(limit))
    u = np.clip(u, np.float32(-limit), np.float32(limit))
    return ((u + np.float32(1)) * (g / (np.float32(1) + np.exp(-np.float32(alpha) * g)))).astype(h.dtype)


def run_experts(x, index, weight, gate_up, down, act, gate_up_bias=None, down_bias=None, alpha=1.0, limit=0.0):
    """x[T,H] through the experts index[T,k] chose, weighted by weight[T,k] (one expert at a time)."""
    x = np.asarray(x)
    gate_up, down = np.asarray(gate_up), np.asarray(down)
    out = np.zeros(x.shape, np.float32)
    for e in np.unique(index):
        rows, slot = np.nonzero(index == e)
        h = x[rows] @ gate_up[e].T.astype(x.dtype, copy=False)
        if gate_up_bias is not None:
            h = h + np.asarray(gate_up_bias)[e].astype(x.dtype, copy=False)
        y = gated(h, act, alpha, limit) @ down[e].T.astype(x.dtype, copy=False)
        if down_bias is not None:
            y = y + np.asarray(down_bias)[e].astype(x.dtype, copy=False)
        np.add.at(out, rows, y * weight[rows, slot, None])
    return out.astype(x.dtype)


def _keep_top_groups(choice: np.ndarray, n_group: int, topk_group: int) -> np.ndarray:
    """choice[T,E] with the experts outside each row's topk_group best groups (of n_group consecutive
    groups) at -inf; a group's score is the sum of its two best choice scores (DeepSeek-V3)."""
    rows, experts = choice.shape
    groups = choice.reshape(rows, n_group, experts // n_group)
    _, best = top_k(top_k(groups, 2)[0].sum(-1), topk_group)
    keep = np.zeros((rows, n_group), bool)
    np.put_along_axis(keep, best, True, axis=1)
    return np.where(np.repeat(keep, experts // n_group, axis=1), choice, np.float32(-np.inf))


def _sparsemixer(logits: np.ndarray, jitter_eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Phi-MoE's router at inference: the best expert, then the best of the rest; each one's weight is
    its softmax over the experts whose logit lies within 2 * jitter_eps (relative) of its own."""
    threshold = np.float32(2 * jitter_eps)

    def pick(masked):
        best = masked.max(-1, keepdims=True)
        index = masked.argmax(-1)[:, None].astype(np.int64)
        far = (best - logits) / np.maximum(np.abs(logits), best) > threshold
        return np.take_along_axis(_softmax(np.where(far, np.float32(-np.inf), masked)), index, -1), index

    w1, i1 = pick(logits)
    rest = logits.copy()
    np.put_along_axis(rest, i1, np.float32(-np.inf), axis=-1)
    w2, i2 = pick(rest)
    return np.concatenate([w1, w2], -1), np.concatenate([i1, i2], -1)


def route(x, router, top_k_: int, scoring: str = "softmax", normalize: bool = True, bias=None,
          n_group: int = 1, topk_group: int = 1, routed_scaling: float = 1.0, jitter_eps: float = 0.0,
          logit_bias=None):
    """(weights[T,k], index[T,k]) of the experts the router picks for each row of x[T,H].

    scores = softmax or sigmoid of x @ router.T (+ logit_bias); the top_k experts by scores + bias (the bias only
    chooses), among the topk_group best of n_group groups when n_group > 1; their unbiased scores,
    divided by their sum when `normalize`, times routed_scaling. scoring "sparsemixer" is Phi-MoE's
    top-2 router (`_sparsemixer`) instead."""
    logits = np.asarray(x, np.float32) @ np.asarray(router, np.float32).T
    if logit_bias is not None:
        logits = logits + np.asarray(logit_bias, np.float32)
    if scoring == "sparsemixer":
        w, idx = _sparsemixer(logits, jitter_eps)
    else:
        scores = _softmax(logits) if scoring == "softmax" else 1.0 / (1.0 + np.exp(-logits))
        choice = scores if bias is None else scores + np.asarray(bias, np.float32)
        if n_group > 1:
            choice = _keep_top_groups(choice, n_group, topk_group)
        idx = top_k(choice, top_k_)[1]
        w = np.take_along_axis(scores, idx, -1)
    if normalize:
        w = w / w.sum(-1, keepdims=True)
    return (w * np.float32(routed_scaling)).astype(np.float32), idx


def _constant(graph, v) -> np.ndarray:
    """The array behind a router input: a weight, or a weight through a cast (the fp16 recipe's)."""
    p = v.producer
    if v.kind != "weight" and p is not None and p.op == "cast" and p.inputs[0].kind == "weight":
        return np.asarray(graph.weight(p.inputs[0])).astype(p.attrs["dtype"])
    return np.asarray(graph.weight(v))


def moe_biases(node) -> dict:
    """{name: Value} of a moe node's optional inputs (BIASES), by its `biases` attribute."""
    return dict(zip(node.attrs["biases"], node.inputs[4:]))


def node_route(graph, node, x):
    """route() for the rows x[T,H] through moe `node`, with its router weights and attributes."""
    b = {k: _constant(graph, v) for k, v in moe_biases(node).items() if k in ("score", "logit")}
    a = node.attrs
    return route(x, _constant(graph, node.inputs[1]), a["top_k"], bias=b.get("score"), logit_bias=b.get("logit"),
                 **{k: a[k] for k in ROUTING_ATTRS if k != "top_k"})


def routed_rows(graph, node, xs) -> list[np.ndarray]:
    """The rows of xs (arrays [..., H]: the moe node's input, e.g. per calibration window) that `node`'s router
    sends to each expert, in expert order (what the passes that calibrate experts one by one see)."""
    x = np.concatenate([np.asarray(r, np.float32).reshape(-1, r.shape[-1]) for r in xs])
    idx = node_route(graph, node, x)[1]
    return [x[(idx == e).any(1)] for e in range(node.inputs[2].shape[0])]


def expert_hidden(graph, node, e: int, rows: np.ndarray, gate_up_e) -> np.ndarray:
    """Expert e's activations (its down projection's input) on rows [T, H] through gate_up_e [2I, H] (the node's
    own rows, or a compressed copy of them) and the node's gate_up bias."""
    h = rows @ np.asarray(gate_up_e, np.float32).T
    bias = moe_biases(node).get("gate_up")
    if bias is not None:
        h = h + _constant(graph, bias)[e]
    a = node.attrs
    return gated(h, a["act"], a["alpha"], a["limit"])


def _check_experts(gate_up, down, act: str, a=None) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"moe: unknown expert activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    if act == "clamped_swiglu" and a is not None and not (
            math.isfinite(a["alpha"]) and math.isfinite(a["limit"]) and a["limit"] > 0):
        raise ValueError(f"moe: clamped_swiglu needs a finite alpha and a limit > 0, got {a['alpha']}, {a['limit']}")
    if gate_up.rank != 3 or down.rank != 3 or gate_up.shape[0] != down.shape[0]:
        raise ValueError(f"moe: expert weights gate_up{gate_up.shape} and down{down.shape} are not [E,2I,H], [E,H,I]")
    if gate_up.shape[1] != 2 * down.shape[2] or gate_up.shape[2] != down.shape[1]:
        raise ValueError(f"moe: gate_up{gate_up.shape} does not match down{down.shape}")


@register("topk", attrs={"k": REQUIRED, "axis": -1})
def _topk():
    def infer(ins, a):
        x = ins[0]
        axis = _norm_axis(a["axis"], x.rank)
        n = x.shape[axis]
        if not isinstance(a["k"], int) or a["k"] < 1 or (isinstance(n, int) and a["k"] > n):
            raise ValueError(f"topk: k={a['k']} out of range for {n} values")
        shape = tuple(a["k"] if i == axis else d for i, d in enumerate(x.shape))
        return [(x.dtype, shape), ("int64", shape)]

    def ref(x, k, axis):
        return top_k(x, k, axis)

    return infer, ref


def _check_expert_biases(gate_up, down, biases: dict) -> None:
    want = {"gate_up": tuple(gate_up.shape[:2]), "down": tuple(down.shape[:2])}
    for k, v in biases.items():
        if k in want and tuple(v.shape) != want[k]:
            raise ValueError(f"moe: {k} bias{v.shape} is not {list(want[k])}")


_EXPERT_ATTRS = {"act": REQUIRED, "alpha": 1.0, "limit": 0.0}


@register("moe_experts", arity=(5, 7), attrs=_EXPERT_ATTRS)
def _moe_experts():
    def infer(ins, a):
        x, index, weight, gate_up, down = ins[:5]
        _check_experts(gate_up, down, a["act"], a)
        if len(ins) == 6:
            raise ValueError("moe_experts: the expert biases come as a pair (gate_up_bias, down_bias)")
        _check_expert_biases(gate_up, down, dict(zip(("gate_up", "down"), ins[5:])))
        if x.rank != 2 or index.rank != 2 or index.dtype != "int64" or S.normalize(x.shape[1]) != down.shape[1]:
            raise ValueError(f"moe_experts: x{x.shape}, index{index.shape} vs experts {gate_up.shape}")
        return [(x.dtype, x.shape)]

    def ref(x, index, weight, gate_up, down, gate_up_bias=None, down_bias=None, *, act, alpha, limit):
        return run_experts(x, index, weight, gate_up, down, act, gate_up_bias, down_bias, alpha, limit)

    return infer, ref


def check_routing(a: dict, experts: int, biases: dict) -> None:
    """ValueError naming what is wrong with a moe node's router attributes and biases (backends reuse it)."""
    if a["scoring"] not in SCORINGS:
        raise ValueError(f"moe: unknown router scoring {a['scoring']!r}; known: {', '.join(SCORINGS)}")
    if not 1 <= a["top_k"] <= experts:
        raise ValueError(f"moe: top_k={a['top_k']} out of range for {experts} experts")
    groups, best = a["n_group"], a["topk_group"]
    if groups < 1 or experts % groups or not 1 <= best <= groups or (groups > 1 and experts // groups < 2):
        raise ValueError(f"moe: {experts} experts cannot be split into n_group={groups} groups of two or "
                         f"more, topk_group={best} of them kept")
    if a["top_k"] > best * experts // groups:
        raise ValueError(f"moe: top_k={a['top_k']} exceeds the {best * experts // groups} experts of the kept groups")
    for name in ("score", "logit"):
        if name in biases and tuple(biases[name].shape) != (experts,):
            raise ValueError(f"moe: {name} bias{biases[name].shape} is not [{experts}]")
    if a["scoring"] == "sparsemixer" and (a["top_k"] != 2 or "score" in biases or groups > 1):
        raise ValueError("moe: the sparsemixer router picks exactly 2 experts, without a score bias or groups")
    for name in ("routed_scaling", "jitter_eps"):
        v = a[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"moe: {name} must be a finite number, got {v!r}")
    if a["jitter_eps"] < 0:
        raise ValueError(f"moe: jitter_eps must be >= 0, got {a['jitter_eps']}")


@register("moe", arity=(4, 8), attrs={"top_k": REQUIRED, "scoring": "softmax", "normalize": True, "act": "silu",
                                      "alpha": 1.0, "limit": 0.0, "n_group": 1, "topk_group": 1,
                                      "routed_scaling": 1.0, "jitter_eps": 0.0, "biases": ()})
def _moe():
    def infer(ins, a):
        x, router, gate_up, down = ins[:4]
        _check_experts(gate_up, down, a["act"], a)
        names = tuple(a["biases"])
        if len(set(names)) != len(names) or not set(names) <= set(BIASES) or len(ins) != 4 + len(names):
            raise ValueError(f"moe: biases {list(names)} (each at most once, of {', '.join(BIASES)}) "
                             f"for {len(ins) - 4} inputs after the experts")
        biases = dict(zip(names, ins[4:]))
        experts = gate_up.shape[0]
        if router.rank != 2 or router.shape[0] != experts or S.normalize(x.shape[-1]) != router.shape[1]:
            raise ValueError(f"moe: router{router.shape} vs x{x.shape} and {experts} experts")
        _check_expert_biases(gate_up, down, biases)
        check_routing(a, experts, biases)
        return [(x.dtype, x.shape)]

    def ref(x, router, gate_up, down, *extra, top_k, act, alpha, limit, biases, **routing):
        b = dict(zip(biases, extra))
        rows = np.asarray(x).reshape(-1, x.shape[-1])
        w, idx = route(rows, router, top_k, bias=b.get("score"), logit_bias=b.get("logit"), **routing)
        return run_experts(rows, idx, w, gate_up, down, act, b.get("gate_up"), b.get("down"), alpha,
                           limit).reshape(x.shape)

    return infer, ref


# -------------------------------------------------------------------------------------- router ops
def _check_index(op: str, x, index, axis: int) -> int:
    if index.dtype != "int64" or index.rank != x.rank:
        raise ValueError(f"{op}: index {index.dtype}{index.shape} is not int64 of the rank of x{x.shape}")
    return _norm_axis(axis, x.rank)


@register("gather", arity=(2, 2), attrs={"axis": REQUIRED})
def _gather():
    """torch.gather(x, axis, index): x's values at index along axis (the chosen experts' scores)."""

    def infer(ins, a):
        x, index = ins
        _check_index("gather", x, index, a["axis"])
        return [(x.dtype, index.shape)]

    def ref(x, index, axis):
        return np.take_along_axis(x, index, axis)

    return infer, ref


@register("scatter", arity=(2, 2), attrs={"axis": REQUIRED, "value": REQUIRED})
def _scatter():
    """torch.scatter(x, axis, index, value): x with `value` at index along axis (masking chosen experts)."""

    def infer(ins, a):
        x, index = ins
        _check_index("scatter", x, index, a["axis"])
        return [(x.dtype, x.shape)]

    def ref(x, index, axis, value):
        out = np.array(x, copy=True)
        np.put_along_axis(out, index, np.asarray(value, out.dtype), axis)
        return out

    return infer, ref


@register("masked_fill", arity=(2, 2), attrs={"value": REQUIRED})
def _masked_fill():
    """x with `value` where the bool mask (broadcast to x) is true."""

    def infer(ins, a):
        x, mask = ins
        if mask.dtype != "bool" or S.broadcast(x.shape, mask.shape) != tuple(x.shape):
            raise ValueError(f"masked_fill: mask {mask.dtype}{mask.shape} is not bool broadcasting to {x.shape}")
        return [(x.dtype, x.shape)]

    def ref(x, mask, value):
        return np.where(mask, np.asarray(value, x.dtype), x)

    return infer, ref


@register("greater", arity=(2, 2))
def _greater():
    """x > y elementwise with broadcasting, as bool."""

    def infer(ins, a):
        x, y = ins
        if x.dtype != y.dtype:
            raise ValueError(f"dtype mismatch {x.dtype} vs {y.dtype}")
        return [("bool", S.broadcast(x.shape, y.shape))]

    def ref(x, y):
        return np.greater(x, y)

    return infer, ref


@register("logical_not")
def _logical_not():
    def infer(ins, a):
        if ins[0].dtype != "bool":
            raise ValueError(f"logical_not takes bool, not {ins[0].dtype}")
        return [("bool", ins[0].shape)]

    def ref(x):
        return np.logical_not(x)

    return infer, ref


@register("full_like", attrs={"value": REQUIRED})
def _full_like():
    """A tensor of x's shape and dtype holding `value` (torch.zeros_like and kin)."""

    def infer(ins, a):
        return [(ins[0].dtype, ins[0].shape)]

    def ref(x, value):
        return np.full(x.shape, value, x.dtype)

    return infer, ref


register("abs", doc="elementwise absolute value")(_unary(np.abs))
