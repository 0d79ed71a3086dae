"""AWQ (Lin et al. 2023): activation-aware weight quantization by per-input-channel scaling.

A few input channels carry much larger activations than the rest, and the
weights they multiply matter most. AWQ scales those weight columns up before
round-to-nearest (so they lose less precision) and divides the activations
by the same factor, which is exact in full precision:

    x W^T = (x / s) (W diag(s))^T,   s = mean|x|^alpha (normalized)

alpha is searched on a grid to minimize the quantized output error
||x W^T - (x/s) Q(W diag(s))^T||. The error is evaluated over all
calibration tokens at once through H = X^T X (||X D^T||^2 = tr(D H D^T)),
so the search costs N*K^2 per alpha, independent of the token count.

1/s is folded into what produces x, so inference pays nothing:
- an rms_norm / layer_norm whose output only feeds these linears: its
  weight (and bias) is divided by s;
- a `glu(act(gate), up)` whose `up` is a quantized linear: up's rows are
  divided by s, which for the packed format is just its row scales;
- otherwise an explicit `mul(x, 1/s)` with a [K] constant is inserted.

MoE experts (`awq_experts`): each expert's down projection is scaled on the activations of the tokens
routed to it, and 1/s is folded into the same expert's up rows (and up bias), exact because
act(gate) * up is linear in up. An expert's gate_up reads the layer's input, which the router reads too,
so it is rounded to nearest (as are GPT-OSS's clamped experts, whose (clamp(up) + 1) takes no fold, and
experts fewer than EXPERT_MIN_TOKENS calibration tokens reach).
"""
from __future__ import annotations

import numpy as np
import torch

from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value
from edgec.ir.quant import QuantSpec, dequantize_codes, group_params, pack, quantize_with, search_params

from .gptq import EXPERT_MIN_TOKENS, gptq_hessian
from .lib.activations import Stats, collect_sequential
from .quantize import (Target, check_clip_min, expert_weights, find_targets, make_spec, quantize_experts,
                       replace_weight, summary, weight_selector)
from .registry import PassResult, register_pass


def rtn(w: np.ndarray, spec: QuantSpec, importance: np.ndarray | None = None, clip_min: float = 0.6):
    """Round-to-nearest of w [N, K]: (codes, scales, zeros, dequantized w). With importance [K]
    (the inputs' mean squares), each group's range is searched for the least weighted error."""
    scales, zeros = group_params(w, spec) if importance is None else search_params(w, spec, importance, clip_min)
    codes = quantize_with(w, scales, zeros, spec)
    return codes, scales, zeros, dequantize_codes(codes, scales, zeros, w.shape[1])


def search_scales(w: np.ndarray, h: torch.Tensor, x_mean: np.ndarray, spec: QuantSpec, grid: int = 20):
    """Best per-input-channel scales s [K] for w [N, K]: (s, error at best alpha, error at alpha=0).

    Errors are ||X (W - Q(W s)/s)^T||^2 with H = X^T X; alpha = 0 is plain RTN.
    """
    hf = h.float()
    W = torch.from_numpy(np.asarray(w, np.float32))
    xm = np.maximum(np.asarray(x_mean, np.float64), 1e-4)
    best = (np.inf, np.ones(w.shape[1], np.float32))
    base = None
    for i in range(max(int(grid), 1)):
        alpha = i / grid
        s = xm ** alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        w_eff = rtn(w * s, spec)[3] / s
        d = torch.from_numpy(w_eff) - W
        err = float(((d @ hf) * d).sum())
        if i == 0:
            base = err
        if err < best[0]:
            best = (err, s)
    return best[1], best[0], base


def _fold_target(graph: Graph, x: Value, group: list[Node], users: dict, results: dict) -> str:
    """Where 1/s can be folded for the linears `group` reading x: 'norm', 'glu' or 'mul'."""
    p = x.producer
    only_group = set(users.get(x, [])) <= set(group) and x not in graph.outputs
    if p is None or not only_group:
        return "mul"
    if p.op in ("rms_norm", "layer_norm") and all(v.kind == "weight" for v in p.inputs[1:]):
        return "norm"
    if p.op == "glu":
        up = p.inputs[1]
        up_node = up.producer
        if (up_node is not None and up_node.op == "linear" and up_node.inputs[1].name in results
                and users.get(up) == [p] and up.shape == x.shape):
            return "glu"
    return "mul"


