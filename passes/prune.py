"""Unstructured and N:M pruning of linear weights: magnitude, Wanda, SparseGPT.

All three zero weights inside dense fp32 matrices (shapes do not change; a
backend with sparse kernels can exploit the zeros, and every backend runs the
result as is). "N:M" keeps n non-zeros in every group of m consecutive weights
along the input dimension K of W[N, K] (2:4 is what sparse tensor cores run).

- magnitude: drop the smallest |W| per output row (no data). Comparing within a
  row rather than the whole matrix is what Wanda found to work better for LLMs.
- wanda (Sun et al. 2023): score |W_ij| * ||X_j||_2, X the layer's calibration
  inputs; drop the lowest scores per output row (or per N:M group).
- sparsegpt (Frantar & Alistarh 2023): optimal-brain-surgeon pruning with the
  layer Hessian H = X^T X: choose the mask block by block (w^2 / [H^-1]_jj^2)
  and update the remaining weights to compensate for the removed ones.

The calibrated methods run sequentially (passes/lib/activations.py's
collect_sequential): each linear sees the outputs of the already-pruned
earlier linears, as in the papers.

Mixture-of-experts layers are pruned expert by expert (`prune_experts`): each
expert's gate_up on the calibration rows its router sends to it, its down on
its own activations computed with the pruned gate_up (as GPTQ calibrates
experts). An expert fewer than EXPERT_MIN_TOKENS rows reach is pruned by
magnitude, and the summary counts them.
The lm_head (the projection that produces the logits) is kept dense unless
`lm_head=true`: it is the most sensitive layer and, often tied to the token
embedding, a bad trade.
"""
from __future__ import annotations

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value

from .gptq import EXPERT_MIN_TOKENS
from .lib.activations import Stats, collect_sequential
from .lib.linears import lm_head_nodes, own_weight, set_weight
from .registry import PassResult, register_pass

LINEAR_DTYPES = ("float32", "float16")


# ---------------------------------------------------------------- shared helpers
def weight_linears(graph: Graph, lm_head: bool = False) -> list[Node]:
    """Linears that read a 2-D float weight directly (not already quantized or factored away)."""
    heads = set() if lm_head else lm_head_nodes(graph)
    return [n for n in graph.nodes
            if n.op == "linear" and n not in heads and n.inputs[1].kind == "weight"
            and n.inputs[1].rank == 2 and n.inputs[1].dtype in LINEAR_DTYPES]


# ---------------------------------------------------------------- options
def check_sparsity(sparsity, n, m) -> tuple[float, int, int]:
    """Validate the options; returns (sparsity, n, m) with sparsity = 1 - n/m for N:M."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise EdgecError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (n, m)):
        raise EdgecError(f"n and m must be integers, got n={n!r} m={m!r}")
    if (n, m) == (0, 0):
        return float(sparsity), 0, 0
    if not 0 < n < m:
        raise EdgecError(f"N:M sparsity keeps n of every m weights and needs 0 < n < m, got {n}:{m}")
    return 1.0 - n / m, n, m


def check_divisible(weights: list[Value], m: int) -> None:
    """N:M groups run along each weight's input dimension (its last axis): it must hold whole groups."""
    for w in weights:
        k = w.shape[-1]
        if m and k % m:
            raise EdgecError(f"N:M sparsity with m={m} needs every pruned weight's input size to be a "
                             f"multiple of {m}; {w.name} has {k}")


