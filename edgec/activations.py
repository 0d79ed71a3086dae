"""Activation profile of FFN neurons: how often and how strongly each neuron fires on calibration text.

Hot/cold neuron offloading (PowerInfer) keeps a static "hot" set of neurons
dense in fast memory and the rest elsewhere. That pays only if a few neurons
carry most of the activity, which differs from model to model (ReLU OPT is
highly skewed; on SiLU SmolLM2 the skew is weak), so it is measured, never
assumed to follow a power law.

The neurons of an FFN are the channels of down_proj's input h. Calibration
windows run one at a time through the reference interpreter
(passes/lib/activations.collect); per neuron we keep the count of |h| > 0,
sum |h|, max |h| and a histogram of |h| over fixed log-spaced bins (EDGES),
so memory is neurons x bins per layer whatever the amount of text. From the
histograms, per layer: the |h| thresholds that zero 25/40/50/70% of the
activations (quantiles, interpolated inside a bin) and each neuron's count of
activations above each of them. Only those counts and the layer's histogram
are stored (JSON), which is enough to read "sparsity at threshold t" for any
t and to rank neurons at each stored sparsity.

Skew figures per layer:
- mass share: the share of sum |h| carried by the top 10/20/50% of neurons
  ranked by their sum |h|;
- active share: zero the 50% smallest |h| of the layer (one threshold for the
  layer), rank neurons by how often they stay active, and take the share of
  the active events that the top 20% carry. 20% means no skew at all; a
  static hot set of 20% of the neurons covers that share of the work.

Mixture-of-experts layers (the IR's `moe` op) get a second, coarser profile: how many tokens the
router sent to each expert (ExpertLayerProfile), the frequency by which experts can be kept resident.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EdgecError

FORMAT = 1
PROFILE_FILE = "activations.json"  # where an artifact holds its profile (at its root, listed in the manifest)
SPARSITIES = (0.25, 0.4, 0.5, 0.7)  # the stored per-layer thresholds zero these fractions of |h|
TOP = (0.1, 0.2, 0.5)  # neuron fractions whose mass share is reported
SKEW_SPARSITY, SKEW_TOP = 0.5, 0.2  # the skew figure: share of active events of the top 20% at 50% sparsity
EXPERT_TOP = (0.25, 0.5)  # expert fractions whose share of the routings is reported
HOT_SET_PAYS = 0.5  # a static hot set pays when its 20% of the neurons carry at least half the active events
DEFAULT_SAMPLES, DEFAULT_SEQLEN = 16, 256
WIKITEXT_VALID = "wikitext-2/valid.txt"


class LogBins:
    """Log-spaced histogram bins of |x| and the thresholds read back from them: one definition for the
    activation profile (10 bins a decade) and the sparsity passes' thresholds (passes/sparsity.py, 200).

    Bin 0 holds exact zeros, 1 is (0, edges[0]), b in 2..n is [edges[b-2], edges[b-1]), n+1 is
    [edges[-1], inf); inside a bin the values are taken as spread log-uniformly (linearly in bin 1).
    """

    def __init__(self, lo_log10: int, hi_log10: int, per_decade: int):
        self.lo_log10, self.per_decade = lo_log10, per_decade
        self.edges = 10.0 ** (np.arange(lo_log10 * per_decade, hi_log10 * per_decade + 1) / per_decade)
        self.bins = len(self.edges) + 2
        self._lo = np.concatenate([[0.0, 0.0], self.edges])
        self._hi = np.concatenate([[0.0], self.edges, [np.inf]])

    def bin(self, a: np.ndarray) -> np.ndarray:
        """The bin of each value of a (a >= 0)."""
        return np.searchsorted(self.edges, a, side="right") + (a > 0)

    def histogram(self, x: np.ndarray) -> np.ndarray:
        """Counts [bins] of |x| over all of x's elements."""
        a = np.abs(np.asarray(x, np.float64)).ravel()
        return np.bincount(self.bin(a), minlength=self.bins)

    def below(self, hist: np.ndarray, t: float) -> np.ndarray:
        """How many values of histograms hist [..., bins] are <= t, interpolated inside t's bin."""
        hist = np.asarray(hist, np.float64)
        if t < 0:
            return np.zeros(hist.shape[:-1])
        if t == 0:
            return hist[..., 0]
        b = int(self.bin(np.float64(t)))
        full = hist[..., :b].sum(-1)
        if b == 1:
            frac = t / self.edges[0]
        elif b == self.bins - 1:
            frac = 0.0  # the open top bin: its values are taken as above t
        else:
            frac = math.log(t / self._lo[b]) / math.log(self._hi[b] / self._lo[b])
        return full + frac * hist[..., b]

    def quantile(self, hist: np.ndarray, s: float) -> float:
        """The threshold t with a fraction s of the values <= t (inverse of below(); 0 if the zeros alone reach s)."""
        hist = np.asarray(hist, np.float64)
        target = s * hist.sum()
        if target <= hist[0]:
            return 0.0
        cum = np.cumsum(hist)
        b = min(int(np.searchsorted(cum, target, side="left")), self.bins - 1)
        frac = (target - cum[b - 1]) / hist[b] if hist[b] else 1.0
        if b == 1:
            return float(frac * self.edges[0])
        if b == self.bins - 1:
            return float(self.edges[-1])
        return float(self._lo[b] * (self._hi[b] / self._lo[b]) ** frac)


