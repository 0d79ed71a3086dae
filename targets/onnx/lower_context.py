"""What every ONNX lowering uses: the opset range, the table, and the emission context.

Naming: graph inputs, outputs and every IR value keep their IR names. IR
names are sanitized to [A-Za-z0-9_.], so helper tensors use '/' in their
names (`<ir value>/<hint>`) and transposed weights end in '.T'; neither can
collide with an IR name.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Node, Value
from edgec.targets.lowering import LoweringContext, LoweringTable

# 21 is what onnxruntime >= 1.20 (our floor) fully supports, gives native Gelu
# (opset 20), and blockwise int4 DequantizeLinear for weight-only quantization.
DEFAULT_OPSET = 21
MIN_OPSET = 17  # LayerNormalization
MAX_OPSET = 21  # every lowering is written and tested against 17..21

INT64_MAX = 2**63 - 1

LOWERINGS = LoweringTable("ONNX")
lowering = LOWERINGS.register


def onnx_dtype(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def static(d, what: str, node: Node) -> int:
    if not isinstance(d, int):
        raise UnsupportedModelError(f"ONNX target: {node.op} needs a static {what}, got {d!r}")
    return d


class OnnxContext(LoweringContext):
    """Emission state: ONNX nodes so far, unique helper names, deduplicated constants."""

    def __init__(self, graph: Graph, opset: int, transposed: dict[str, str], accuracy_level: int | None = None):
        super().__init__(graph)
        self.opset = opset
        self.accuracy_level = accuracy_level  # MatMulNBits' compute type (None: lower_quant's default)
        self.transposed = transposed  # weight name -> name of its [in, out] initializer
        self.nodes: list[onnx.NodeProto] = []
        self.scope = "graph"
        self._names: set[str] = {v.name for v in graph.inputs} | set(graph.weight_values)
        self._names |= {o.name for n in graph.nodes for o in n.outputs}
        self._names |= set(transposed.values())
        self._consts: dict[tuple, str] = {}
        self.metadata: dict[str, str] = {}  # -> model.metadata_props (e.g. the KV cache layout)
        self.reordered: list[tuple[str, str, np.ndarray]] = []  # (initializer, weight, axis-1 order): reordered
        self.moe_kernel = "auto"  # the backend option (lower_moe.py)

    def fresh(self, hint: str) -> str:
        base = f"{self.scope}/{hint}"
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, n_out: int = 1, **attrs):
        """Append one ONNX node; returns its output name (or list of names if n_out > 1)."""
        if n_out == 1:
            outs = [out or self.fresh(op_type.lower())]
        else:
            outs = [self.fresh(f"{op_type.lower()}{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self.fresh(f"{op_type}_node"), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype: str) -> str:
        """A small inline Constant (shapes, axes, scalars); identical ones are shared."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            saved, self.scope = self.scope, "const"
            name = self.fresh(f"{dtype}_{'x'.join(map(str, arr.shape)) or 'scalar'}")
            self.nodes.append(helper.make_node("Constant", [], [name], name=self.fresh("Constant_node"),
                                               value=numpy_helper.from_array(arr, name)))
            self.scope = saved
            self._consts[key] = name
        return self._consts[key]

    def reordered_weight(self, v: Value, suffix: str, rows) -> str:
        """An initializer holding weight v with axis 1 in the order `rows` (written lazily, a row block at a
        time, by the external-data writer); the weight itself is stored only if something still reads it."""
        name = f"{v.name}.{suffix}"
        if name not in self._names:
            self._names.add(name)
            self.reordered.append((name, v.name, np.asarray(rows, np.int64)))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64), "int64")

    def cast(self, name: str, src: str, dst: str, out: str | None = None) -> str:
        if src == dst and out is None:
            return name
        if src == dst:
            return self.op("Identity", name, out=out)
        return self.op("Cast", name, out=out, to=onnx_dtype(dst))

    def promote(self, *values: Value) -> tuple[str, list[str]]:
        """Cast values to their numpy result type (what the reference computes in)."""
        dt = np.result_type(*[np.dtype(v.dtype) for v in values]).name
        return dt, [self.cast(v.name, v.dtype, dt) for v in values]

    def sink(self, value: Value, dtype: str) -> str:
        """Where a lowering computing in `dtype` should write its last op (see land)."""
        return value.name if dtype == value.dtype else self.fresh(f"{dtype}_result")

    def land(self, name: str, value: Value, dtype: str) -> None:
        if dtype != value.dtype:
            self.cast(name, dtype, value.dtype, out=value.name)

    def reduce_mean(self, x: str, axes, keepdims: bool, out: str | None = None) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints(list(axes)), out=out, keepdims=int(keepdims))
        return self.op("ReduceMean", x, out=out, axes=list(axes), keepdims=int(keepdims))

    def slice(self, x: str, axis: int, start: int, end: int, step: int = 1, out: str | None = None) -> str:
        return self.op("Slice", x, self.ints([start]), self.ints([end]), self.ints([axis]),
                       self.ints([step]), out=out)

    def dim(self, x: str, axis: int) -> str:
        """Scalar int64: the runtime size of x along a (non-negative) axis."""
        return self.op("Squeeze", self.op("Shape", x, start=axis, end=axis + 1), self.ints([0]))
