"""Structured pruning that really shrinks shapes: FFN channels and attention KV groups.

Unlike unstructured/N:M pruning (prune.py), removing whole intermediate FFN
channels or whole attention heads makes every backend faster and the
artifact smaller with no sparse kernels.

- prune_ffn / wanda_ffn: for each MLP (gate/up linears -> glu -> down, or
  linear -> activation -> linear, also fused gate_up as in Phi-3; found and
  cut by passes/lib/ffn.py) drop the least important intermediate channels:
  rows of the producing linears (and their biases), columns of the down
  projection, and the static sizes of any reshape/slice in between.
- prune_heads / wanda_heads: for each attention drop whole KV groups (a KV
  head with the query heads that share it, so GQA stays uniform): rows of
  q/k/v, columns of the output projection, and the head counts of the
  reshapes along the way.

Importance without data ("magnitude") is a weight-norm proxy of a unit's
contribution; with data ("wanda_*") it is the sum of the Wanda scores
|W_ij| * ||X_j|| of the down/output-projection weights the unit removes.
Two pass names instead of a `criterion` option because whether a pass needs
calibration data is declared per pass in the registry.

Matching is conservative: a path through an op it does not understand is
refused with a message naming it (e.g. fused qkv projections for heads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value

from .lib.activations import Stats, collect
from .lib.ffn import BINARY, UNARY, channel_magnitude, find_ffns, take_channels
from .lib.linears import dense_weight, reinfer, take_cols, take_rows
from .registry import PassResult, register_pass


# ---------------------------------------------------------------- helpers
def _is_scalar(v: Value) -> bool:
    return all(d == 1 for d in v.shape)


def _check_ratio(ratio, what: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise EdgecError(f"{what}: ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def _path_input(n: Node) -> Value | None:
    """The one non-scalar input of an elementwise op whose other inputs are scalars (None otherwise)."""
    if n.op in UNARY:
        return n.inputs[0]
    if n.op in BINARY:
        wide = [i for i in n.inputs if not _is_scalar(i)]
        return wide[0] if len(wide) == 1 else None
    return None


def _plain_weight_linear(n: Node) -> bool:
    return n.op == "linear" and all(v.kind == "weight" for v in n.inputs[1:]) and n.inputs[1].rank == 2


def _wanda_scores(graph: Graph, ctx, nodes: list[Node], label: str) -> dict[Node, np.ndarray]:
    """Per input channel of each node: sum_i |W_ij| * ||X_j|| over calibration data."""
    stats = collect(graph, ctx.windows(), {n.inputs[0]: Stats(sum_sq=True) for n in nodes}, ctx.progress, label)
    return {n: np.abs(dense_weight(graph, n)).sum(0) * stats[n.inputs[0]].norms for n in nodes}


# ---------------------------------------------------------------- FFN
def _keep(score: np.ndarray, ratio: float, multiple_of: int) -> np.ndarray:
    size = len(score)
    keep = max(1, size - int(round(ratio * size)))
    keep = min(size, math.ceil(keep / multiple_of) * multiple_of)
    return np.sort(np.argsort(-score, kind="stable")[:keep])


def _prune_ffn(graph: Graph, ratio, multiple_of, scores=None, name="prune_ffn") -> PassResult:
    ratio = _check_ratio(ratio, name)
    if not isinstance(multiple_of, int) or multiple_of < 1:
        raise EdgecError(f"{name}: multiple_of must be an integer >= 1, got {multiple_of!r}")
    ffns = find_ffns(graph)
    if not ffns:
        raise EdgecError(f"{name}: found no MLP (linear -> activation -> linear, or gate/up -> glu -> down)")
    before = after = 0
    for ffn in ffns:
        score = scores[ffn.down] if scores else channel_magnitude(graph, ffn)
        keep = _keep(score, ratio, multiple_of)
        before, after = before + ffn.size, after + len(keep)
        if len(keep) < ffn.size:
            take_channels(graph, ffn, keep)
    graph.prune_weights()
    return PassResult(f"pruned {len(ffns)} MLPs: {before} -> {after} intermediate channels "
                      f"({100 * (1 - after / before):.1f}%)",
                      {"mlps": len(ffns), "channels_before": before, "channels_after": after})


@register_pass("prune_ffn", ratio=0.25, multiple_of=8)
def prune_ffn(graph: Graph, ratio, multiple_of) -> PassResult:
    """Remove the lowest-magnitude intermediate channels of every MLP (shapes shrink)."""
    return _prune_ffn(graph, ratio, multiple_of)


@register_pass("wanda_ffn", needs_calibration=True, ratio=0.25, multiple_of=8)
def wanda_ffn(graph: Graph, ctx, ratio, multiple_of) -> PassResult:
    """Remove the MLP channels with the lowest Wanda score of the down projection (calibrated)."""
    _check_ratio(ratio, "wanda_ffn")
    ffns = find_ffns(graph)
    scores = _wanda_scores(graph, ctx, [f.down for f in ffns], "wanda_ffn") if ffns else {}
    return _prune_ffn(graph, ratio, multiple_of, scores, "wanda_ffn")


# ---------------------------------------------------------------- attention heads
@dataclass
class Path:
    """q, k or v of one attention: the projection, the nodes after it, the reshape(s) to update."""

    linear: Node
    nodes: list[Node]
    head_reshapes: list[Node]  # reshapes whose attr[-2] is this path's head count
    feature_reshapes: list[Node]  # reshapes before the head split (attr[-1] is heads * dim)
    heads: int
    dim: int


@dataclass
class Heads:
    attention: Node
    q: Path
    k: Path
    v: Path
    out: Node  # the output projection
    out_nodes: list[Node]  # reshapes etc. between attention and out
    heads: int
    kv_heads: int
    vdim: int


class _NoMatch(Exception):
    pass


def _single_user(users, v: Value, where: str) -> Node:
    us = users.get(v, [])
    if len(us) != 1:
        raise _NoMatch(f"{where}: %{v.name} has {len(us)} users")
    return us[0]


def _trace_in(users, v: Value, heads: int, dim, where: str) -> Path:
    """Back from an attention input [B, H, S, D] to the linear that produces its H*D features."""
    axis, nodes, reshapes, features = 1, [], [], []
    while True:
        p = v.producer
        if p is None:
            raise _NoMatch(f"{where} comes from a graph input or weight")
        if len(users.get(v, [])) != 1:
            raise _NoMatch(f"{where}: %{v.name} is also used elsewhere")
        if axis is None:  # after the head split: features on the last axis, head-major
            if p.op == "linear":
                if not _plain_weight_linear(p):
                    raise _NoMatch(f"{where}: the projection's weight is not a plain weight")
                return Path(p, nodes, reshapes, features, heads, dim)
            if p.op == "reshape" and p.inputs[0].shape[-1] == v.shape[-1] and p.attrs["shape"][-1] == v.shape[-1]:
                features.append(p)
            elif _path_input(p) is None:
                raise _NoMatch(f"{where} goes through `{p.op}` (a fused qkv projection?)")
            nodes.append(p)
            v = _path_input(p) or p.inputs[0]
            continue
        elif p.op == "permute":
            axis = p.attrs["perm"][axis]
        elif p.op == "reshape":
            shape = p.output.shape
            if axis != len(shape) - 2 or shape[-1] != dim or p.inputs[0].shape[-1] != heads * dim \
                    or p.attrs["shape"][-2] != heads:
                raise _NoMatch(f"{where}: a reshape that does not split heads")
            reshapes.append(p)
            axis = None
        elif p.op == "rotary":
            if v is not p.output or p.inputs[1].shape[axis] != 1:
                raise _NoMatch(f"{where}: rotary tables vary per head")
        elif p.op == "rms_norm" or p.op == "layer_norm":
            if axis == p.output.rank - 1:
                raise _NoMatch(f"{where}: a norm over the head axis")
        elif _path_input(p) is None:
            raise _NoMatch(f"{where} goes through `{p.op}` (a fused qkv projection?)")
        nodes.append(p)
        v = _path_input(p) or p.inputs[0]


def _trace_out(users, att: Node, heads: int, dim) -> tuple[Node, list[Node]]:
    """Forward from attention's [B, S, H, Dv] output to the output projection."""
    v, nodes, split = att.outputs[0], [], True
    while True:
        n = _single_user(users, v, "attention output")
        if n.op == "linear" and not split and n.inputs[0] is v:
            if not _plain_weight_linear(n):
                raise _NoMatch("the output projection's weight is not a plain weight")
            return n, nodes
        if n.op == "reshape" and n.inputs[0] is v:
            if split and (n.output.shape[-1] != heads * dim or n.attrs["shape"][-1] != heads * dim):
                raise _NoMatch("attention output: a reshape that does not merge heads")
            if not split and n.output.shape[-1] != v.shape[-1]:
                raise _NoMatch("attention output: a reshape that changes the feature size")
            split = False
        elif _path_input(n) is not v:
            raise _NoMatch(f"attention output goes through `{n.op}`")
        nodes.append(n)
        v = n.output


