"""Mixture-of-experts ops.

- topk(x, k, axis) -> (values, indices int64): the k largest along an axis, largest first (the
  router's choice before raise_moe folds it).
- moe_experts(x[T,H], index[T,k] int64, weight[T,k], gate_up[E,2I,H], down[E,H,I], act): the routed
  experts of one layer as the frontend imports them (edgec.frontend.moe).
- moe(x[...,H], router[E,H], gate_up[E,2I,H], down[E,H,I], top_k, scoring, normalize, act): router
  and experts in one op (passes/raise_moe.py makes it): scores = softmax(x @ router.T) (scoring
  "softmax"), the top_k experts by score, their scores divided by their sum when `normalize`, and
  sum_k score_k * down[e_k] @ (act(gate[e_k] x) * up[e_k] x). Only routed experts are computed.

Every expert is a gated FFN with gate and up stacked in one tensor, gate first (transformers'
layout). Ties in top-k go to the lower expert index, as torch.topk does on CPU.
"""
from __future__ import annotations

import numpy as np

from . import shapes as S
from .ops import REQUIRED, _gelu, _norm_axis, _silu, register

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
SCORINGS = ("softmax",)


def top_k(x: np.ndarray, k: int, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The k largest values along axis and their indices, largest first, ties by lower index."""
    idx = np.argsort(-x, axis=axis, kind="stable")
    idx = np.take(idx, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


def expert_act(g: np.ndarray, act: str) -> np.ndarray:
    if act == "silu":
        return _silu(g)
    if act == "relu":
        return np.maximum(g, 0).astype(g.dtype)
    return _gelu(g, "tanh" if act == "gelu_tanh" else "none")


def run_experts(x, index, weight, gate_up, down, act):
    """x[T,H] through the experts index[T,k] chose, weighted by weight[T,k] (one expert at a time)."""
    x = np.asarray(x)
    gate_up, down = np.asarray(gate_up), np.asarray(down)
    inter = down.shape[2]
    out = np.zeros(x.shape, np.float32)
    for e in np.unique(index):
        rows, slot = np.nonzero(index == e)
        h = x[rows] @ gate_up[e].T.astype(x.dtype, copy=False)
        y = (expert_act(h[:, :inter], act) * h[:, inter:]) @ down[e].T.astype(x.dtype, copy=False)
        np.add.at(out, rows, y * weight[rows, slot, None])
    return out.astype(x.dtype)


def route(x, router, top_k_: int, scoring: str, normalize: bool):
    """(weights[T,k], index[T,k]) of the experts the router picks for each row of x[T,H]."""
    logits = np.asarray(x, np.float32) @ np.asarray(router, np.float32).T
    e = np.exp(logits - logits.max(-1, keepdims=True))
    scores = e / e.sum(-1, keepdims=True)
    w, idx = top_k(scores, top_k_)
    if normalize:
        w = w / w.sum(-1, keepdims=True)
    return w.astype(np.float32), idx


def _check_experts(gate_up, down, act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"moe: unknown expert activation {act!r}; known: {', '.join(ACTIVATIONS)}")
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


@register("moe_experts", arity=(5, 5), attrs={"act": REQUIRED})
def _moe_experts():
    def infer(ins, a):
        x, index, weight, gate_up, down = ins
        _check_experts(gate_up, down, a["act"])
        if x.rank != 2 or index.rank != 2 or index.dtype != "int64" or S.normalize(x.shape[1]) != down.shape[1]:
            raise ValueError(f"moe_experts: x{x.shape}, index{index.shape} vs experts {gate_up.shape}")
        return [(x.dtype, x.shape)]

    def ref(x, index, weight, gate_up, down, act):
        return run_experts(x, index, weight, gate_up, down, act)

    return infer, ref


@register("moe", arity=(4, 4), attrs={"top_k": REQUIRED, "scoring": "softmax", "normalize": True,
                                      "act": "silu"})
def _moe():
    def infer(ins, a):
        x, router, gate_up, down = ins
        _check_experts(gate_up, down, a["act"])
        if a["scoring"] not in SCORINGS:
            raise ValueError(f"moe: unknown router scoring {a['scoring']!r}; known: {', '.join(SCORINGS)}")
        experts = gate_up.shape[0]
        if router.rank != 2 or router.shape[0] != experts or S.normalize(x.shape[-1]) != router.shape[1]:
            raise ValueError(f"moe: router{router.shape} vs x{x.shape} and {experts} experts")
        if not 1 <= a["top_k"] <= experts:
            raise ValueError(f"moe: top_k={a['top_k']} out of range for {experts} experts")
        return [(x.dtype, x.shape)]

    def ref(x, router, gate_up, down, top_k, scoring, normalize, act):
        rows = np.asarray(x).reshape(-1, x.shape[-1])
        w, idx = route(rows, router, top_k, scoring, normalize)
        return run_experts(rows, idx, w, gate_up, down, act).reshape(x.shape)

    return infer, ref
