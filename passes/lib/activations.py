"""Bounded statistics of activations over calibration windows, for the data-aware passes.

A pass asks for exactly the statistics it needs of each observed value (a
linear's input, an FFN's intermediate activation), per channel of the last
axis: sum of squares (norms, RMS), sum of |x| (mean |x|), max |x|, the
Hessian X^T X (float64), and firing counts (x > t, or |x| > t). Each window
adds to them and is dropped; nothing else is kept.

- collect: the windows run one at a time through the reference ops, so
  memory is one window's activations plus the statistics, however many
  windows there are (SmoothQuant, the wanda_* structured scores, neuron
  profiling).
- collect_sequential: for methods that compress layer by layer (GPTQ,
  SparseGPT, Wanda, AWQ, ASVD): every layer's statistics are taken on the
  outputs of the already-compressed layers before it, exactly as in their
  papers. That needs all windows in step (edgec.calibration.run_calibration
  keeps each window's live activations; it checks the memory first); the
  pass itself still sees only the statistics.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from edgec.calibration import run_calibration
from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value


class Stats:
    """Per-channel statistics of one value over the tokens added so far (channels: the last axis).

    Ask for what is needed: sum_sq, abs_sum, abs_max, hessian, or fire=t (counts of x > t; with
    fire_abs, of |x| > t). The others stay None. Float64 sums; abs_max keeps the input dtype.
    """

    def __init__(self, *, sum_sq: bool = False, abs_sum: bool = False, abs_max: bool = False,
                 hessian: bool = False, fire: float | None = None, fire_abs: bool = False):
        self.count = 0  # tokens (rows) added
        self.channels: int | None = None
        self.sum_sq = self.abs_sum = self.abs_max = self.hessian = self.fired = None
        self._want = {"sum_sq": sum_sq, "abs_sum": abs_sum, "abs_max": abs_max, "hessian": hessian,
                      "fired": fire is not None}
        self.fire, self.fire_abs = fire, fire_abs

    @classmethod
    def of(cls, arrays, **want) -> "Stats":
        """Statistics of `arrays` ([..., K] each), added in order."""
        s = cls(**want)
        for a in arrays:
            s.add(a)
        return s

    def add(self, x: np.ndarray) -> None:
        """Add every row of x [..., K]."""
        x = np.asarray(x)
        x = x.reshape(-1, x.shape[-1])
        k = x.shape[1]
        if self.channels is None:
            self._allocate(k, x.dtype)
        elif k != self.channels:
            raise EdgecError(f"activation statistics of {self.channels} channels got {k}")
        self.count += x.shape[0]
        if self.sum_sq is not None:
            self.sum_sq += np.einsum("tk,tk->k", x, x, dtype=np.float64)
        if self.abs_sum is not None:
            self.abs_sum += np.abs(x).sum(0, dtype=np.float64)
        if self.abs_max is not None:
            np.maximum(self.abs_max, np.abs(x).max(0), out=self.abs_max)
        if self.hessian is not None:
            xf = x.astype(np.float32, copy=False)
            self.hessian += xf.T @ xf
        if self.fired is not None:
            self.fired += ((np.abs(x) if self.fire_abs else x) > self.fire).sum(0)

    def _allocate(self, k: int, dtype) -> None:
        self.channels = k
        w = self._want
        self.sum_sq = np.zeros(k, np.float64) if w["sum_sq"] else None
        self.abs_sum = np.zeros(k, np.float64) if w["abs_sum"] else None
        self.abs_max = np.zeros(k, dtype) if w["abs_max"] else None
        self.hessian = np.zeros((k, k), np.float64) if w["hessian"] else None
        self.fired = np.zeros(k, np.int64) if w["fired"] else None

    @property
    def norms(self) -> np.ndarray:
        """||X_j||_2 per channel."""
        return np.sqrt(self.sum_sq)

    @property
    def rms(self) -> np.ndarray:
        return np.sqrt(self.sum_sq / max(self.count, 1))

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs_sum / max(self.count, 1)

    @property
    def firing_rate(self) -> np.ndarray:
        """The fraction of tokens on which each channel fired."""
        return self.fired / max(self.count, 1)


def collect(graph: Graph, windows, observe: dict[Value, Stats], progress: Callable[[str], None] | None = None,
            label: str = "calibrating") -> dict[Value, Stats]:
    """Add every window's value of each observed Value to its Stats, one window at a time; returns `observe`.

    An observed value must be read by some node (e.g. a linear's input).
    """
    users = graph.users()
    readers: dict[Node, list[tuple[int, Value]]] = {}  # one reading node per observed value
    for v, s in observe.items():
        if v not in users:
            raise EdgecError(f"cannot observe %{v.name}: no node reads it")
        node = users[v][0]
        readers.setdefault(node, []).append((node.inputs.index(v), v))

    def visit(node, inputs):
        for i, v in readers[node]:
            observe[v].add(inputs[0][i])

    say = progress or (lambda msg: None)
    for i, w in enumerate(windows):
        say(f"{label}: window {i + 1}/{len(windows)}")
        run_calibration(graph, [w], lambda n: n in readers, visit)
    return observe


def collect_sequential(graph: Graph, windows, nodes, visit: Callable[[Node, Stats], None],
                       progress: Callable[[str], None] | None = None, label: str = "calibrating",
                       raw: dict[Node, Callable] | None = None, **want) -> int:
    """Call visit(node, stats of node's first input over all windows) for each of `nodes`, in graph order.

    `want` says which statistics (Stats' options). visit runs before the node
    does and may rewrite its weights: later nodes then see its compressed
    output. Nodes reading the same input (q/k/v, gate/up) share one Stats.
    raw: nodes whose statistics depend on more than their input's channels (a moe layer's experts each see
    the tokens routed to them): raw[node](node, first input per window) is called instead, in the same order.
    Returns the number of visited nodes.
    """
    raw = raw or {}
    wanted = set(nodes) | set(raw)
    left: dict[Value, int] = {}
    for n in set(nodes):
        left[n.inputs[0]] = left.get(n.inputs[0], 0) + 1
    shared: dict[Value, Stats] = {}

    def each(node, inputs):
        if node in raw:
            return raw[node](node, [ins[0] for ins in inputs])
        x = node.inputs[0]
        if x not in shared:
            shared[x] = Stats.of((ins[0] for ins in inputs), **want)
        visit(node, shared[x])
        left[x] -= 1
        if not left[x]:
            del shared[x]

    return run_calibration(graph, windows, lambda n: n in wanted, each, progress, label)
