"""Low-rank factorization of linear weights: linear(x, W) -> linear(linear(x, B), A).

W[N, K] ~ A[N, r] @ B[r, K] from the truncated SVD, with the singular values
split evenly between the factors (sqrt on each side keeps both well scaled for
later quantization). The bias stays on the second linear. A linear is only
factored if it saves parameters: r * (N + K) < N * K (option min_saving).

Two passes, because the registry declares calibration per pass, not per option:
- svd: plain truncated SVD (minimizes ||W - AB||, no data).
- asvd: activation-aware. The output error ||X W^T - X (AB)^T|| is what
  matters, so the SVD is taken of W S and S^-1 is folded back into B:
  `mean_abs` / `rms` use a diagonal S of per-input-channel activation size
  to the power alpha (ASVD, Yuan et al. 2023); `whiten` uses S = chol(X^T X)
  (SVD-LLM, Wang et al. 2024), which makes the truncation optimal for the
  output error on the calibration data. Runs sequentially: each linear sees
  the outputs of the already-factored earlier ones.
The rank is fixed (`rank`) or the smallest that keeps `energy` of the sum of
squared singular values (of the scaled matrix for asvd).
"""
from __future__ import annotations

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node

from .lib.activations import Stats, collect_sequential
from .lib.linears import own_weight
from .prune import weight_linears
from .registry import PassResult, register_pass

SCALINGS = ("mean_abs", "rms", "whiten")


def choose_rank(s: np.ndarray, rank: int = 0, energy: float = 0.0) -> int:
    """`rank` itself, or the smallest r whose singular values keep `energy` of sum(s^2)."""
    if rank:
        return min(rank, len(s))
    kept = np.cumsum(np.square(s, dtype=np.float64)) / np.sum(np.square(s, dtype=np.float64))
    return min(int(np.searchsorted(kept, energy)) + 1, len(s))


def factor(w: np.ndarray, rank: int = 0, energy: float = 0.0, scale: np.ndarray | None = None):
    """(A[N, r], B[r, K]) with A @ B ~ W. `scale`: a [K] vector or a lower-triangular [K, K] S;
    the truncation is then done on W S and B carries S^-1."""
    W = np.asarray(w, dtype=np.float64)
    if scale is not None:
        W = W * scale[None, :] if scale.ndim == 1 else W @ scale
    U, S, Vh = np.linalg.svd(W.astype(np.float32), full_matrices=False)
    r = choose_rank(S, rank, energy)
    root = np.sqrt(S[:r].astype(np.float64))
    A, B = U[:, :r] * root[None, :], root[:, None] * Vh[:r]
    if scale is not None:  # B S^-1
        B = B / scale[None, :] if scale.ndim == 1 else np.linalg.solve(scale.T, B.T).T
    dt = np.asarray(w).dtype
    return A.astype(dt), B.astype(dt)


def worth_it(n: int, k: int, r: int, min_saving: float) -> bool:
    """Factor only if the saved fraction of parameters exceeds min_saving (default 0: any saving)."""
    return 1 - r * (n + k) / (n * k) > min_saving


def _check(rank, energy, targets, min_saving, name):
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise EdgecError(f"{name}: rank must be a positive integer, got {rank!r}")
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 <= energy <= 1:
        raise EdgecError(f"{name}: energy must be a fraction in (0, 1], got {energy!r}")
    if bool(rank) == bool(energy):
        raise EdgecError(f"{name}: give exactly one of rank (e.g. 64) or energy (e.g. 0.9)")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise EdgecError(f"{name}: targets must be a list of weight-name substrings, got {targets!r}")
    if isinstance(min_saving, bool) or not isinstance(min_saving, (int, float)) or min_saving >= 1:
        raise EdgecError(f"{name}: min_saving must be a fraction < 1, got {min_saving!r}")


def _targets(graph: Graph, targets: list[str], name: str) -> list[Node]:
    """The linears to factor: all but the lm_head, or those whose weight name contains a target."""
    if not targets:
        nodes = weight_linears(graph)
        if not nodes:
            raise EdgecError(f"{name}: found no linear with a plain float weight; run it before "
                             "quantization or fp16_weights in the recipe")
        return nodes
    nodes = [n for n in weight_linears(graph, lm_head=True) if any(t in n.inputs[1].name for t in targets)]
    if not nodes:
        raise EdgecError(f"{name}: no linear weight name contains any of {targets}")
    return nodes