def find_heads(graph: Graph) -> list[Heads]:
    """Every attention with its q/k/v/output projections; refuse (EdgecError) what cannot be pruned."""
    users, found = graph.users(), []
    for att in graph.nodes:
        if att.op != "attention":
            continue
        where = f"attention %{att.outputs[0].name}"
        if len(att.inputs) != 3:
            raise EdgecError(f"head pruning runs before the KV cache is added; {where} already has one")
        q, k, v = att.inputs
        H, KV, D, Dv = q.shape[1], k.shape[1], q.shape[3], v.shape[3]
        try:
            paths = [_trace_in(users, x, h, d, f"{where}: the {name} path")
                     for x, h, d, name in ((q, H, D, "query"), (k, KV, D, "key"), (v, KV, Dv, "value"))]
            out, out_nodes = _trace_out(users, att, H, Dv)
        except _NoMatch as e:
            raise EdgecError(f"head pruning cannot handle this model: {e}") from None
        found.append(Heads(att, *paths, out, out_nodes, H, KV, Dv))
    return found


def _group_cols(h: Heads, groups) -> np.ndarray:
    """Columns of the output projection (and rows of q) that belong to KV groups `groups`."""
    rep, dv = h.heads // h.kv_heads, h.vdim
    return np.concatenate([np.arange((g * rep) * dv, (g + 1) * rep * dv) for g in groups])