LOG_BINS = LogBins(-7, 3, 10)  # the profile's |h| bins: 10 per decade, 1e-7 .. 1e3
EDGES, BINS = LOG_BINS.edges, LOG_BINS.bins
below, quantile = LOG_BINS.below, LOG_BINS.quantile


class _Accumulator:
    """Per-neuron streaming statistics of one FFN's h (added window by window by collect())."""

    def __init__(self, size: int):
        self.size, self.tokens = size, 0
        self.fired = np.zeros(size, np.int64)
        self.abs_sum = np.zeros(size, np.float64)
        self.abs_max = np.zeros(size, np.float64)
        self.hist = np.zeros((size, BINS), np.int64)  # per neuron: what every threshold is read from

    def add(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, np.float64).reshape(-1, self.size))
        self.tokens += a.shape[0]
        self.fired += (a > 0).sum(0)
        self.abs_sum += a.sum(0)
        np.maximum(self.abs_max, a.max(0), out=self.abs_max)
        flat = LOG_BINS.bin(a) + np.arange(self.size) * BINS
        self.hist += np.bincount(flat.ravel(), minlength=self.size * BINS).reshape(self.size, BINS)


@dataclass(eq=False)
class LayerProfile:
    """One FFN: its neurons' statistics over `tokens` calibration tokens."""

    name: str  # the activation h (down_proj's input) in the graph
    tokens: int
    fired: np.ndarray  # [neurons] tokens with |h| > 0
    mean_abs: np.ndarray  # [neurons] mean |h|
    abs_max: np.ndarray  # [neurons] max |h|
    hist: np.ndarray  # [BINS] the layer's |h| histogram over EDGES
    sparsities: tuple[float, ...]
    thresholds: list[float]  # the |h| thresholds that zero `sparsities` of the layer's activations
    active: np.ndarray  # [len(sparsities), neurons] tokens with |h| above each threshold

    @property
    def neurons(self) -> int:
        return len(self.fired)

    @property
    def firing_rate(self) -> np.ndarray:
        """Fraction of tokens with |h| > 0, per neuron (1 everywhere on SiLU/GELU models)."""
        return self.fired / max(self.tokens, 1)

    @property
    def zero_fraction(self) -> float:
        """The natural sparsity: the share of exact zeros (ReLU)."""
        return float(1 - self.fired.sum() / max(self.tokens * self.neurons, 1))

    def mass_curve(self) -> np.ndarray:
        """Cumulative share of sum |h| of the top 1, 2, ... neurons (ranked by their sum |h|)."""
        m = np.sort(self.mean_abs)[::-1]
        total = m.sum()
        return np.cumsum(m) / total if total > 0 else np.zeros(len(m))

    def mass_share(self, top: float) -> float:
        """The share of sum |h| carried by the top `top` fraction of neurons."""
        return float(self.mass_curve()[max(1, round(top * self.neurons)) - 1])

    def sparsity(self, t: float) -> float:
        """The fraction of the layer's activations with |h| <= t."""
        return float(below(self.hist, t) / max(self.hist.sum(), 1))

    def active_share(self, sparsity: float = SKEW_SPARSITY, top: float = SKEW_TOP) -> float:
        """At the threshold that zeros `sparsity` of the activations, the share of the active events
        that the `top` fraction of neurons (the most often active) carries; `top` means no skew."""
        if sparsity not in self.sparsities:
            raise EdgecError(f"the profile holds sparsities {list(self.sparsities)}, not {sparsity}")
        a = np.sort(self.active[self.sparsities.index(sparsity)])[::-1]
        total = a.sum()
        return float(a[:max(1, round(top * self.neurons))].sum() / total) if total > 0 else 0.0

    def hot_order(self) -> np.ndarray:
        """Neuron order, most active first: by how often |h| exceeds the layer's 50%-sparsity threshold, ties
        (and ReLU models' always-zero neurons) by mean |h|; stable, so equal neurons keep their order."""
        active = self.active[self.sparsities.index(SKEW_SPARSITY)]
        return np.lexsort((-self.mean_abs, -active)).astype(np.int64)

    def summary(self) -> dict:
        return {"name": self.name, "neurons": self.neurons, "zero_fraction": self.zero_fraction,
                "mass_share": {f"top{round(100 * f)}": self.mass_share(f) for f in TOP},
                "thresholds": {f"{round(100 * s)}%": t for s, t in zip(self.sparsities, self.thresholds)},
                "active_share_top20_at_50": self.active_share()}


