"""Lower an edgec IR graph to an ONNX model.

Table-driven: `LOWERINGS` (edgec.targets.lowering) maps every IR op name to
one small function that appends ONNX nodes for one IR node; the families
live in lower_<family>.py (generic ops, LLM ops, fused ops, quantized and
int8 linears, GroupQueryAttention), the shared context in lower_context.py.
A new IR op without an entry is a compile error (UnsupportedModelError), and
a test fails until it gets one. Rewrites only this backend wants (GQA forms,
the logits_rows input) are IR passes run before lowering (PRELOWER in
__init__.py), so the lowering maps ops and decides nothing graph-wide.

Weights: one initializer per used weight, streamed by compile_graph into an
external data file; weights read only as a linear's W are stored transposed.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Value
from edgec.targets.lowering import check_supported

from .lower_context import DEFAULT_OPSET, LOWERINGS, MAX_OPSET, MIN_OPSET, OnnxContext, onnx_dtype

__all__ = ["DEFAULT_OPSET", "LOWERINGS", "MAX_OPSET", "MIN_OPSET", "Initializer", "LoweredModel",
           "lower", "lower_graph", "onnx_dtype"]


@dataclass
class Initializer:
    """A weight to be stored in the model; `transpose` stores array.T (for linear)."""

    name: str
    array: np.ndarray  # possibly an np.memmap: never copied as a whole
    transpose: bool = False
    rows: np.ndarray | None = None  # store array[:, rows] (a reordering of axis 1; not with transpose)

    @property
    def dtype(self) -> str:
        return self.array.dtype.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.array.shape)) if self.transpose else tuple(self.array.shape)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def chunks(self, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """C-contiguous little-endian pieces of the stored tensor, in order.

        A contiguous (mem)mapped array is yielded as-is (no copy); a transposed
        one is produced a block of rows at a time so peak memory stays bounded.
        """
        a = self.array
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if self.rows is not None:  # one leading index at a time (an expert's rows)
            for i in range(a.shape[0]):
                yield np.ascontiguousarray(np.asarray(a[i])[self.rows])
            return
        if not self.transpose:
            yield np.ascontiguousarray(a)
            return
        n, k = a.shape  # store [k, n]
        rows = max(1, max_bytes // max(1, n * a.dtype.itemsize))
        for k0 in range(0, k, rows):
            yield np.ascontiguousarray(a[:, k0:k0 + rows].T)

    def to_numpy(self) -> np.ndarray:
        a = np.asarray(self.array)
        if self.rows is not None:
            return np.ascontiguousarray(a[:, self.rows])
        return np.ascontiguousarray(a.T if self.transpose else a)


@dataclass
class LoweredModel:
    """The ONNX graph without initializer data, plus the initializers to attach.

    Kept apart so compile_graph can stream (mem-mapped) weights straight into the
    external data file instead of first copying them all into protobuf bytes.
    """

    model: onnx.ModelProto
    initializers: list[Initializer] = field(default_factory=list)


# ----------------------------------------------------------------------------- driver
def _value_info(v: Value) -> onnx.ValueInfoProto:
    # Symbolic dims ("seq", "past+seq") become dim_params.
    return helper.make_tensor_value_info(v.name, onnx_dtype(v.dtype), list(v.shape))


def _plan_weights(graph: Graph) -> tuple[list[Initializer], dict[str, str]]:
    """One initializer per used weight; weights read only as a linear's W are stored transposed."""
    uses: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for n in graph.nodes:
        for i, v in enumerate(n.inputs):
            if v.kind == "weight":
                uses[v.name].append((n.op, i))
    for v in graph.outputs:
        if v.kind == "weight":
            uses[v.name].append(("output", 0))
    inits, transposed = [], {}
    for name in graph.weight_values:
        if name not in uses:
            continue  # unused weights would only be dropped by the runtime
        arr = graph.weights[name]
        if all(op == "linear" and i == 1 for op, i in uses[name]) and np.ndim(arr) == 2:
            transposed[name] = f"{name}.T"
            inits.append(Initializer(transposed[name], arr, transpose=True))
        else:
            inits.append(Initializer(name, arr))
    return inits, transposed


def _live_nodes(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the outputs depend on, in order (a fused lowering may leave helper nodes unread)."""
    needed, live = set(outputs), []
    for nd in reversed(nodes):
        if needed.intersection(nd.output):
            live.append(nd)
            needed.update(i for i in nd.input if i)
    return live[::-1]


def lower_graph(graph: Graph, opset: int = DEFAULT_OPSET, accuracy_level: int | None = None,
                moe_kernel: str = "auto") -> LoweredModel:
    """Lower `graph`; initializer data is left out of the proto (see LoweredModel).
    accuracy_level: MatMulNBits' compute type (the backend option; None: lower_quant's default);
    moe_kernel: the backend option (lower_moe.py)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(f"ONNX target: opset {opset} not supported "
                                    f"(use {MIN_OPSET}..{MAX_OPSET})")
    check_supported(graph, LOWERINGS)
    for v in graph.outputs:
        if v.kind != "node":
            raise UnsupportedModelError(f"ONNX target: graph output {v.name!r} is a {v.kind}, not computed")
    inits, transposed = _plan_weights(graph)
    cx = OnnxContext(graph, opset, transposed, accuracy_level)
    cx.moe_kernel = moe_kernel
    for n in graph.nodes:
        if id(n) in cx.absorbed:
            continue
        cx.scope = n.outputs[0].name if n.outputs else n.op
        LOWERINGS.lower(cx, n)
    nodes = _live_nodes(cx.nodes, [v.name for v in graph.outputs])
    # A fused lowering may leave a weight unread (MatMulNBits' default zero points): don't store it.
    read = {name for nd in nodes for name in nd.input}
    inits = [i for i in inits + [Initializer(name, graph.weights[src], rows=rows) for name, src, rows in cx.reordered]
             if i.name in read]
    inputs = [_value_info(v) for v in graph.inputs]
    outputs = [_value_info(v) for v in graph.outputs]
    g = helper.make_graph(nodes, graph.facts.name, inputs, outputs)
    opsets = [helper.make_opsetid("", opset)]
    ir_version = helper.find_min_ir_version_for(opsets)
    # Contrib ops (e.g. com.microsoft MatMulNBits from lower_quant.py) need their domain declared.
    opsets += [helper.make_opsetid(d, 1) for d in sorted({nd.domain for nd in nodes} - {"", "ai.onnx"})]
    model = helper.make_model(g, opset_imports=opsets, producer_name="edgec", ir_version=ir_version)
    helper.set_model_props(model, cx.metadata)
    return LoweredModel(model, inits)


def lower(graph: Graph, opset: int = DEFAULT_OPSET, accuracy_level: int | None = None) -> onnx.ModelProto:
    """Lower `graph` to a self-contained ModelProto (weights inline; under 2 GB only).

    For real models use compile_graph, which writes weights as external data.
    """
    lowered = lower_graph(graph, opset, accuracy_level)
    model = lowered.model
    for init in lowered.initializers:
        model.graph.initializer.append(numpy_helper.from_array(init.to_numpy(), init.name))
    return model
