"""Activation sparsity without retraining: CATS (Lee et al. 2024) and TEAL (Liu et al. 2024).

Most activations feeding an LLM's linears are small. Zeroing the smallest
changes the output little, and a kernel that skips the weight columns of the
zeros reads less of the weights, which is what decode waits on. ReLU models
have exact zeros already: their threshold 0 changes nothing (outputs stay
identical to dense). SiLU/GELU models need a threshold per layer, chosen on
calibration text:

- cats: per FFN, a threshold t on |act(gate)| (the `threshold` of its glu:
  act(gate) is zeroed where |act(gate)| <= t, so the product with up and the
  down projection's columns are skipped together); an MLP without a glu
  (fc1 -> relu/gelu -> fc2) gets `sparsify` on fc2's input instead.
- teal: per linear of every layer (attention q/k/v/o, FFN gate/up/down; not
  the logits projection), `sparsify(x, t)` on its input. Linears reading the
  same value (q/k/v, gate/up) share one node: their thresholds are equal at
  one uniform sparsity (the same histogram), and fuse_linears still merges
  them.

Each threshold is the quantile at `sparsity` of a histogram of |x| over the
calibration windows, taken layer by layer (edgec.calibration.run_calibration):
a site's histogram is counted on the windows run through the sites before
it, already thresholded, so the fraction zeroed on calibration text is the
target at every site. Thresholds from the dense model drift downstream
(TEAL at 70% zeroed 74% of a tiny Llama's inputs). The bins are log-spaced
like edgec.activations' but 20x finer (200 per decade): SiLU piles |act| up
just under 0.28 (its minimum is -0.278), where 10 bins per decade put 50%
sparsity 4 points off. A threshold of 0 (the zeros alone reach the target,
as after a ReLU) inserts nothing.

budget > 0 instead searches the largest uniform sparsity in [0, sparsity]
whose perplexity on held-out calibration windows (the last quarter, at least
one; the thresholds come from the others) is at most (1 + budget) times the
dense model's: `sparsity` itself, then STEPS bisection steps (a resolution of
sparsity / 2**STEPS), each a calibration at that sparsity and a run of the
held-out windows through the reference ops (exact; values that depend on
weights alone, such as dequantized weights, are computed once for all runs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgec.activations import LogBins
from edgec.calibration import run_calibration
from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value
from edgec.ir.ops import get_op

from .lib.ffn import find_ffns
from .lib.linears import LINEAR_OPS, lm_head_nodes
from .registry import PassResult, register_pass

STEPS = 6  # bisection steps of the budget search: 8 perplexity runs in all (dense, the top, 6 halvings)
LOG_BINS = LogBins(-8, 4, 200)  # |x| bins, 200 per decade from 1e-8 to 1e4: thresholds within ~1.2% of exact
BINS = LOG_BINS.bins


def below(hist: np.ndarray, t: float) -> float:
    """The fraction of the counted values <= t (inverse of LOG_BINS.quantile)."""
    return float(LOG_BINS.below(hist, t) / max(int(hist.sum()), 1))


@dataclass(eq=False)
class Site:
    """One thresholded activation: the value whose |.| is counted, and the node whose threshold is set."""

    value: Value
    act: str | None = None  # cats on a glu: the histogram counts |act(gate)|
    glu: Node | None = None  # cats: the glu whose threshold is set
    readers: list[Node] = field(default_factory=list)  # otherwise: the linears that read sparsify(value)
    node: Node | None = None  # the inserted sparsify
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    threshold: float = 0.0

    @property
    def thresholded(self) -> Node:
        return self.glu if self.glu is not None else self.node

    def count(self, windows: list[np.ndarray]) -> None:
        """The histogram of |value| (|act(gate)|) over every window's value."""
        self.hist = np.zeros(BINS, np.int64)
        for x in windows:
            self.hist += LOG_BINS.histogram(x if self.act is None else get_op("glu").ref(x, np.ones_like(x), act=self.act))

    def set(self, t: float) -> None:
        self.threshold = float(t)
        self.thresholded.attrs["threshold"] = self.threshold

    @property
    def sparsity(self) -> float:
        """The fraction of the counted activations at or under the threshold (zeroed)."""
        return below(self.hist, self.threshold)