@dataclass(eq=False)
class ExpertLayerProfile:
    """One MoE layer: how many of `tokens` calibration tokens the router sent to each expert."""

    name: str  # the moe op's input in the graph
    tokens: int
    top_k: int
    routed: np.ndarray  # [experts] tokens routed to each expert (sums to tokens * top_k)

    @property
    def experts(self) -> int:
        return len(self.routed)

    def frequency(self) -> np.ndarray:
        """Per expert: the share of tokens that use it (top_k/E on average)."""
        return self.routed / max(self.tokens, 1)

    def resident_share(self, fraction: float) -> float:
        """The share of routings served by the most often routed `fraction` of the experts."""
        r = np.sort(self.routed)[::-1]
        total = r.sum()
        return float(r[:max(1, round(fraction * self.experts))].sum() / total) if total > 0 else 0.0

    def summary(self) -> dict:
        return {"name": self.name, "experts": self.experts, "top_k": self.top_k, "tokens": self.tokens,
                "frequency": [round(float(f), 6) for f in self.frequency()],
                "resident_share": {f"top{round(100 * f)}": self.resident_share(f) for f in EXPERT_TOP}}


class _RoutingCounter:
    """Counts the experts a moe node's router picks for each row it sees (collect's Stats protocol)."""

    def __init__(self, graph, node):
        self.graph, self.node = graph, node
        self.tokens, self.routed = 0, np.zeros(node.inputs[1].shape[0], np.int64)

    def add(self, x: np.ndarray) -> None:
        from .ir.ops_moe import node_route

        rows = np.asarray(x).reshape(-1, x.shape[-1])
        _, idx = node_route(self.graph, self.node, rows)
        self.tokens += rows.shape[0]
        self.routed += np.bincount(idx.ravel(), minlength=len(self.routed))