def _apply_fold(graph: Graph, x: Value, group: list[Node], s: np.ndarray, how: str, results: dict) -> None:
    inv = (1.0 / s).astype(np.float32)
    p = x.producer
    if how == "norm":
        ins = list(p.inputs)
        if len(ins) < 2:  # layer_norm without an affine weight
            ins.append(graph.add_weight(f"{x.name}.awq_weight", inv))
        else:
            ins[1] = graph.add_weight(f"{ins[1].name}.awq", np.asarray(graph.weight(ins[1]), np.float32) * inv)
        if p.op == "layer_norm" and len(ins) == 3:
            ins[2] = graph.add_weight(f"{ins[2].name}.awq", np.asarray(graph.weight(ins[2]), np.float32) * inv)
        p.inputs = ins
    elif how == "glu":
        up_node = p.inputs[1].producer
        name = up_node.inputs[1].name
        packed, scales, zeros, s_up = results[name]
        results[name] = (packed, scales * inv[:, None], zeros, s_up)  # row n of up divided by s[n]
        if len(up_node.inputs) == 3:
            b = up_node.inputs[2]
            up_node.inputs = up_node.inputs[:2] + [graph.add_weight(f"{b.name}.awq", np.asarray(graph.weight(b)) * inv)]
    else:
        m = graph.make_node("mul", [x, graph.add_weight(f"{x.name}.awq_inv_scale", inv)], name=f"{x.name}.awq")
        graph.insert_before(min(group, key=graph.nodes.index), m)
        for n in group:
            n.inputs = [m.output] + n.inputs[1:]


def awq_experts(graph: Graph, node: Node, xs: list[np.ndarray], spec: QuantSpec, grid: int) -> tuple[int, list]:
    """Per-expert AWQ of moe `node`'s down projections on the rows xs the layer sees: rewrites its down (columns
    times s) and up rows (divided by s) in place, in full precision. Returns (experts scaled, their error
    ratios vs RTN)."""
    from edgec.ir.ops_moe import expert_hidden, moe_biases, routed_rows

    gate_up, down = node.inputs[2:4]
    if node.attrs["act"] == "clamped_swiglu" or gate_up.kind != "weight" or down.kind != "weight":
        return 0, []
    bias = moe_biases(node).get("gate_up")
    if bias is not None and bias.kind != "weight":
        return 0, []
    gu = np.array(graph.weight(gate_up), np.float32)
    dn = np.array(graph.weight(down), np.float32)
    gb = np.array(graph.weight(bias), np.float32) if bias is not None else None
    inter = dn.shape[2]
    scaled, gains = 0, []
    for e, xe in enumerate(routed_rows(graph, node, xs)):
        if len(xe) < EXPERT_MIN_TOKENS:
            continue
        stats = Stats.of([expert_hidden(graph, node, e, xe, gu[e])], abs_sum=True, hessian=True)
        s, err, base = search_scales(dn[e], gptq_hessian(stats), stats.mean_abs, spec, grid)
        gains.append(err / base if base > 0 else 1.0)
        if np.all(s == 1):
            continue
        dn[e] *= s
        gu[e, inter:] /= s[:, None]
        if gb is not None:
            gb[e, inter:] /= s
        scaled += 1
    graph.weights[gate_up.name], graph.weights[down.name] = gu, dn
    if gb is not None:
        graph.weights[bias.name] = gb
    return scaled, gains


@register_pass("awq", needs_calibration=True, bits=4, group_size=128, symmetric=False, grid=20, lm_head=False,
               skip=[], only=[], layers=None, clip_search=False, clip_min=0.6, scales="fp32")