def _rewrite(graph: Graph, node: Node, a: np.ndarray, b: np.ndarray) -> None:
    """linear(x, W, bias) -> linear(linear(x, B), A, bias)."""
    w = node.inputs[1]
    first = graph.make_node("linear", [node.inputs[0], graph.add_weight(w.name + ".lowrank_b", b)])
    graph.insert_before(node, first)
    node.inputs = [first.output, graph.add_weight(w.name + ".lowrank_a", a)] + node.inputs[2:]


def _apply(graph: Graph, nodes: list[Node], factors: dict) -> PassResult:
    before = sum(int(np.prod(n.inputs[1].shape)) for n in factors)
    for node, (a, b) in factors.items():
        _rewrite(graph, node, a, b)
    graph.prune_weights()
    counts = {"factored": len(factors), "linears": len(nodes)}
    if not factors:
        return PassResult(f"factored 0 of {len(nodes)} linears (no rank saves parameters)", counts)
    after = sum(a.size + b.size for a, b in factors.values())
    ranks = [a.shape[1] for a, _ in factors.values()]
    return PassResult(f"factored {len(factors)} of {len(nodes)} linears (rank {min(ranks)}-{max(ranks)}), "
                      f"{before / 1e6:.2f}M -> {after / 1e6:.2f}M parameters",
                      {**counts, "rank_min": min(ranks), "rank_max": max(ranks), "params_before": before,
                       "params_after": after})


@register_pass("svd", rank=0, energy=0.0, targets=[], min_saving=0.0)
def svd(graph: Graph, rank, energy, targets, min_saving) -> PassResult:
    """Factor linear weights into two thin ones by truncated SVD (rank or kept energy)."""
    _check(rank, energy, targets, min_saving, "svd")
    nodes = _targets(graph, targets, "svd")
    factors = {}
    for node in nodes:
        a, b = factor(graph.weight(node.inputs[1]), rank, energy)
        n, k = node.inputs[1].shape
        if worth_it(n, k, a.shape[1], min_saving):
            factors[node] = (a, b)
    return _apply(graph, nodes, factors)


STATS = {"whiten": "hessian", "mean_abs": "abs_sum", "rms": "sum_sq"}  # what each scaling reads


def activation_scale(stats: Stats, scaling: str, alpha: float, damp: float) -> np.ndarray:
    """S for asvd: per-channel |x| statistics ([K]) or the Cholesky factor of X^T X ([K, K])."""
    if scaling == "whiten":
        h = stats.hessian.copy()
        h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
        return np.linalg.cholesky(h)
    stat = (stats.mean_abs if scaling == "mean_abs" else stats.rms) ** alpha
    return np.maximum(stat, max(float(stat.max()) * 1e-6, 1e-12))


@register_pass("asvd", needs_calibration=True, rank=0, energy=0.0, targets=[], min_saving=0.0,
               scaling="mean_abs", alpha=0.5, damp=0.01)
def asvd(graph: Graph, ctx, rank, energy, targets, min_saving, scaling, alpha, damp) -> PassResult:
    """Activation-aware SVD: factor W S (S from calibration activations) and fold S^-1 into B."""
    _check(rank, energy, targets, min_saving, "asvd")
    if scaling not in SCALINGS:
        raise EdgecError(f"asvd: scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 2:
        raise EdgecError(f"asvd: alpha must be in (0, 2], got {alpha!r}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp < 1:
        raise EdgecError(f"asvd: damp must be in (0, 1), got {damp!r}")
    nodes = _targets(graph, targets, "asvd")
    for node in nodes:
        own_weight(graph, node)  # its weight is overwritten below; a tied embedding must not see that
    factors, scales = {}, {}

    def visit(node, stats):  # linears reading one activation (q/k/v, gate/up) share its statistics
        if stats not in scales:
            scales.clear()
            scales[stats] = activation_scale(stats, scaling, alpha, damp)
        w = np.asarray(graph.weight(node.inputs[1]))
        a, b = factor(w, rank, energy, scales[stats])
        if worth_it(*w.shape, a.shape[1], min_saving):
            factors[node] = (a, b)
            graph.weights[node.inputs[1].name] = (a @ b).astype(w.dtype)  # later layers see it

    collect_sequential(graph, ctx.windows(), nodes, visit, ctx.progress, "asvd", **{STATS[scaling]: True})
    return _apply(graph, nodes, factors)