def _rows(path: Path, heads) -> np.ndarray:
    d = path.dim
    return np.concatenate([np.arange(x * d, (x + 1) * d) for x in heads])


def _heads_magnitude(graph: Graph, h: Heads) -> np.ndarray:
    """Per KV group: ||W_v rows|| * ||W_o cols||, the size of its value->output path (softmax rows sum to 1)."""
    wv, wo = dense_weight(graph, h.v.linear), dense_weight(graph, h.out)
    return np.array([np.linalg.norm(wv[_rows(h.v, [g])]) * np.linalg.norm(wo[:, _group_cols(h, [g])])
                     for g in range(h.kv_heads)])


def _shrink_heads(graph: Graph, h: Heads, keep: np.ndarray) -> None:
    rep = h.heads // h.kv_heads
    q_heads = np.concatenate([np.arange(g * rep, (g + 1) * rep) for g in keep])
    for path, kept in ((h.q, q_heads), (h.k, keep), (h.v, keep)):
        take_rows(graph, path.linear, _rows(path, kept))
        for r in path.head_reshapes:
            r.attrs["shape"] = list(r.attrs["shape"][:-2]) + [len(kept), r.attrs["shape"][-1]]
        for r in path.feature_reshapes:
            r.attrs["shape"] = list(r.attrs["shape"][:-1]) + [len(kept) * path.dim]
    for n in h.out_nodes:  # the head merge and any reshape after it end in heads * vdim
        if n.op == "reshape":
            n.attrs["shape"] = list(n.attrs["shape"][:-1]) + [len(q_heads) * h.vdim]
    take_cols(graph, h.out, _group_cols(h, keep))
    reinfer(graph, [p.linear for p in (h.q, h.k, h.v)] + h.q.nodes + h.k.nodes + h.v.nodes
             + [h.attention] + h.out_nodes + [h.out])


def _prune_heads(graph: Graph, groups, ratio, scores=None, name="prune_heads") -> PassResult:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 0:
        raise EdgecError(f"{name}: groups must be an integer >= 0, got {groups!r}")
    ratio = _check_ratio(ratio, name)
    if bool(groups) == bool(ratio):
        raise EdgecError(f"{name}: give exactly one of groups (KV groups removed per layer) or ratio")
    layers = find_heads(graph)
    if not layers:
        raise EdgecError(f"{name}: the model has no attention")
    before = after = 0
    for h in layers:
        drop = groups or int(round(ratio * h.kv_heads))
        if drop >= h.kv_heads:
            raise EdgecError(f"{name}: cannot remove {drop} of {h.kv_heads} KV groups; keep at least one")
        score = scores[h.out] if scores else _heads_magnitude(graph, h)
        if scores:  # per-column Wanda scores summed per group
            score = np.array([score[_group_cols(h, [g])].sum() for g in range(h.kv_heads)])
        keep = np.sort(np.argsort(-score, kind="stable")[:h.kv_heads - drop])
        before, after = before + h.heads, after + len(keep) * (h.heads // h.kv_heads)
        if drop:
            _shrink_heads(graph, h, keep)
    graph.prune_weights()
    return PassResult(f"pruned attention in {len(layers)} layers: {before} -> {after} query heads",
                      {"layers": len(layers), "heads_before": before, "heads_after": after})


@register_pass("prune_heads", groups=0, ratio=0.0)
def prune_heads(graph: Graph, groups, ratio) -> PassResult:
    """Remove whole KV groups (a KV head and its query heads) with the smallest value/output weights."""
    return _prune_heads(graph, groups, ratio)


@register_pass("wanda_heads", needs_calibration=True, groups=0, ratio=0.0)
def wanda_heads(graph: Graph, ctx, groups, ratio) -> PassResult:
    """Remove whole KV groups with the lowest Wanda score of the output projection (calibrated)."""
    layers = find_heads(graph)
    scores = _wanda_scores(graph, ctx, [h.out for h in layers], "wanda_heads") if layers else {}
    return _prune_heads(graph, groups, ratio, scores, "wanda_heads")