def awq(graph: Graph, ctx, bits, group_size, symmetric, grid, lm_head, skip, clip_search=False,
        clip_min=0.6, scales="fp32", only=(), layers=None) -> PassResult:
    """AWQ: activation-aware scaling searched on calibration data, then round-to-nearest (Lin et al. 2023).

    clip_search: after the scaling, each group's range is searched for the least error weighted by the
    scaled inputs' mean squares (AWQ's own clipping step, edgec.ir.quant.search_range)."""
    spec = make_spec(bits, group_size, symmetric, scales)
    check_clip_min(clip_min)
    if int(grid) < 1:
        raise EdgecError(f"awq: grid must be >= 1, got {grid}")
    targets = find_targets(graph, spec, lm_head=lm_head, skip=skip, only=only, layers=layers)
    experts = expert_weights(graph, spec, weight_selector(graph, skip, only, layers))  # checked before any work
    before = graph.weights.total_bytes()
    # A weight read by several linears cannot take one input scaling: plain RTN for it.
    single = [t for t in targets if len(t.linears) == 1]
    by_node: dict[Node, Target] = {t.linears[0]: t for t in single}
    results: dict[str, tuple] = {}  # weight -> (packed, scales, zeros, s) of Q(W diag(s))
    groups: list[tuple[Value, list[Node], np.ndarray]] = []
    gains: list[float] = []

    def visit(node, stats):
        t = by_node[node]
        if t.name in results:
            return
        x = node.inputs[0]
        group = [u for u in single if u.linears[0].inputs[0] is x and u.name not in results]
        ws = [np.asarray(graph.weight(u.value), np.float32) for u in group]
        h = gptq_hessian(stats)
        s, err, base = search_scales(np.concatenate(ws), h, stats.mean_abs, spec, grid)
        gains.append(err / base if base > 0 else 1.0)
        imp = (torch.diag(h).double().numpy() / s.astype(np.float64) ** 2) if clip_search else None
        for u, w in zip(group, ws):
            codes, scales, zeros, w_hat = rtn(w * s, spec, imp, float(clip_min))
            results[u.name] = (pack(codes, spec.bits), scales, zeros, s)
            graph.weights[u.name] = w_hat / s  # what the layer computes on the unscaled x
        groups.append((x, [u.linears[0] for u in group], s))
        ctx.progress(f"awq: {len(results)}/{len(single)} {', '.join(u.name for u in group)}: "
                     f"output error {gains[-1]:.2f}x of RTN")

    expert_gains: list[float] = []
    scaled_experts = 0

    def visit_moe(node, xs):
        nonlocal scaled_experts
        n, g = awq_experts(graph, node, xs, spec, grid)
        scaled_experts += n
        expert_gains.extend(g)
        ctx.progress(f"awq: {node.output.name}: {n} experts' down projections scaled")

    moes = {n for n, i in experts if i == 3}  # (down projections the selection quantizes)
    collect_sequential(graph, ctx.windows(), by_node, visit, raw={n: visit_moe for n in moes}, abs_sum=True,
                       hessian=True)
    users = graph.users()
    plans = [(x, group, s, _fold_target(graph, x, group, users, results)) for x, group, s in groups
             if not np.all(s == 1)]
    folds = {"norm": 0, "glu": 0, "mul": 0}
    for x, group, s, how in plans:
        _apply_fold(graph, x, group, s, how, results)
        folds[how] += 1
    for t in targets:
        if t.name in results:
            packed, scales, zeros, _ = results[t.name]
        else:
            w = np.asarray(graph.weight(t.value), np.float32)
            codes, scales, zeros, _ = rtn(w, spec)
            packed = pack(codes, spec.bits)
        replace_weight(graph, t, packed, scales, zeros, spec)
    # MoE experts, each on its own: down projections scaled above, then every expert weight rounded to nearest
    n_experts = quantize_experts(graph, experts, spec)
    graph.prune_weights()
    extra = (f", output error {np.mean(gains):.2f}x of RTN, scales folded into "
             f"{folds['norm']} norms + {folds['glu']} up projections, {folds['mul']} mul" if gains else "")
    if n_experts:
        extra += (f", {n_experts} MoE expert weights ({scaled_experts} experts' down projections AWQ-scaled"
                  + (f", output error {np.mean(expert_gains):.2f}x of RTN" if expert_gains else "")
                  + "; gate_up rounded to nearest)")
    count, after = sum(len(t.linears) for t in targets), graph.weights.total_bytes()
    counts = {"linears": count, "bytes_before": before, "bytes_after": after, "folded_norms": folds["norm"],
              "quantized_expert_weights": n_experts, "awq_scaled_experts": scaled_experts,
              "folded_up": folds["glu"], "muls": folds["mul"]}
    if gains:
        counts["error_vs_rtn"] = float(np.mean(gains))
    return PassResult(summary(count, spec, before, after, graph, lm_head, extra), counts)
