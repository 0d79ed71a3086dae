"""The ONNX backend's pre-lowering passes (gqa, logits_rows) and the IR ops they make.

Each pass is checked against the interpreter (the rewritten graph computes
what the original did), then the rewritten graph against onnxruntime, and
the ONNX model for the kernels it should use.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from edgec.errors import UnsupportedModelError
from edgec.interface import LOGITS_ROWS
from edgec.ir import Graph, interpret, verify
from edgec.passes import get_pass
from edgec.targets.onnx import PRELOWER, OnnxExecutor, compile_graph, prelower

R = np.random.default_rng(0)
F32 = "float32"


def rand(*shape, dtype=F32):
    return R.uniform(-1, 1, shape).astype(dtype)


def run(graph: Graph, name: str):
    p = get_pass(name)
    result = p.fn(graph, **p.check_options({}))
    verify(graph)
    return result


def onnx_nodes(path):
    return onnx.load(str(path / "model.onnx"), load_external_data=False).graph.node


def _past(kv, d, p):
    return {"past_key.0": rand(1, kv, p, d), "past_value.0": rand(1, kv, p, d)}


# ----------------------------------------------------------------------------- gqa
def attention_graph(heads=4, kv=2, d=16, *, packed=True, partial=False, merged=True, window=0, softcap=0.0):
    """x -> one QKV linear -> split -> heads -> rotary_cached(q, k) -> cached attention (-> merged heads).

    d = 16: onnxruntime's GroupQueryAttention rotates heads of a multiple of 16 only.
    """
    g = Graph()
    x = g.add_input("x", F32, (1, "seq", 16))
    pos = g.add_input("position_ids", "int64", (1, "seq"))
    qkv = g.op("linear", x, g.add_weight("qkv.weight", rand((heads + 2 * kv) * d, 16)))
    parts = list(g.add_node("split", [qkv], {"sizes": [heads * d, kv * d, kv * d]}).outputs)
    if not packed:  # three separate projections of another tensor for v
        parts[2] = g.op("linear", g.op("neg", x), g.add_weight("v.weight", rand(kv * d, 16)))

    def heads_of(v, h):
        return g.op("permute", g.op("reshape", v, shape=[1, -1, h, d]), perm=[0, 2, 1, 3])

    r = d // 2 if partial else d
    cos, sin = (g.add_weight(n, rand(32, r // 2)) for n in ("cos", "sin"))
    q = g.op("rotary_cached", heads_of(parts[0], heads), pos, cos, sin)
    k = g.op("rotary_cached", heads_of(parts[1], kv), pos, cos, sin)
    pk, pv = (g.add_input(f"past_{n}.0", F32, (1, kv, "past", d)) for n in ("key", "value"))
    node = g.add_node("attention", [q, k, heads_of(parts[2], kv), pk, pv],
                      {"scale": d ** -0.5, "window": window, "softcap": softcap})
    node.outputs[1].name, node.outputs[2].name = "present_key.0", "present_value.0"
    out = g.op("reshape", node.outputs[0], shape=[1, -1, heads * d]) if merged else node.outputs[0]
    g.outputs = [out, *node.outputs[1:]]
    return g


def _attention_feeds(kv=2, d=16):
    return [{"x": rand(1, s, 16), "position_ids": np.arange(p, p + s)[None], **_past(kv, d, p)}
            for p, s in ((0, 5), (6, 1), (3, 4))]


@pytest.mark.parametrize("kw, counts", [
    (dict(), {"gqa": 1, "packed": 1, "merged_heads": 1}),
    (dict(heads=2, kv=1, window=3, softcap=2.0), {"gqa": 1, "packed": 1, "merged_heads": 1}),
    (dict(merged=False), {"gqa": 1, "packed": 1, "merged_heads": 0}),
    (dict(packed=False), {"gqa": 1, "packed": 0, "merged_heads": 1}),
    (dict(partial=True), {"gqa": 1, "packed": 0, "merged_heads": 1}),  # GQA rotates whole heads only
], ids=["packed", "mqa_window_softcap", "unmerged", "unpacked", "partial_rotary"])
def test_gqa_pass_matches_interpreter_and_onnx(kw, counts, tmp_path):
    g = attention_graph(**kw)
    before = copy.deepcopy(g)
    assert run(g, "gqa").counts == counts
    run(g, "dce")
    ops = g.op_counts()
    assert "attention" not in ops and ops.get("gqa_packed", 0) == counts["packed"]
    if counts["packed"]:  # the split/heads/rotary of q, k, v are gone
        assert not {"split", "permute", "rotary_cached"} & set(ops)
    assert [v.name for v in g.outputs] == [v.name for v in before.outputs]
    assert compile_graph(g, tmp_path)["kv_cache"] == "shared_buffer"
    nodes = onnx_nodes(tmp_path)
    gqa = [n for n in nodes if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == 1
    assert any(a.name == "do_rotary" and a.i == 1 for a in gqa[0].attribute) == bool(counts["packed"])
    if counts["merged_heads"]:
        assert not [n for n in nodes if n.op_type == "Reshape" and n.input[0] == gqa[0].output[0]]
    ex = OnnxExecutor(tmp_path, threads=1)
    for f in _attention_feeds(kv=kw.get("kv", 2)):
        want, got = interpret(before, f), interpret(g, f)
        for name in want:  # the same numpy computation, reordered
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
        out = ex.run(f)
        for name in want:
            np.testing.assert_allclose(out[name], want[name], rtol=1e-5, atol=1e-5)


def test_gqa_pass_keeps_attention_it_cannot_express():
    g = attention_graph()
    next(v for v in g.inputs if v.name == "position_ids").name = "pos"  # no position_ids: no seqlens
    assert run(g, "gqa").counts == {"gqa": 0, "packed": 0, "merged_heads": 0}
    assert g.op_counts()["attention"] == 1


# ----------------------------------------------------------------------------- logits_rows
def head_graph(softcap=True):
    """h -> norm-free head: logits = softcap(linear(h, W)) over [1, seq, V]."""
    g = Graph()
    h = g.add_input("h", F32, (1, "seq", 8))
    y = g.op("linear", h, g.add_weight("lm_head.weight", rand(11, 8)))
    if softcap:
        cap = g.op("const", value=3.0, dtype=F32)
        y = g.op("mul", g.op("tanh", g.op("div", y, cap)), cap)
    g.outputs = [g.op("cast", y, dtype=F32, name="logits")]
    return g


def test_logits_rows_slices_the_head_input(tmp_path):
    g = head_graph()
    before = copy.deepcopy(g)
    assert run(g, "logits_rows").counts == {"sliced": 1}
    assert [v.name for v in g.inputs][-1] == LOGITS_ROWS and g.outputs[0].shape == (1, LOGITS_ROWS, 11)
    assert run(g, "logits_rows").counts == {"sliced": 0}  # once
    h = rand(1, 6, 8)
    full = interpret(before, {"h": h})["logits"]
    for rows in (1, 3, 6):
        got = interpret(g, {"h": h, LOGITS_ROWS: np.array([rows])})["logits"]
        np.testing.assert_allclose(got, full[:, -rows:], rtol=1e-6, atol=1e-6)  # BLAS blocks by row count
    compile_graph(g, tmp_path)
    model = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["h", LOGITS_ROWS]
    assert [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] \
        == [1, LOGITS_ROWS, 11]
    ex = OnnxExecutor(tmp_path, threads=1)
    for rows in (1, 6):
        out = ex.run({"h": h, LOGITS_ROWS: np.array([rows])})["logits"]
        np.testing.assert_allclose(out, full[:, -rows:], rtol=1e-5, atol=1e-5)


def test_logits_rows_needs_a_row_wise_head():
    g = head_graph(softcap=False)
    y = g.outputs[0]
    g.outputs = [y, g.op("relu", y.producer.inputs[0])]  # the head's output is read twice
    assert run(g, "logits_rows").counts == {"sliced": 0}
    g = Graph()
    g.outputs = [g.op("neg", g.add_input("h", F32, (1, "seq", 8)), name="logits")]
    assert run(g, "logits_rows").counts == {"sliced": 0}


# ----------------------------------------------------------------------------- the phase
def test_prelower_runs_the_backends_passes():
    assert [name for name, _ in PRELOWER] == ["gqa", "logits_rows", "dce"]
    g = attention_graph()
    assert prelower(g) is g and g.op_counts()["gqa_packed"] == 1


def test_tvm_lowers_the_gqa_forms_and_refuses_last_rows(tmp_path):
    pytest.importorskip("tvm")
    from edgec.devices import get_device
    from edgec.targets.tvm import PRELOWER as TVM_PRELOWER
    from edgec.targets.tvm import TvmExecutor
    from edgec.targets.tvm import compile_graph as tvm_compile

    assert TVM_PRELOWER == []
    before = attention_graph()
    g = copy.deepcopy(before)
    run(g, "gqa")  # gqa_packed ...
    g2 = attention_graph(packed=False)
    run(g2, "gqa")  # ... and gqa
    for i, graph in enumerate((g, g2)):
        tvm_compile(graph, tmp_path / str(i), device=get_device("host"))
        ex = TvmExecutor(tmp_path / str(i))
        for f in _attention_feeds()[:2]:
            want, got = interpret(graph, f), ex.run(f)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
    h = head_graph()
    run(h, "logits_rows")
    with pytest.raises(UnsupportedModelError, match="last_rows"):
        tvm_compile(h, tmp_path / "rows", device=get_device("host"))