@dataclass(eq=False)
class ActivationProfile:
    """Per FFN layer (graph order), per neuron: firing frequency and |h| statistics; see the module docstring."""

    layers: list[LayerProfile]
    model: dict = field(default_factory=dict)  # sha256 (or None), architecture, layers, neurons
    calibration: dict = field(default_factory=dict)  # source, windows, seqlen, tokens
    experts: list[ExpertLayerProfile] = field(default_factory=list)  # per MoE layer (graph order)

    def summary(self) -> dict:
        pays, reason = static_hot_set_verdict(self)
        return {"model": self.model, "calibration": self.calibration,
                "layers": [layer.summary() for layer in self.layers],
                "experts": [e.summary() for e in self.experts],
                "verdict": {"static_hot_set_pays": pays, "reason": reason}}

    def to_json(self) -> str:
        def g(a):  # 6 significant digits: the profile of a 30-layer model stays a few MB
            return [float(f"{x:.6g}") for x in np.asarray(a, np.float64)]

        return json.dumps({
            "format": FORMAT, "model": self.model, "calibration": self.calibration,
            "edges": {"start_log10": -7, "per_decade": 10, "count": len(EDGES)},
            "sparsities": list(self.layers[0].sparsities) if self.layers else list(SPARSITIES),
            "layers": [{"name": l.name, "tokens": l.tokens, "fired": l.fired.tolist(), "mean_abs": g(l.mean_abs),
                        "abs_max": g(l.abs_max), "hist": l.hist.tolist(), "thresholds": l.thresholds,
                        "active": np.rint(l.active).astype(np.int64).tolist()} for l in self.layers],
            "experts": [{"name": e.name, "tokens": e.tokens, "top_k": e.top_k, "routed": e.routed.tolist()}
                        for e in self.experts]})

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "activation profile") -> "ActivationProfile":
        try:
            d = json.loads(text)
            if d.get("format") != FORMAT:
                raise EdgecError(f"{where}: format {d.get('format')!r}, this edgec reads format {FORMAT}")
            if d["edges"] != {"start_log10": -7, "per_decade": 10, "count": len(EDGES)}:
                raise EdgecError(f"{where}: histogram bins {d['edges']} differ from this edgec's")
            sp = tuple(float(s) for s in d["sparsities"])
            layers = []
            for l in d["layers"]:
                p = LayerProfile(str(l["name"]), int(l["tokens"]), np.asarray(l["fired"], np.int64),
                                 np.asarray(l["mean_abs"], np.float64), np.asarray(l["abs_max"], np.float64),
                                 np.asarray(l["hist"], np.int64), sp, [float(t) for t in l["thresholds"]],
                                 np.asarray(l["active"], np.float64))
                k = p.neurons
                if p.mean_abs.shape != (k,) or p.abs_max.shape != (k,) or p.hist.shape != (BINS,) \
                        or p.active.shape != (len(sp), k) or len(p.thresholds) != len(sp):
                    raise EdgecError(f"{where}: layer {p.name} has arrays of inconsistent sizes")
                layers.append(p)
            experts = [ExpertLayerProfile(str(e["name"]), int(e["tokens"]), int(e["top_k"]),
                                          np.asarray(e["routed"], np.int64)) for e in d.get("experts", [])]
            return cls(layers, dict(d["model"]), dict(d["calibration"]), experts)
        except EdgecError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EdgecError(f"{where} is malformed: {type(e).__name__}: {e}") from None


def model_identity(graph, sha256: str | None = None) -> dict:
    """What a profile records of its model, so that it is never applied to another one."""
    from edgec.passes.lib.ffn import find_ffns

    sizes = [f.size for f in find_ffns(graph)]
    return {"sha256": sha256, "architecture": graph.facts.architecture, "layers": len(sizes), "neurons": sizes}


def profile_activations(graph, windows, sparsities=SPARSITIES, progress: Callable[[str], None] | None = None,
                        sha256: str | None = None, calibration: dict | None = None) -> ActivationProfile:
    """Run `windows` (token id arrays) one at a time through `graph` (imported and raised, before the KV
    cache) and profile every FFN's neurons. `sparsities` pick the stored per-layer thresholds (quantiles
    of |h|); 0.5 must be one of them (the skew figure). `sha256`: the source model's, for check_matches."""
    from edgec.passes.lib.activations import collect
    from edgec.passes.lib.ffn import find_ffns

    sparsities = tuple(float(s) for s in sparsities)
    if SKEW_SPARSITY not in sparsities or not all(0 < s < 1 for s in sparsities):
        raise EdgecError(f"sparsities must lie in (0, 1) and include {SKEW_SPARSITY}, got {list(sparsities)}")
    if not len(windows):
        raise EdgecError("no calibration windows to profile activations on")
    ffns = find_ffns(graph)
    moes = [n for n in graph.nodes if n.op == "moe"]
    if not ffns and not moes:
        raise EdgecError(f"found no FFN in this {graph.facts.architecture or 'model'} graph: nothing to profile")
    acc = {f.hidden: _Accumulator(f.size) for f in ffns}
    routing = {n.inputs[0]: _RoutingCounter(graph, n) for n in moes}
    collect(graph, windows, {**acc, **routing}, progress, label="profiling activations")
    layers = []
    for f in ffns:
        a = acc[f.hidden]
        hist = a.hist.sum(0)
        thresholds = [quantile(hist, s) for s in sparsities]
        active = np.stack([a.tokens - below(a.hist, t) for t in thresholds])
        layers.append(LayerProfile(f.hidden.name, a.tokens, a.fired, a.abs_sum / max(a.tokens, 1), a.abs_max,
                                   hist, sparsities, thresholds, active))
    calib = {"windows": len(windows), "tokens": int(sum(len(w) for w in windows)), **(calibration or {})}
    experts = [ExpertLayerProfile(x.name, c.tokens, c.node.attrs["top_k"], c.routed) for x, c in routing.items()]
    return ActivationProfile(layers, model_identity(graph, sha256), calib, experts)


