"""SmoothQuant W8A8 (Xiao et al. 2023): migrate activation outliers into the weights, then int8 both.

Per-token int8 activations fail on LLMs because a few input channels carry
outliers 10-100x larger than the rest, so one token's scale is set by them
and every other channel rounds to a handful of levels. Weights have no such
outliers. For each linear input channel j,

    s_j = max|X_j|^alpha / max|W[:, j]|^(1 - alpha)      (clamped >= 1e-5)

with max|X_j| over the calibration tokens and max|W[:, j]| over every linear
that reads the same X. Then X / s and W * s compute the same product while
both factors have flattened ranges. 1/s is folded away where that is free:

- into the producing rms_norm / layer_norm (weight and bias), when its output
  feeds only these linears (q/k/v, gate/up);
- into the up projection of a gated MLP, whose output rows scale act(g) * u
  linearly (down_proj's input);
- otherwise an explicit `mul(x, 1/s)` is inserted (e.g. o_proj's input).

Each smoothed linear then becomes `linear_w8a8` with symmetric per-output-
channel int8 weights; activations are quantized per token at run time. The
lm_head stays fp32 unless lm_head=True (logits are the most sensitive, and it
is often tied to the embedding). quantize=False stops after smoothing (an
exact transform up to float rounding; used by the tests).

Activation maxima come from one streaming calibration run over the original
graph (passes/lib/activations.py: one window at a time); the paper's
statistics are per tensor over all tokens, so no sequential pass is needed.
"""
from __future__ import annotations

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value
from edgec.ir.ops import quantize_rows_int8

from .lib.activations import Stats, collect
from .match import is_const
from .registry import PassResult, register_pass

MIN_SCALE = 1e-5