# ---------------------------------------------------------------- masks
def prune_mask(score: np.ndarray, sparsity: float, n: int = 0, m: int = 0) -> np.ndarray:
    """True where a weight goes: the lowest scores per row, or the m-n lowest of every m-group."""
    rows_, k = score.shape
    if m:
        groups = score.reshape(rows_, k // m, m)
        idx = np.argsort(groups, axis=-1, kind="stable")[..., :m - n]
        mask = np.zeros_like(groups, dtype=bool)
        np.put_along_axis(mask, idx, True, axis=-1)
        return mask.reshape(rows_, k)
    drop = int(k * sparsity)
    mask = np.zeros_like(score, dtype=bool)
    if drop:
        idx = np.argpartition(score, drop - 1, axis=1)[:, :drop]
        np.put_along_axis(mask, idx, True, axis=1)
    return mask


def apply_mask(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, np.zeros((), w.dtype), w)


def _pruned_weights(nodes: list[Node], moes) -> list[Value]:
    """The linears' weights and the moe layers' expert weights (gate_up, down)."""
    return [x.inputs[1] for x in nodes] + [v for x in moes for v in x.inputs[2:4]]


def _result(graph: Graph, nodes: list[Node], n: int, m: int, moes=(), rare: int = 0) -> PassResult:
    weights = _pruned_weights(nodes, moes)
    zeros = sum(int(np.count_nonzero(graph.weight(w) == 0)) for w in weights)
    total = sum(int(np.prod(w.shape)) for w in weights)
    what = f"{n}:{m}" if m else "unstructured"
    experts = (f" and the experts of {len(moes)} MoE layers" + (f" ({rare} experts too rarely routed to calibrate: "
               "by magnitude)" if rare else "")) if moes else ""
    return PassResult(f"pruned {len(nodes)} linears{experts} to {100 * zeros / max(total, 1):.1f}% ({what})",
                      {"linears": len(nodes), "moe_layers": len(moes), "rare_experts": rare, "zeros": zeros,
                       "weights": total, "n": n, "m": m})


def moe_layers(graph: Graph) -> list[Node]:
    """moe nodes whose experts are plain float weights (not already quantized)."""
    return [n for n in graph.nodes if n.op == "moe"
            and all(v.kind == "weight" and v.dtype in LINEAR_DTYPES for v in n.inputs[2:4])]


def prune_experts(graph: Graph, node: Node, xs, prune, sparsity: float, n: int, m: int) -> int:
    """Prune moe `node`'s experts one by one with prune(w [R, K], rows [T, K]), each expert's gate_up on the rows
    of xs routed to it and its down on its activations through the pruned gate_up; xs None (no data) or an
    expert fewer than EXPERT_MIN_TOKENS rows reach: by magnitude. Returns how many experts were rare."""
    from edgec.ir.ops_moe import expert_hidden, routed_rows

    gate_up, down = node.inputs[2:4]
    gu, dn = np.array(graph.weight(gate_up)), np.array(graph.weight(down))
    rows = routed_rows(graph, node, xs) if xs is not None else [None] * gu.shape[0]
    rare = 0
    for e, xe in enumerate(rows):
        if xe is None or len(xe) < EXPERT_MIN_TOKENS:
            rare += xe is not None
            gu[e], dn[e] = magnitude_prune(gu[e], sparsity, n, m), magnitude_prune(dn[e], sparsity, n, m)
            continue
        gu[e] = prune(gu[e], xe)
        dn[e] = prune(dn[e], expert_hidden(graph, node, e, xe, gu[e]))
    graph.weights[gate_up.name], graph.weights[down.name] = gu, dn
    return rare


def _prepare(graph: Graph, sparsity, n, m, lm_head):
    sparsity, n, m = check_sparsity(sparsity, n, m)
    nodes = weight_linears(graph, lm_head)
    moes = moe_layers(graph)
    if not nodes and not moes:
        raise EdgecError("found no linear with a plain float weight to prune; run pruning before "
                         "quantization or fp16_weights in the recipe")
    check_divisible(_pruned_weights(nodes, moes), m)
    for node in nodes:
        own_weight(graph, node)
    return sparsity, n, m, nodes, moes


# ---------------------------------------------------------------- magnitude
def magnitude_prune(w: np.ndarray, sparsity: float, n: int = 0, m: int = 0) -> np.ndarray:
    """Magnitude pruning of one weight: the smallest |W_ij| per output row (or N:M group); the pruned copy."""
    return apply_mask(w, prune_mask(np.abs(w.astype(np.float32)), sparsity, n, m))


@register_pass("magnitude", sparsity=0.5, n=0, m=0, lm_head=False)
def magnitude(graph: Graph, sparsity, n, m, lm_head) -> PassResult:
    """Zero the smallest-magnitude weights of every linear (per output row, or N:M)."""
    sparsity, n, m, nodes, moes = _prepare(graph, sparsity, n, m, lm_head)
    for node in nodes:
        set_weight(graph, node, magnitude_prune(np.asarray(graph.weight(node.inputs[1])), sparsity, n, m))
    for node in moes:
        prune_experts(graph, node, None, None, sparsity, n, m)
    return _result(graph, nodes, n, m, moes)


# ---------------------------------------------------------------- wanda
def wanda_prune(w: np.ndarray, x_norm: np.ndarray, sparsity: float, n: int = 0, m: int = 0) -> np.ndarray:
    """Wanda on one weight: score |W_ij| * ||X_j||; returns the pruned copy."""
    score = np.abs(w.astype(np.float32)) * x_norm.astype(np.float32)[None, :]
    return apply_mask(w, prune_mask(score, sparsity, n, m))


@register_pass("wanda", needs_calibration=True, sparsity=0.5, n=0, m=0, lm_head=False)
def wanda(graph: Graph, ctx, sparsity, n, m, lm_head) -> PassResult:
    """Wanda pruning: |W| times input-activation norm, per output row (or N:M), sequentially."""
    sparsity, n, m, nodes, moes = _prepare(graph, sparsity, n, m, lm_head)
    rare = 0

    def visit(node, stats):
        w = np.asarray(graph.weight(node.inputs[1]))
        set_weight(graph, node, wanda_prune(w, stats.norms, sparsity, n, m))

    def visit_moe(node, xs):
        nonlocal rare
        rare += prune_experts(graph, node, xs, lambda w, x: wanda_prune(w, Stats.of([x], sum_sq=True).norms,
                                                                        sparsity, n, m), sparsity, n, m)

    collect_sequential(graph, ctx.windows(), nodes, visit, ctx.progress, "wanda", raw={x: visit_moe for x in moes},
                       sum_sq=True)
    return _result(graph, nodes, n, m, moes, rare)


# ---------------------------------------------------------------- sparsegpt
def inverse_hessian_factor(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1 = U^T U (SparseGPT's and GPTQ's form)."""
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    try:
        linv = np.linalg.inv(np.linalg.cholesky(h))  # H = L L^T, so H^-1 = L^-T L^-1
        return np.linalg.cholesky(linv.T @ linv).T
    except np.linalg.LinAlgError:
        raise EdgecError("sparsegpt: the layer Hessian is not positive definite; raise damp "
                         "(e.g. 0.1) or give more calibration data") from None


def sparsegpt_prune(w: np.ndarray, h: np.ndarray, sparsity: float, n: int = 0, m: int = 0,
                    block_size: int = 128, damp: float = 0.01) -> np.ndarray:
    """SparseGPT on one weight W[N, K] with Hessian H[K, K]; returns the pruned, compensated copy.

    numpy rather than torch: the column loop is many small ops, where torch's thread pool
    costs more than it gains (and stalls badly when other processes share the cores).
    """
    W = np.array(w, dtype=np.float32)
    W[:, np.diag(h) == 0] = 0  # inputs that are always zero carry nothing
    Hinv = inverse_hessian_factor(h, damp).astype(np.float32)
    K = W.shape[1]
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1, Hinv1 = W[:, i1:i2].copy(), Hinv[i1:i2, i1:i2]
        d = np.diag(Hinv1).copy()
        Q1, Err1 = np.zeros_like(W1), np.zeros_like(W1)
        mask1 = np.zeros(W1.shape, dtype=bool)
        if not m:  # adaptive mask: the lowest OBS saliencies w^2 / [H^-1]_jj^2 of this whole block
            drop = int(W1.size * sparsity)
            if drop:
                saliency = (W1 ** 2 / d[None, :] ** 2).ravel()
                mask1.ravel()[np.argpartition(saliency, drop - 1)[:drop]] = True
        for i in range(i2 - i1):
            if m and i % m == 0:  # N:M: choose the group's mask with the updated weights
                saliency = W1[:, i:i + m] ** 2 / d[None, i:i + m] ** 2
                drop = np.argsort(saliency, axis=1, kind="stable")[:, :m - n]
                np.put_along_axis(mask1[:, i:i + m], drop, True, axis=1)
            col = W1[:, i]
            q = np.where(mask1[:, i], np.float32(0), col)
            err = (col - q) / d[i]
            W1[:, i:] -= np.outer(err, Hinv1[i, i:])
            Q1[:, i], Err1[:, i] = q, err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.astype(np.asarray(w).dtype)


@register_pass("sparsegpt", needs_calibration=True, sparsity=0.5, n=0, m=0, damp=0.01, block_size=128,
               lm_head=False)
def sparsegpt(graph: Graph, ctx, sparsity, n, m, damp, block_size, lm_head) -> PassResult:
    """SparseGPT: OBS pruning with Hessian-based error compensation, layer by layer."""
    sparsity, n, m, nodes, moes = _prepare(graph, sparsity, n, m, lm_head)
    if not isinstance(block_size, int) or block_size <= 0 or (m and block_size % m):
        raise EdgecError(f"sparsegpt: block_size must be a positive multiple of m, got {block_size!r}")
    if not isinstance(damp, (int, float)) or not 0 < damp < 1:
        raise EdgecError(f"sparsegpt: damp must be in (0, 1), got {damp!r}")

    rare = 0

    def visit(node, stats):  # linears reading the same activation (q/k/v, gate/up) share one Hessian
        w = np.asarray(graph.weight(node.inputs[1]))
        set_weight(graph, node, sparsegpt_prune(w, stats.hessian, sparsity, n, m, block_size, damp))

    def visit_moe(node, xs):
        nonlocal rare
        rare += prune_experts(graph, node, xs, lambda w, x: sparsegpt_prune(
            w, Stats.of([x], hessian=True).hessian, sparsity, n, m, block_size, damp), sparsity, n, m)

    collect_sequential(graph, ctx.windows(), nodes, visit, ctx.progress, "sparsegpt", raw={x: visit_moe for x in moes},
                       hessian=True)
    return _result(graph, nodes, n, m, moes, rare)