def _check(name: str, sparsity, budget) -> tuple[float, float]:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise EdgecError(f"{name}: sparsity must be a number in [0, 1), got {sparsity!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        raise EdgecError(f"{name}: budget must be a number >= 0 (0.05: +5% perplexity), got {budget!r}")
    return float(sparsity), float(budget)


def cats_sites(graph: Graph) -> list[Site]:
    ffns = find_ffns(graph)
    if not ffns:
        raise EdgecError("cats: found no MLP (gate/up -> glu -> down, or linear -> activation -> linear)")
    return [Site(f.glu.inputs[0], act=f.glu.attrs["act"], glu=f.glu) if f.glu is not None
            else Site(f.hidden, readers=[f.down]) for f in ffns]


def teal_sites(graph: Graph) -> list[Site]:
    heads = lm_head_nodes(graph)
    groups: dict[Value, list[Node]] = {}
    for n in graph.nodes:
        if n.op in LINEAR_OPS and n not in heads and n.inputs[0].kind == "node":
            groups.setdefault(n.inputs[0], []).append(n)
    if not groups:
        raise EdgecError("teal: found no linear inside the layers (only the logits projection)")
    return [Site(x, readers=rs) for x, rs in groups.items()]


def _insert(graph: Graph, s: Site) -> None:
    """sparsify(value) before the first reader, read by the readers in place of value."""
    if s.glu is not None:
        return
    s.node = graph.make_node("sparsify", [s.value], {"threshold": 0.0}, name=f"{s.value.name}_sparse")
    s.node.meta = s.readers[0].meta.copy()
    graph.insert_before(s.readers[0], s.node)
    for r in s.readers:
        r.inputs[0] = s.node.output


def _remove(graph: Graph, s: Site) -> None:
    """Undo _insert (a threshold of 0 zeroes nothing the value did not already hold as zero)."""
    for r in s.readers:
        r.inputs[0] = s.value
    graph.remove(s.node)
    s.node = None


class HeldOut:
    """Mean NLL (nats per predicted token) of token windows through the reference ops.

    Values that depend on weights alone (dequantized or cast weights) are computed on the
    first run and kept, so each later run costs only the activations.
    """

    def __init__(self, graph: Graph, windows):
        self.graph, self.windows = graph, [np.asarray(w, np.int64) for w in windows]
        self.fixed: dict[Value, np.ndarray] = {}
        self.logits = next((v for v in graph.outputs if v.name == "logits"), graph.outputs[0])

    def _value(self, env, v: Value):
        if v.kind == "weight":
            return np.asarray(self.graph.weights[v.name])
        return self.fixed[v] if v in self.fixed else env[v]

    def _run(self, ids: np.ndarray) -> np.ndarray:
        g = self.graph
        feeds = {"input_ids": ids[None], "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
        env = {}
        for v in g.inputs:
            if v.name not in feeds:
                raise EdgecError(f"perplexity runs before the KV cache is added; unexpected input {v.name}")
            env[v] = feeds[v.name]
        const = set(self.fixed)
        last = {v: i for i, n in enumerate(g.nodes) for v in n.inputs}
        for i, n in enumerate(g.nodes):
            if all(o in self.fixed for o in n.outputs):
                continue
            args = [self._value(env, v) for v in n.inputs]
            result = get_op(n.op).ref(*args, **n.attrs)
            keep = n.op not in ("sparsify", "glu") and all(v.kind == "weight" or v in const for v in n.inputs)
            for out, r in zip(n.outputs, result if isinstance(result, tuple) else (result,)):
                if keep:
                    self.fixed[out] = np.asarray(r)
                    const.add(out)
                else:
                    env[out] = np.asarray(r)
            for v in n.inputs:
                if last[v] == i and v in env and v is not self.logits:
                    del env[v]
        return np.asarray(env[self.logits])[0]

    def nll(self) -> float:
        total, count = 0.0, 0
        for ids in self.windows:
            z = self._run(ids)[:-1].astype(np.float64)
            z -= z.max(-1, keepdims=True)
            lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            total -= lp[np.arange(len(ids) - 1), ids[1:]].sum()
            count += len(ids) - 1
        return total / max(count, 1)


def _calibrate(graph: Graph, sites: list[Site], windows, s: float, say, label: str) -> None:
    """Every site's threshold at uniform sparsity s, layer by layer: each histogram is taken on the windows
    run through the sites before it, already thresholded, so the fraction zeroed is s there too."""
    if s == 0:
        for site in sites:
            site.set(0.0)
        return
    at = {site.thresholded: site for site in sites}

    def visit(node, inputs):
        site = at[node]
        site.count([ins[0] for ins in inputs])
        site.set(LOG_BINS.quantile(site.hist, s))

    run_calibration(graph, windows, lambda n: n in at, visit, say, f"{label} at {s:.1%}")


def _sparsify(graph: Graph, ctx, name: str, sites: list[Site], sparsity: float, budget: float) -> PassResult:
    """The sites' thresholds at `sparsity` (or the budget's search), the graph rewritten."""
    say = ctx.progress if ctx is not None else (lambda msg: None)
    counts: dict[str, int | float] = {"sites": len(sites)}
    if sparsity == 0:  # every threshold is 0: nothing to measure or insert
        return PassResult(f"sparsity 0: {len(sites)} sites left dense",
                          {**counts, "target": 0.0, "sparsity": 0.0, "zero_thresholds": len(sites)})
    if ctx is None:
        raise EdgecError(f"{name} needs calibration data (pass --calib FILE)")
    windows = list(ctx.windows())
    held = []
    if budget > 0:
        if len(windows) < 2:
            raise EdgecError(f"{name}: a budget needs at least 2 calibration windows (thresholds and held-out "
                             f"perplexity), got {len(windows)}; raise --calib-samples")
        cut = len(windows) - max(1, len(windows) // 4)
        windows, held = windows[:cut], windows[cut:]
    for s in sites:
        _insert(graph, s)
    target = sparsity
    if budget > 0:
        ppl = HeldOut(graph, held)
        _calibrate(graph, sites, windows, 0.0, say, name)
        dense = ppl.nll()
        limit = dense + math.log1p(budget)
        seen: dict[float, float] = {0.0: dense}

        def fits(s: float) -> bool:
            _calibrate(graph, sites, windows, s, say, name)
            seen[s] = ppl.nll()
            say(f"{name}: sparsity {s:.1%}: perplexity {math.exp(seen[s]):.4f} (dense {math.exp(dense):.4f}, "
                f"budget {math.exp(limit):.4f})")
            return seen[s] <= limit

        lo, hi = 0.0, sparsity
        if fits(hi):
            lo = hi
        else:
            for _ in range(STEPS):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        target = lo
        counts.update({"perplexity_dense": math.exp(dense), "perplexity": math.exp(seen[target]),
                       "evaluations": len(seen), "held_out": len(held)})
        if list(seen)[-1] != target:  # the last run left another sparsity's thresholds
            _calibrate(graph, sites, windows, target, say, name)
    else:
        _calibrate(graph, sites, windows, target, say, name)
    zeros = [s for s in sites if s.threshold == 0.0]
    for s in zeros:
        if s.node is not None:
            _remove(graph, s)
    sizes = np.array([s.hist.sum() for s in sites], np.float64)
    reached = float(np.dot([s.sparsity for s in sites], sizes) / max(sizes.sum(), 1))
    counts.update({"target": target, "sparsity": reached, "zero_thresholds": len(zeros)})
    ts = [s.threshold for s in sites]
    extra = (f"; +{budget:.1%} perplexity budget: {counts['perplexity']:.3f} vs dense "
             f"{counts['perplexity_dense']:.3f} on {len(held)} held-out windows" if budget > 0 else "")
    return PassResult(f"{len(sites)} thresholds at {target:.1%} target sparsity ({reached:.1%} zeroed on "
                      f"{len(windows)} windows; t {min(ts):.3g}..{max(ts):.3g}, {len(zeros)} zero){extra}", counts)


@register_pass("cats", needs_calibration=True, sparsity=0.5, budget=0.0)
def cats(graph: Graph, ctx=None, sparsity=0.5, budget=0.0) -> PassResult:
    """CATS: zero the smallest activations of each FFN's act(gate), one calibrated threshold per layer."""
    sparsity, budget = _check("cats", sparsity, budget)
    return _sparsify(graph, ctx, "cats", cats_sites(graph), sparsity, budget)


@register_pass("teal", needs_calibration=True, sparsity=0.5, budget=0.0)
def teal(graph: Graph, ctx=None, sparsity=0.5, budget=0.0) -> PassResult:
    """TEAL: zero the smallest inputs of every linear in the layers, one calibrated threshold per input."""
    sparsity, budget = _check("teal", sparsity, budget)
    return _sparsify(graph, ctx, "teal", teal_sites(graph), sparsity, budget)

