"""The lowering core (edgec.targets.lowering): explicit fallbacks, per-lowering state, the missing-op check."""
from __future__ import annotations

import pytest

from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Node, Value
from edgec.targets.lowering import LoweringContext, LoweringTable, check_supported


def _node(op: str) -> Node:
    x = Value("x", "float32", (1,), kind="input")
    n = Node(op, [x], [])
    n.outputs = [Value("y", "float32", (1,), producer=n)]
    return n


def test_a_specialised_lowering_falls_back_to_the_one_it_names():
    table = LoweringTable("test")

    @table.register("linear")
    def base(cx, n):
        return "base"

    @table.register("linear", fallback=base)
    def kernel(cx, n):
        return "kernel" if n.inputs[0].name == "fast" else NotImplemented

    @table.register("linear", fallback=kernel)
    def other(cx, n):
        return NotImplemented

    n = _node("linear")
    assert table["linear"] is other and list(table) == ["linear"] and len(table) == 1
    assert table.lower(None, n) == "base"  # other -> kernel -> base
    n.inputs[0].name = "fast"
    assert table.lower(None, n) == "kernel"


def test_an_override_that_does_not_name_the_current_lowering_is_refused():
    table = LoweringTable("test")

    @table.register("attention")
    def base(cx, n):
        return None

    @table.register("attention", fallback=base)
    def first(cx, n):
        return None

    with pytest.raises(ValueError, match="attention"):  # a second override of the same base: ambiguous
        table.register("attention", fallback=base)(lambda cx, n: None)
    with pytest.raises(ValueError, match="attention"):  # no fallback named: would silently replace
        table.register("attention")(lambda cx, n: None)
    with pytest.raises(ValueError, match="rms_norm"):  # a fallback where the table has none
        table.register("rms_norm", fallback=base)(lambda cx, n: None)
    assert table["attention"] is first


def test_state_is_per_lowering_and_per_context():
    g = Graph()
    a, b = LoweringContext(g), LoweringContext(g)

    def owner(cx, n):
        return None

    a.state(owner)["k"] = 1
    assert a.state(owner) == {"k": 1} and a.state(test_state_is_per_lowering_and_per_context) == {}
    assert b.state(owner) == {}


def test_check_supported_names_every_missing_op():
    g = Graph()
    x = g.add_input("x", "float32", (1, "seq", 4))
    g.outputs = [g.op("relu", g.op("neg", x))]
    table = LoweringTable("Demo")
    table.register("neg")(lambda cx, n: None)
    with pytest.raises(UnsupportedModelError, match=r"the Demo target has no lowering for IR op\(s\) 'relu'"):
        check_supported(g, table)
    table.register("relu")(lambda cx, n: None)
    check_supported(g, table)


def test_backends_use_the_shared_table():
    from edgec.targets.onnx import LOWERINGS

    assert isinstance(LOWERINGS, LoweringTable)
    # the contrib-kernel lowerings name the standard ones they fall back to
    from edgec.targets.onnx import lower_llm, lower_quant

    assert LOWERINGS["linear"] is lower_quant._linear
    assert LOWERINGS.fallback_of("linear", lower_quant._linear) is lower_llm._linear
    assert LOWERINGS.fallback_of("embedding", lower_quant._embedding) is lower_llm._embedding