def smoothing_scales(act_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = act_max^alpha / w_max^(1-alpha), both clamped to >= 1e-5 like the reference code."""
    a = np.maximum(np.asarray(act_max, np.float64), MIN_SCALE)
    w = np.maximum(np.asarray(w_max, np.float64), MIN_SCALE)
    return np.maximum(a ** alpha / w ** (1.0 - alpha), MIN_SCALE).astype(np.float32)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: (q int8 [N, K], scale f32 [N])."""
    q, scale = quantize_rows_int8(np.asarray(w, np.float32))
    return q, scale[:, 0]


def lm_heads(graph: Graph) -> set[Node]:
    """Linears that produce the logits, found by walking back from each output.

    The walk passes through ops with one non-constant input (Gemma 2's
    softcap tanh/mul/div, casts), so the head is found with or without them.
    """
    heads = set()
    for out in graph.outputs:
        v = out
        for _ in range(8):
            n = v.producer
            if n is None:
                break
            if n.op in ("linear", "linear_w8a8"):
                heads.add(n)
                break
            live = [i for i in n.inputs if not is_const(i)]
            if len(live) != 1:
                break
            v = live[0]
    return heads


def _eligible(graph: Graph, heads: set[Node], lm_head: bool):
    for n in graph.nodes:
        if n.op != "linear" or (n in heads and not lm_head):
            continue
        x, w = n.inputs[:2]
        if w.kind == "weight" and w.rank == 2 and x.dtype == "float32" \
                and graph.weights.info(w.name).dtype in ("float32", "float16"):
            yield n


def _only_feeds(x: Value, group: list[Node], users, graph: Graph) -> bool:
    return x not in graph.outputs and {id(u) for u in users.get(x, [])} <= {id(n) for n in group}


def _through_reshapes(graph: Graph, x: Value, users) -> Value:
    """The tensor behind a private chain of reshapes that keep the last axis (GPT-2 flattens to 2-D)."""
    while x.producer is not None and x.producer.op == "reshape":
        src = x.producer.inputs[0]
        if src.shape[-1] != x.shape[-1] or len(users.get(src, [])) != 1 or src in graph.outputs:
            break
        x = src
    return x


def _norm_producer(graph: Graph, x: Value, group, users) -> Node | None:
    """The rms_norm / layer_norm making x, if 1/s can go into its weight (and bias)."""
    if not _only_feeds(x, group, users, graph):
        return None
    n = _through_reshapes(graph, x, users).producer
    if n is None or n.op not in ("rms_norm", "layer_norm") or len(n.inputs) < 2:
        return None
    return n if all(v.kind == "weight" for v in n.inputs[1:]) else None


def _up_producer(graph: Graph, x: Value, group, users, eligible: set[Node]) -> Node | None:
    """For x = glu(gate, up): the linear making `up`, if we rewrite it and it feeds only the glu."""
    n = x.producer
    if n is None or n.op != "glu" or not _only_feeds(x, group, users, graph):
        return None
    up = n.inputs[1]
    lin = up.producer
    if lin is None or lin not in eligible or n.inputs[0] is up or len(users.get(up, [])) != 1 \
            or tuple(up.shape) != tuple(x.shape):
        return None
    return lin


@register_pass("smoothquant", needs_calibration=True, alpha=0.5, lm_head=False, quantize=True)
def smoothquant(graph: Graph, ctx=None, alpha: float = 0.5, lm_head: bool = False,
                quantize: bool = True) -> PassResult:
    """SmoothQuant: smooth activation outliers into weights, then W8A8 (per-token int8 activations)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise EdgecError(f"smoothquant alpha must be in [0, 1], got {alpha}")
    if ctx is None:
        raise EdgecError("smoothquant needs calibration data (pass --calib FILE)")
    before = graph.weights.total_bytes()
    eligible = list(_eligible(graph, lm_heads(graph), lm_head))
    if not eligible:
        return PassResult("no fp32 linears to quantize", {"linears": 0})
    groups: dict[Value, list[Node]] = {}
    for n in eligible:
        groups.setdefault(n.inputs[0], []).append(n)
    # max |x_j| per input channel over all calibration tokens, once per shared input (q/k/v, gate/up)
    stats = collect(graph, ctx.windows(), {x: Stats(abs_max=True) for x in groups}, ctx.progress,
                    "smoothquant: calibrating")

    users = graph.users()
    elig = set(eligible)
    row_scale: dict[Node, np.ndarray] = {}  # pending 1/s folded into a linear's output channels
    col_scale: dict[Node, np.ndarray] = {}
    folds = {"norm": 0, "up": 0, "mul": 0}
    # All scales first, weights after: down_proj's 1/s lands on up_proj's rows, which must be
    # known before up_proj is quantized. Every max is of the original weights, which is what a
    # sequential smoothing (norm->gate/up, then up->down) sees: row scaling of W_up does not
    # change the statistics of down_proj's input.
    for x, group in groups.items():
        w_max = np.max([np.abs(np.asarray(graph.weight(n.inputs[1]), np.float32)).max(0) for n in group], 0)
        s = smoothing_scales(stats[x].abs_max, w_max, alpha)
        inv = (1.0 / s).astype(np.float32)
        for n in group:
            col_scale[n] = s
        norm = _norm_producer(graph, x, group, users)
        up = None if norm else _up_producer(graph, x, group, users, elig)
        if norm is not None:
            for i, v in enumerate(norm.inputs[1:], 1):
                scaled = np.asarray(graph.weight(v), np.float32) * inv
                norm.inputs[i] = graph.add_weight(v.name + ".smooth", scaled)
            folds["norm"] += 1
        elif up is not None:
            row_scale[up] = inv
            folds["up"] += 1
        else:
            mul = graph.make_node("mul", [x, graph.add_weight(f"{group[0].inputs[1].name}.smooth_inv", inv)])
            graph.insert_before(min(group, key=graph.nodes.index), mul)
            for n in group:
                n.inputs[0] = mul.output
            folds["mul"] += 1

    for n in eligible:
        x, w = n.inputs[:2]
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        wf = np.asarray(graph.weight(w), np.float32) * col_scale[n][None, :]
        if n in row_scale:
            wf = wf * row_scale[n][:, None]
            if bias is not None:
                bias = graph.add_weight(bias.name + ".smooth",
                                        np.asarray(graph.weight(bias), np.float32) * row_scale[n])
        rest = [bias] if bias is not None else []
        if quantize:
            q, scale = quantize_weight(wf)
            new = graph.make_node("linear_w8a8", [x, graph.add_weight(w.name + ".int8", q),
                                                  graph.add_weight(w.name + ".scale", scale), *rest])
        else:
            new = graph.make_node("linear", [x, graph.add_weight(w.name + ".smooth", wf), *rest])
        graph.insert_before(n, new)
        graph.replace_all_uses(n.output, new.output)
        graph.remove(n)
    graph.prune_weights()
    after = graph.weights.total_bytes()
    what = f"W8A8 {len(eligible)} linears" if quantize else f"smoothed {len(eligible)} linears (fp32)"
    moes = sum(n.op == "moe" for n in graph.nodes)  # experts: no W8A8 form yet, said rather than left silent
    experts = f"; the experts of {moes} MoE layers stay in float (no W8A8 experts yet)" if moes else ""
    return PassResult(f"{what}, alpha={alpha}: {len(groups)} inputs smoothed ({folds['norm']} folded into norms, "
                      f"{folds['up']} into up projections, {folds['mul']} explicit muls), "
                      f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB{experts}",
                      {"linears": len(eligible), "inputs": len(groups), "folded_norms": folds["norm"], "float_moe_layers": moes,
                       "folded_up": folds["up"], "muls": folds["mul"], "bytes_before": before, "bytes_after": after})
