"""GPTQ (Frantar et al. 2022): weight-only quantization that corrects rounding errors with second-order information.

For each linear, with H = 2/n sum x x^T over the calibration tokens, GPTQ
quantizes W one input column at a time and spreads each column's rounding
error over the columns not yet quantized, weighted by the inverse Hessian,
so ||X W^T - X Q^T|| stays much lower than with round-to-nearest.

Layers are processed in graph order (passes/lib/activations.py's
collect_sequential), and each layer's dequantized weights are written back
before it runs, so every layer is calibrated on the outputs of the
already-quantized layers before it.
Linears that read the same input (q/k/v, gate/up) share one Hessian and are
quantized together as one row-stacked matrix (GPTQ is row-independent).

MoE experts (the `moe` op's gate_up [E,2I,H] and down [E,H,I]): each expert is
calibrated on the tokens its router sends to it. gate_up's Hessian is that of
those tokens' inputs; down's that of act(gate x) * up x computed with the
already-quantized gate_up. An expert routed fewer than EXPERT_MIN_TOKENS
calibration tokens has no usable Hessian and is rounded to nearest (the
pass's summary counts them): more calibration text reaches more experts.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from edgec.errors import EdgecError
from edgec.ir import Graph
from edgec.ir.quant import (QuantSpec, dequantize_codes, group_params, pack, pad_columns, padded_k, params_from_range,
                            quantize_rtn, quantize_with, search_range)

from .lib.activations import Stats, collect_sequential
from .quantize import (check_clip_min, expert_weights, find_targets, make_spec, replace_experts, replace_weight,
                       summary, weight_selector)
from .registry import PassResult, register_pass


@contextmanager
def single_thread():
    """Run torch single-threaded: the column loop is thousands of tiny ops, and OpenMP's
    spin-waiting makes each cost milliseconds on a busy machine (microseconds without threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def gptq_hessian(stats: Stats) -> torch.Tensor:
    """H = 2/n sum_t x_t x_t^T over the n calibration tokens (float64 [K, K]), from X^T X."""
    return torch.from_numpy(stats.hessian * (2.0 / max(stats.count, 1)))


def hessian(xs: list[np.ndarray]) -> torch.Tensor:
    """gptq_hessian of activations given as arrays [..., K]."""
    return gptq_hessian(Stats.of(xs, hessian=True))


def _params(w: torch.Tensor, spec: QuantSpec, importance: torch.Tensor | None = None, clip_min: float = 0.6
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points (float32 [N]) for the columns of w [N, g], as edgec.ir.quant computes them:
    covering their range, or (importance = the columns' diag(H)) searched for the least weighted error."""
    if importance is not None:
        s, z = search_range(w.numpy(), spec, importance.numpy(), clip_min=clip_min)
    else:
        s, z = params_from_range(w.min(1).values.numpy(), w.max(1).values.numpy(), spec)
    return torch.from_numpy(s), torch.from_numpy(z.astype(np.float32))


def _cols(imp: torch.Tensor | None, start: int, width: int) -> torch.Tensor | None:
    """The importance of columns start..start+width, or None."""
    return None if imp is None else imp[start:start + width]


def inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp*mean(diag H)*I)^-1, in float64; more damping if H is not PD."""
    k = h.shape[0]
    lam = damp * torch.mean(torch.diag(h)).item()
    for _ in range(6):
        try:
            l = torch.linalg.cholesky(h + lam * torch.eye(k, dtype=h.dtype))
            return torch.linalg.cholesky(torch.cholesky_inverse(l), upper=True)
        except torch.linalg.LinAlgError:
            lam = max(lam * 10, 1e-8)
    raise EdgecError("GPTQ: the calibration Hessian is not positive definite even with heavy damping; "
                     "use more calibration data or a larger damp")


def gptq_quantize(w: np.ndarray, h: torch.Tensor, spec: QuantSpec, *, act_order: bool = False,
                  damp: float = 0.01, block_size: int = 128, clip_search: bool = False, clip_min: float = 0.6):
    """GPTQ on w [N, K] with Hessian h [K, K]: (codes u8 [N, Kp], scales f32 [N, Kp/g], zeros u8 [N, Kp/g]).

    Group parameters are computed when the first column of a group is
    reached, from the group's error-updated weights. With act_order, columns
    are processed by decreasing diag(H), and the group parameters come from
    the original column order before permuting ("static groups"), so the
    result stays plain group-wise (the format has no g_idx). clip_search:
    each group's range is searched for the least rounding error weighted by
    diag(H) (edgec.ir.quant.search_range) instead of covering min..max.
    """
    n, k = w.shape
    g = spec.check(k)
    W = torch.tensor(np.asarray(w, np.float32))
    H = h.clone()
    imp = torch.diag(H).float().clamp_min(0) if clip_search else None
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    groups = padded_k(k, g) // g  # the last group may be partial (padded in storage)
    scales = torch.zeros(n, groups)
    zeros = torch.zeros(n, groups)
    perm = None
    if act_order:
        for j in range(groups):
            cols = W[:, j * g:(j + 1) * g]
            scales[:, j], zeros[:, j] = _params(cols, spec, _cols(imp, j * g, cols.shape[1]), clip_min)
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]

    Hinv = inverse_hessian_factor(H, damp).float()
    Q = torch.zeros_like(W)
    qmax = float(spec.qmax)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            grp = (int(perm[col]) if perm is not None else col) // g
            if perm is None and col % g == 0:
                # The group's current weights: the rest of this block (updated in W1) and later columns.
                cur = torch.cat([W1[:, i:], W[:, i2:col + g]], 1)[:, :g]
                scales[:, grp], zeros[:, grp] = _params(cur, spec, _cols(imp, col, cur.shape[1]), clip_min)
            s, z = scales[:, grp], zeros[:, grp]
            wc = W1[:, i]
            q = torch.clamp(torch.round(wc / s) + z, 0, qmax)
            Q[:, col] = q
            err = (wc - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    zeros = zeros.to(torch.uint8).numpy()
    return pad_columns(Q.to(torch.uint8).numpy(), groups * g, zeros[:, -1:]), scales.numpy(), zeros


EXPERT_MIN_TOKENS = 8


def gptq_experts(graph: Graph, node, xs: list[np.ndarray], spec: QuantSpec, which=(2, 3), **gptq_opts) -> dict:
    """GPTQ of one moe layer's experts on the calibration rows xs routed to each, for the expert inputs
    `which` (gate_up: 2, down: 3; the other stays fp32). Writes the dequantized weights back (later layers
    see this one quantized) and returns {input index: (packed, scales, zeros)}, plus "rtn": the experts
    too rarely routed to calibrate."""
    from edgec.ir.ops_moe import expert_hidden, routed_rows

    gate_up = np.asarray(graph.weight(node.inputs[2]), np.float32)
    down = np.asarray(graph.weight(node.inputs[3]), np.float32)
    parts = {2: [], 3: []}
    rtn = 0
    for e, xe in enumerate(routed_rows(graph, node, xs)):
        rare = len(xe) < EXPERT_MIN_TOKENS
        rtn += rare
        with single_thread():
            if 2 in which:
                q = _rtn_codes(gate_up[e], spec) if rare else gptq_quantize(gate_up[e], hessian([xe]), spec, **gptq_opts)
                parts[2].append(q)
            if 3 in which:
                gu = dequantize_codes(*parts[2][-1], gate_up.shape[2]) if 2 in which else gate_up[e]
                parts[3].append(_rtn_codes(down[e], spec) if rare else gptq_quantize(
                    down[e], hessian([expert_hidden(graph, node, e, xe, gu)]), spec, **gptq_opts))
    out = {"rtn": rtn}
    for i, w in ((2, gate_up), (3, down)):
        if i not in which:
            continue
        codes, scales, zeros = (np.concatenate([p[j] for p in parts[i]]) for j in range(3))
        graph.weights[node.inputs[i].name] = dequantize_codes(codes, scales, zeros, w.shape[2]).reshape(w.shape)
        out[i] = (pack(codes, spec.bits), scales, zeros)
    return out


def _rtn_codes(w: np.ndarray, spec: QuantSpec):
    """Round-to-nearest as gptq_quantize returns it: (codes u8 [N, Kp] unpacked, scales, zeros)."""
    scales, zeros = group_params(w, spec)
    return quantize_with(w, scales, zeros, spec), scales, zeros


def output_error(w: np.ndarray, w_hat: np.ndarray, h: torch.Tensor) -> float:
    """Relative layer output error ||X(W - W^)^T||^2 / ||X W^T||^2, from the Hessian alone."""
    W = torch.from_numpy(np.asarray(w, np.float32))
    D = W - torch.from_numpy(np.asarray(w_hat, np.float32))
    hf = h.float()
    return float(((D @ hf) * D).sum() / ((W @ hf) * W).sum().clamp_min(1e-30))


@register_pass("gptq", needs_calibration=True, bits=4, group_size=128, symmetric=True, act_order=False,
               damp=0.01, block_size=128, lm_head=False, skip=[], only=[], layers=None, clip_search=False,
               clip_min=0.6, scales="fp32")
def gptq(graph: Graph, ctx, bits, group_size, symmetric, act_order, damp, block_size, lm_head,
         skip, clip_search=False, clip_min=0.6, scales="fp32", only=(), layers=None) -> PassResult:
    """GPTQ weight-only quantization with calibration data (Frantar et al. 2022)."""
    spec = make_spec(bits, group_size, symmetric, scales)
    check_clip_min(clip_min)
    if not 0 < float(damp) < 1 or int(block_size) < 1:
        raise EdgecError(f"gptq: damp must be in (0, 1) and block_size >= 1; got damp={damp}, block_size={block_size}")
    targets = find_targets(graph, spec, lm_head=lm_head, skip=skip, only=only, layers=layers)
    chosen = weight_selector(graph, skip, only, layers)
    moes = {}  # moe node -> the expert input indices to quantize (both, or as skip/only choose)
    for node, i in expert_weights(graph, spec, chosen):
        moes.setdefault(node, []).append(i)
    before = graph.weights.total_bytes()
    # A weight read by several linears (rare) has no single Hessian: plain RTN for it.
    single = [t for t in targets if len(t.linears) == 1]
    by_node = {t.linears[0]: t for t in single}
    results: dict[str, tuple] = {}
    errors: list[float] = []

    def visit(node, stats):
        t = by_node[node]
        if t.name in results:
            return  # quantized together with an earlier linear that reads the same input
        x = node.inputs[0]
        group = [u for u in single if u.linears[0].inputs[0] is x and u.name not in results]
        h = gptq_hessian(stats)
        ws = [np.asarray(graph.weight(u.value), np.float32) for u in group]
        with single_thread():
            codes, scales, zeros = gptq_quantize(np.concatenate(ws), h, spec, act_order=act_order,
                                                 damp=float(damp), block_size=int(block_size),
                                                 clip_search=bool(clip_search), clip_min=float(clip_min))
        w_hat = dequantize_codes(codes, scales, zeros, ws[0].shape[1])
        errors.append(output_error(np.concatenate(ws), w_hat, h))
        row = 0
        for u, w in zip(group, ws):
            rows = slice(row, row + w.shape[0])
            row += w.shape[0]
            results[u.name] = (pack(codes[rows], spec.bits), scales[rows], zeros[rows])
            graph.weights[u.name] = w_hat[rows]  # later layers see this layer quantized
        ctx.progress(f"gptq: {len(results)}/{len(single)} {', '.join(u.name for u in group)}: "
                     f"relative output error {errors[-1]:.2e}")

    opts = dict(act_order=act_order, damp=float(damp), block_size=int(block_size), clip_search=bool(clip_search),
                clip_min=float(clip_min))
    experts: dict = {}

    def visit_moe(node, xs):
        experts[node] = gptq_experts(graph, node, xs, spec, moes[node], **opts)
        ctx.progress(f"gptq: experts of {node.output.name} ({experts[node]['rtn']} rounded to nearest: "
                     f"fewer than {EXPERT_MIN_TOKENS} calibration tokens)")

    collect_sequential(graph, ctx.windows(), by_node, visit, raw={n: visit_moe for n in moes}, hessian=True)
    for node, done in experts.items():
        for i in moes[node]:
            replace_experts(graph, node, i, *done[i], spec)
    for t in targets:
        if t.name not in results:  # weights read by several linears
            results[t.name] = quantize_rtn(np.asarray(graph.weight(t.value), np.float32), spec)
        replace_weight(graph, t, *results[t.name], spec, share_embedding=True)
    graph.prune_weights()
    extra = (" (act_order)" if act_order else "") + (", clipping searched on diag(H)" if clip_search else "") + (
        f", mean relative output error {np.mean(errors):.2e}" if errors else "")
    if experts:
        rtn = sum(d["rtn"] for d in experts.values())
        extra += f", the experts of {len(experts)} MoE layers per expert ({rtn} rarely routed experts rounded to nearest)"
    count, after = sum(len(t.linears) for t in targets), graph.weights.total_bytes()
    counts = {"linears": count, "bytes_before": before, "bytes_after": after,
              "expert_layers": len(experts), "experts_rtn": sum(d["rtn"] for d in experts.values())}
    if errors:
        counts["output_error"] = float(np.mean(errors))
    return PassResult(summary(count, spec, before, after, graph, lm_head, extra), counts)
