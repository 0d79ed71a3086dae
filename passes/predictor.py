"""A low-rank predictor of each ReLU-gated FFN's active neurons (PowerInfer, Deja Vu), fit on calibration text.

Hot/cold offloading with the gate resident must compute every neuron's gate to know which are active, so
the gate (a third of the FFN) can never leave memory. A predictor replaces it: a rank-r sketch of the gate,
scores = B (A x) with A [r, D] and B [I, r], and a per-layer cut tau; a neuron is a candidate where its
score exceeds tau, and only candidates are read (gate, up and down rows bundled) and computed. A candidate
still counts as active only where its real activation is (ReLU: gate > threshold), so a predictor never
adds error; a missed active neuron (a false negative) does, which is why tau is chosen for a `recall` on
held-out calibration tokens.

A: the top-r right singular vectors of the gate weight (the directions of x the gate is most sensitive to);
B: least squares from the sketch A x to the gate's output over the calibration tokens (the fit PowerInfer
and Deja Vu train with gradient steps, closed form here). The first 3/4 of the tokens fit B, the last 1/4
choose tau and measure recall and the share of neurons that are candidates. Stored as float16 in
graph.annotations["predictors"] for the C backend's offload lowering (targets/c/offload.py); the graph
itself is unchanged (every backend computes exactly what it computed before).
"""
from __future__ import annotations

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph

from .lib.activations import collect
from .lib.ffn import find_ffns
from .lib.linears import dense_weight
from .registry import PassResult, register_pass

MAX_ROWS = 8192  # calibration tokens kept per FFN input (float32: 8192 x D)


class _Rows:
    """collect()'s observer that keeps the first MAX_ROWS rows themselves."""

    def __init__(self):
        self.parts, self.count = [], 0

    def add(self, x) -> None:
        x = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])[: MAX_ROWS - self.count]
        if len(x):
            self.parts.append(x)
            self.count += len(x)

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate(self.parts)


def _gate_rows(ffn) -> tuple:
    """(linear node, row offset) of the glu's gate input: its own linear, or a part of a fused one."""
    g = ffn.glu.inputs[0]
    for p in ffn.producers:
        if not p.cut and p.linear.output is g:
            return p.linear, 0
        outs = p.cut[0].outputs if p.cut and p.cut[0].op == "split" else [c.output for c in p.cut]
        if g in outs:
            return p.linear, p.offsets()[outs.index(g)]
    raise EdgecError("predictor: cannot find the gate linear of an FFN")


def fit(x: np.ndarray, w: np.ndarray, rank: int, threshold: float, recall: float) -> dict:
    """The predictor of one FFN from its inputs x [T, D] and gate weight w [I, D]."""
    t = len(x)
    fit_rows = max(rank + 1, (3 * t) // 4)
    if t - fit_rows < 16:
        raise EdgecError(f"predictor: {t} calibration tokens are too few for rank {rank}; give more --calib-samples")
    _, _, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    a = vt[:rank]                                            # [r, D]
    z = x.astype(np.float64) @ a.T                           # [T, r]
    g = x.astype(np.float64) @ w.T.astype(np.float64)        # [T, I]
    lam = 1e-6 * np.trace(z[:fit_rows].T @ z[:fit_rows]) / rank
    bt = np.linalg.solve(z[:fit_rows].T @ z[:fit_rows] + lam * np.eye(rank), z[:fit_rows].T @ g[:fit_rows])
    a16, b16 = a.astype(np.float16), bt.T.astype(np.float16)  # stored and run as halves
    score = (x[fit_rows:].astype(np.float32) @ a16.astype(np.float32).T) @ b16.astype(np.float32).T
    active = g[fit_rows:] > threshold
    if not active.any():
        tau = float(np.inf)
    else:
        tau = float(np.quantile(score[active], 1.0 - recall))
    cand = score > tau
    return {"a": a16, "b": b16, "tau": tau, "rank": rank,
            "recall": float(cand[active].mean()) if active.any() else 1.0,
            "candidates": float(cand.mean()), "active": float(active.mean())}


@register_pass("predictor", needs_calibration=True, rank=0.125, recall=0.99)
def predictor(graph: Graph, ctx, rank=0.125, recall=0.99) -> PassResult:
    """Fit a low-rank active-neuron predictor for every ReLU-gated FFN (for hot/cold offloading)."""
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank <= 0:
        raise EdgecError(f"predictor: rank must be a count (64) or a share of the width (0.125), got {rank!r}")
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0.5 <= recall < 1:
        raise EdgecError(f"predictor: recall must be in [0.5, 1), got {recall!r}")
    ffns = [f for f in find_ffns(graph) if f.glu is not None]
    if not ffns:
        raise EdgecError("predictor: found no gated MLP (gate/up -> glu -> down)")
    acts = sorted({f.glu.attrs["act"] for f in ffns})
    if acts != ["relu"]:
        raise EdgecError(f"predictor: needs ReLU-gated FFNs (exact zeros to predict), this model's are {acts}; "
                         "SiLU/GELU models keep the gate resident (offload=sparse without a predictor)")
    observe = {f.input: _Rows() for f in ffns}
    collect(graph, ctx.windows(), observe, progress=ctx.progress, label="predictor")
    found, out = graph.annotations.setdefault("predictors", {}), []
    for f in ffns:
        lin, off = _gate_rows(f)
        w = dense_weight(graph, lin)[off:off + f.size]
        d = w.shape[1]
        r = int(rank) if rank >= 1 else max(1, int(round(rank * d)))
        if r >= d:
            raise EdgecError(f"predictor: rank {r} is not below the model width {d}")
        p = fit(observe[f.input].rows, w, r, float(f.glu.attrs.get("threshold") or 0.0), float(recall))
        found[f.glu.output.name] = p
        out.append(p)
    mean = {k: float(np.mean([p[k] for p in out])) for k in ("recall", "candidates", "active")}
    cost = np.mean([p["rank"] * (p["a"].shape[1] + p["b"].shape[0]) / (p["a"].shape[1] * p["b"].shape[0])
                    for p in out])
    return PassResult(f"predictors for {len(out)} FFNs (rank {out[0]['rank']}): held-out recall {mean['recall']:.1%}, "
                      f"{mean['candidates']:.1%} of neurons are candidates ({mean['active']:.1%} active); each costs "
                      f"{cost:.1%} of its gate's multiply-adds",
                      {"ffns": len(out), "rank": out[0]["rank"], **mean, "cost_of_gate": float(cost)})
