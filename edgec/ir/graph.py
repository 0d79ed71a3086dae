"""The IR graph: typed SSA values, nodes in topological order, weights by name.

Modelled on torch.fx's Graph/Node but smaller: a Value is produced by exactly one
node (or is a graph input or a weight), nodes are kept in a list that is always
topologically sorted, and passes rewrite the graph with `replace_all_uses`,
`insert` and `remove`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable

from .shapes import Dim, Shape, format_shape
from .weights import WeightStore

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")


@dataclass
class Meta:
    """Typed facts a pass attaches to a value or a node, kept by later passes and shown by the
    printer: what the weight planner, hot/cold placement and fusion decide on."""

    tier: str | None = None        # memory tier of a weight (edgec.weight_plan): "default", "cold", ...
    placement: str | None = None   # where a node runs: "cpu", "gpu"
    layout: str | None = None      # a storage layout other than the op's default, e.g. "hot_first"
    provenance: str | None = None  # where it came from, e.g. "gguf:Q4_1", "quantize"

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in vars(self).items() if v is not None]

    def copy(self) -> "Meta":
        return Meta(**vars(self))


@dataclass
class GraphFacts:
    """Graph-wide facts that passes record and backends read (typed; one field per fact)."""

    name: str = "edgec"
    architecture: str | None = None   # the source model's type (frontend)
    context_length: int | None = None  # tokens the model accepts: the model's, capped by kv_cache
    kv_layers: int = 0                 # attention layers with a KV cache (kv_cache)
    kv_bits: int = 32                  # 8: int8 cache (kv_cache bits=8)
    fused: bool = False                # the fuse phase ran

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass(eq=False)
class Value:
    """A tensor in the graph. `kind` is 'input', 'weight' or 'node'."""

    name: str
    dtype: str
    shape: Shape
    kind: str = "node"
    producer: "Node | None" = field(default=None, repr=False)
    meta: Meta = field(default_factory=Meta, repr=False)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.dtype}{format_shape(self.shape)}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    meta: Meta = field(default_factory=Meta)

    @property
    def output(self) -> Value:
        assert len(self.outputs) == 1, f"{self.op} has {len(self.outputs)} outputs"
        return self.outputs[0]


class Graph:
    """A function from `inputs` to `outputs`; weights live in `self.weights`."""

    def __init__(self, weights: WeightStore | None = None):
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.weights = weights if weights is not None else WeightStore()
        self.weight_values: dict[str, Value] = {}
        self.facts = GraphFacts()
        # files the artifact carries beside the model, by name (e.g. activations.json, the neuron profile a
        # pass measured); the pipeline writes them at the artifact's root, where the manifest lists them
        self.attachments: dict[str, str] = {}
        # what a pass leaves for a backend's lowering that no op reads, by kind, e.g. "predictors": the FFN
        # active-neuron predictors of passes/predictor.py by glu output name (hot/cold offloading uses them)
        self.annotations: dict[str, dict] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # -- naming ---------------------------------------------------------------
    def fresh_name(self, hint: str = "v") -> str:
        hint = "".join(c if c.isalnum() or c in "_." else "_" for c in hint) or "v"
        name = hint
        while name in self._names:
            name = f"{hint}_{next(self._counter)}"
        self._names.add(name)
        return name

    # -- building -------------------------------------------------------------
    def add_input(self, name: str, dtype: str, shape: Shape) -> Value:
        v = Value(self.fresh_name(name), dtype, tuple(shape), kind="input")
        self.inputs.append(v)
        return v

    def add_weight(self, name: str, array) -> Value:
        """Register a constant tensor (numpy array or lazy entry) and return its Value."""
        name = self.fresh_name(name)
        self.weights[name] = array
        info = self.weights.info(name)
        v = Value(name, info.dtype, tuple(info.shape), kind="weight")
        self.weight_values[name] = v
        return v

    def weight(self, value: Value):
        """The numpy array behind a weight Value."""
        return self.weights[value.name]

    def make_node(self, op: str, inputs: Iterable[Value], attrs: dict | None = None,
                  name: str | None = None) -> Node:
        """Create a node (shape-inferred by the op registry) without inserting it."""
        from .ops import get_op

        inputs = list(inputs)
        attrs = dict(attrs or {})
        opdef = get_op(op)
        attrs = opdef.complete_attrs(attrs)
        specs = opdef.infer(inputs, attrs)
        node = Node(op, inputs, [], attrs)
        base = name or op
        for i, (dtype, shape) in enumerate(specs):
            out = Value(self.fresh_name(base if len(specs) == 1 else f"{base}_{i}"),
                        dtype, tuple(shape), kind="node", producer=node)
            node.outputs.append(out)
        return node

    def add_node(self, op: str, inputs: Iterable[Value], attrs: dict | None = None,
                 name: str | None = None) -> Node:
        node = self.make_node(op, inputs, attrs, name)
        self.nodes.append(node)
        return node

    def op(self, op: str, *inputs: Value, name: str | None = None, **attrs) -> Value:
        """Append a single-output node and return its output (handy in passes)."""
        return self.add_node(op, inputs, attrs, name).output

    def insert_before(self, anchor: Node, node: Node) -> None:
        self.nodes.insert(self.nodes.index(anchor), node)

    def remove(self, node: Node) -> None:
        self.nodes.remove(node)

    # -- rewriting ------------------------------------------------------------
    def users(self) -> dict[Value, list[Node]]:
        uses: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                uses.setdefault(v, []).append(n)
        return uses

    @staticmethod
    def producing_linear(out: Value, through=lambda node: True) -> Node | None:
        """The linear that makes `out` through a chain of ops with one non-constant input each
        (e.g. the logits projection behind casts and soft-capping); None if the chain ends otherwise.

        `through(node)` may refuse an op on the way. Weights and `const` nodes count as constants.
        """
        n = out.producer
        while n is not None and n.op != "linear":
            live = [v for v in n.inputs
                    if v.kind != "weight" and not (v.producer is not None and v.producer.op == "const")]
            if len(live) != 1 or not through(n):
                return None
            n = live[0].producer
        return n

    def replace_all_uses(self, old: Value, new: Value) -> None:
        for n in self.nodes:
            n.inputs = [new if v is old else v for v in n.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def prune_weights(self) -> None:
        """Drop weights no node reads any more."""
        used = {v.name for n in self.nodes for v in n.inputs if v.kind == "weight"}
        used |= {v.name for v in self.outputs if v.kind == "weight"}
        for name in list(self.weight_values):
            if name not in used:
                del self.weight_values[name]
                self.weights.pop(name)

    # -- queries --------------------------------------------------------------
    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    def symbols(self) -> set[str]:
        from .shapes import symbols_of

        out: set[str] = set()
        for v in self.inputs:
            for d in v.shape:
                out |= symbols_of(d)
        return out

    def num_parameters(self) -> int:
        return sum(self.weights.info(n).numel for n in self.weight_values)

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)


__all__ = ["DTYPES", "Dim", "Graph", "GraphFacts", "Meta", "Node", "Shape", "Value"]