def check_matches(profile: ActivationProfile, graph, sha256: str | None = None) -> None:
    """Refuse (EdgecError naming the difference) a profile measured on another model than `graph`."""
    mine = model_identity(graph, sha256)
    theirs = profile.model
    if theirs.get("sha256") and sha256 and theirs["sha256"] != sha256:
        raise EdgecError(f"the activation profile is of another model (SHA-256 {theirs['sha256'][:16]}..., "
                         f"this one is {sha256[:16]}...)")
    if len(profile.layers) != mine["layers"]:
        raise EdgecError(f"the activation profile has {len(profile.layers)} FFN layers, this model "
                         f"{mine['layers']}: it is of another model")
    for i, (p, k) in enumerate(zip(profile.layers, mine["neurons"])):
        if p.neurons != k:
            raise EdgecError(f"FFN layer {i} has {p.neurons} neurons in the activation profile and {k} in "
                             "this model: it is of another model")


def static_hot_set_verdict(profile: ActivationProfile) -> tuple[bool, str]:
    """(pays, why): does a static hot set of 20% of the neurons carry most of the active work?"""
    if not profile.layers:
        return False, "the profile has no FFN layers"
    shares = np.array([layer.active_share() for layer in profile.layers])
    mean, lo, hi = float(shares.mean()), int(shares.argmin()), int(shares.argmax())
    pays = mean >= HOT_SET_PAYS
    why = (f"at {SKEW_SPARSITY:.0%} activation sparsity the top {SKEW_TOP:.0%} of neurons carry {mean:.1%} of the "
           f"active activations on average over {len(shares)} layers (layer {lo}: {shares[lo]:.1%}, layer {hi}: "
           f"{shares[hi]:.1%}; {SKEW_TOP:.0%} would be no skew)")
    if pays:
        return True, why + f", at least {HOT_SET_PAYS:.0%}: a hot set of {SKEW_TOP:.0%} of the neurons serves most " \
                           "of the active work"
    return False, why + (f", under {HOT_SET_PAYS:.0%}: which neurons are active changes from token to token, so "
                         "a static hot set would miss most of them (predict them per token instead)")


def default_calib_path() -> Path:
    """WikiText-2's validation split under $EDGEC_DATA_DIR, else ../shared/data beside the repo or the cwd."""
    from .eval import shared_data_file

    return shared_data_file(WIKITEXT_VALID, "calibration text", "--calib FILE")


def profile_model(model: str | None, text: str, samples: int = DEFAULT_SAMPLES, seqlen: int = DEFAULT_SEQLEN,
                  progress: Callable[[str], None] | None = None, calib_name: str | None = None) -> ActivationProfile:
    """Import MODEL (folder, .gguf, None: the default), raise it and profile it on `samples` windows of `text`."""
    from .calibration import token_windows
    from .frontend import import_model, model_hash
    from .passes import CANONICALIZE, RAISE, PassManager

    imported = import_model(model, progress)
    ctx = imported.graph.facts.context_length
    if ctx and seqlen > ctx:
        raise EdgecError(f"--seqlen {seqlen} is longer than the model's context ({ctx} tokens)")
    pm = PassManager()
    pm.run(imported.graph, CANONICALIZE)
    pm.run(imported.graph, RAISE)
    windows = token_windows(text, imported.tokenizer, samples, seqlen)
    return profile_activations(imported.graph, windows, progress=progress, sha256=model_hash(imported.source),
                               calibration={"source": calib_name, "seqlen": seqlen})


