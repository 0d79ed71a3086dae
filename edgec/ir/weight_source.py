"""Which stored form feeds a linear's weight: the one analysis passes and backends share.

A linear's weight input is a stored tensor, or made from stored tensors by one
node: `cast` (fp16 storage computed in fp32) or `dequantize` (packed codes,
scales, zero points and maybe minima in edgec.ir.quant's layout). Merging sibling linears
needs them in the same form; a backend's fused matmul reads the stored
tensors directly instead of the weight the node would make.
"""
from __future__ import annotations

from dataclasses import dataclass

from .graph import Node, Value
from .quant import PackedLayout


@dataclass(frozen=True, eq=False)
class WeightSource:
    """`form` is "plain" (stored as is), "cast" (stored in another dtype) or "packed" (dequantize)."""

    form: str
    stored: tuple[Value, ...]  # (w,), (w_stored,) or (packed, scales, zeros[, mins])
    node: Node | None = None  # the cast or dequantize making the weight; None for plain
    layout: PackedLayout | None = None  # packed only

    @property
    def key(self) -> tuple:
        """Equal for weights of one form, dtype and layout (what merging them requires)."""
        if self.form == "plain":
            return ("plain", self.stored[0].dtype)
        if self.form == "cast":
            return ("cast", self.stored[0].dtype, self.node.output.dtype)
        return ("packed", self.layout, len(self.stored))

    @property
    def mins(self) -> Value | None:
        """The packed form's float minima (imported ggml blocks), if it has them."""
        return self.stored[3] if self.form == "packed" and len(self.stored) > 3 else None


def weight_source(value: Value) -> WeightSource | None:
    """The stored form `value` is made from, or None when it is computed otherwise (e.g. low rank)."""
    if value.kind == "weight":
        return WeightSource("plain", (value,))
    node = value.producer
    if node is None or not node.inputs or any(v.kind != "weight" for v in node.inputs):
        return None
    if node.op == "cast":
        return WeightSource("cast", tuple(node.inputs), node)
    if node.op == "dequantize":
        a = node.attrs
        return WeightSource("packed", tuple(node.inputs), node, PackedLayout.of(a["bits"], a["group_size"], a["k"]))
    return None


def read_as_weight_only(value: Value, users: list[Node]) -> bool:
    """True if every reader of value is a linear reading it as its weight (and as nothing else)."""
    return bool(users) and all(u.op == "linear" and u.inputs[1] is value
                               and value not in (u.inputs[:1] + u.inputs[2:]) for u in users)