def format_table(profile: ActivationProfile) -> str:
    """The per-layer skew table and the verdict, as `edgec activations` prints them."""
    c = profile.calibration
    lines = [f"model        {profile.model.get('architecture')}, {len(profile.layers)} FFN layers, "
             f"sha256 {(profile.model.get('sha256') or 'unknown')[:16]}",
             f"calibration  {c.get('tokens')} tokens ({c.get('windows')} windows of {c.get('seqlen')}) from "
             f"{c.get('source')}",
             "mass: share of sum|h| of the top 10/20/50% of neurons; t@s: the |h| threshold zeroing s of the "
             "activations; skew: share of active events of the top 20% at 50% sparsity",
             f"{'layer':>5} {'neurons':>7} {'zeros':>6} {'mass10':>6} {'mass20':>6} {'mass50':>6}  "
             + " ".join(f"{'t@' + str(round(100 * s)) + '%':>8}" for s in (profile.layers[0].sparsities
                                                                       if profile.layers else SPARSITIES))
             + f" {'skew':>6}"]
    if not profile.layers:
        lines[2:] = []  # a pure MoE model: no dense FFN table
    for i, l in enumerate(profile.layers):
        lines.append(f"{i:>5} {l.neurons:>7} {l.zero_fraction:>6.1%} "
                     + " ".join(f"{l.mass_share(f):>6.1%}" for f in TOP) + "  "
                     + " ".join(f"{t:>8.3g}" for t in l.thresholds) + f" {l.active_share():>6.1%}")
    pays, why = static_hot_set_verdict(profile)
    lines.append(f"static hot set: {'pays' if pays else 'does not pay'}: {why}")
    if profile.experts:
        lines += ["experts: per MoE layer, the share of routings served by the most often routed 25/50% of the "
                  "experts, and the most and least often routed expert's share of tokens",
                  f"{'layer':>5} {'experts':>7} {'top_k':>5} {'res25':>6} {'res50':>6} {'max':>6} {'min':>6}"]
        for i, e in enumerate(profile.experts):
            f = e.frequency()
            lines.append(f"{i:>5} {e.experts:>7} {e.top_k:>5} "
                         + " ".join(f"{e.resident_share(t):>6.1%}" for t in EXPERT_TOP)
                         + f" {f.max():>6.1%} {f.min():>6.1%}")
    return "\n".join(lines)


def plot(profile: ActivationProfile, out: Path, title: str = "") -> None:
    """A PNG: per layer the cumulative mass share of the top neurons, and sparsity against threshold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise EdgecError("--plot needs matplotlib: pip install matplotlib") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    cmap, n = plt.get_cmap("viridis"), len(profile.layers)
    colors = cmap(np.linspace(0, 1, max(n, 1)))
    ts = np.concatenate([[EDGES[0] / 10], EDGES])
    for l, col in zip(profile.layers, colors):
        curve = l.mass_curve()
        left.plot(np.arange(1, len(curve) + 1) / len(curve), curve, color=col, lw=1)
        right.plot(ts, [l.sparsity(t) for t in ts], color=col, lw=1)
    left.plot([0, 1], [0, 1], "k--", lw=0.8, label="no skew")
    left.set(xlabel="fraction of neurons (ranked by sum |h|)", ylabel="share of sum |h|",
             title="activation mass carried by the top neurons", xlim=(0, 1), ylim=(0, 1))
    right.axhline(SKEW_SPARSITY, color="k", ls=":", lw=0.8)
    right.set(xscale="log", xlabel="threshold t on |h|", ylabel="sparsity (share of |h| <= t)",
              title="sparsity at each threshold", ylim=(0, 1))
    left.legend(fontsize=8, loc="lower right")
    bar = fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, max(n - 1, 1)), cmap), ax=right)
    bar.set_label("FFN layer")
    bar.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    pays, _ = static_hot_set_verdict(profile)
    fig.suptitle(f"{title}  static hot set {'pays' if pays else 'does not pay'}".strip())
    fig.tight_layout()
    try:
        fig.savefig(out, format="png", dpi=100)
    except OSError as e:
        raise EdgecError(f"cannot write the plot {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
