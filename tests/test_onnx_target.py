"""The ONNX target: ONNX-specific checks beyond the shared op conformance suite.

Every case of op_cases.py is compiled to model.onnx + model.onnx.data, run with
onnxruntime (all graph optimizations on, so fusions are exercised too) and compared
with edgec.ir.interpret: at the default opset by test_conformance.py, at the minimum
opset here. Then the file layout, weight storage and errors.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Node, Value, all_ops, interpret
from edgec.targets.onnx import DEFAULT_OPSET, LOWERINGS, OnnxExecutor, compile_graph, lower
from edgec.targets.onnx.lower import MIN_OPSET
from op_cases import CASES, assert_outputs_match, rand, x_input


# ----------------------------------------------------------------------------- runner
def _compile_and_compare(tmp_path, name, opset):
    graph, feeds_list = CASES[name]()
    meta = compile_graph(graph, tmp_path, opset=opset)
    ex = OnnxExecutor(tmp_path, threads=1)
    assert ex.input_names == [v.name for v in graph.inputs] == meta["inputs"]
    assert ex.output_names == [v.name for v in graph.outputs] == meta["outputs"]
    for feeds in feeds_list:
        assert_outputs_match(name, graph, interpret(graph, feeds), ex.run(feeds))
    return graph, meta


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_interpreter_min_opset(tmp_path, name):
    _compile_and_compare(tmp_path, name, MIN_OPSET)


# ----------------------------------------------------------------------------- coverage & contract
def test_every_registered_op_has_a_lowering():
    missing = sorted(set(all_ops()) - set(LOWERINGS))
    assert not missing, f"IR ops without an ONNX lowering: {missing}"


def test_compiled_artifact_layout_and_checker(tmp_path):
    graph, meta = _compile_and_compare(tmp_path, "linear_tied_embedding", DEFAULT_OPSET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert meta["files"] == ["model.onnx", "model.onnx.data"] and meta["opset"] == DEFAULT_OPSET
    assert meta["onnx_version"] == onnx.__version__ and meta["onnxruntime_version"]
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
    m = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    assert {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"} \
        == {"model.onnx.data"}
    # symbolic dims survive as dim_params
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, "seq"]
    # the tied table is stored once, untransposed
    assert [t.name for t in m.graph.initializer] == ["table"]


def test_linear_weight_is_stored_transposed(tmp_path):
    g = Graph()
    x = x_input(g)
    w = np.arange(32, dtype="float32").reshape(4, 8)
    g.outputs = [g.op("linear", x, g.add_weight("w", np.memmap(tmp_path / "w.bin", "float32", "w+", shape=(4, 8))))]
    g.weights["w"][:] = w
    m = lower(g)
    onnx.checker.check_model(m, full_check=True)
    (init,) = m.graph.initializer
    assert init.name == "w.T"
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), w.T)
    assert "Transpose" not in {n.op_type for n in m.graph.node}


def test_transposed_weight_streams_in_chunks():
    from edgec.targets.onnx.lower import Initializer

    w = rand(5, 7)
    init = Initializer("w.T", w, transpose=True)
    chunks = list(init.chunks(max_bytes=5 * 4 * 2))  # two rows of w.T per chunk
    assert len(chunks) == 4 and all(c.flags.c_contiguous for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), w.T)


def test_unknown_op_raises_unsupported(tmp_path):
    g = Graph()
    x = x_input(g)
    node = Node("frobnicate", [x], [])
    node.outputs = [Value("y", "float32", x.shape, producer=node)]
    g.nodes.append(node)
    g.outputs = node.outputs
    with pytest.raises(UnsupportedModelError, match="frobnicate"):
        compile_graph(g, tmp_path)


def test_rms_norm_is_fused_by_onnxruntime(tmp_path):
    """The primitive RMSNorm pattern must still hit onnxruntime's fused kernel."""
    import onnxruntime as ort

    g = Graph()
    g.outputs = [g.op("rms_norm", x_input(g), g.add_weight("w", rand(8)))]
    compile_graph(g, tmp_path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx", load_external_data=False).graph.node]
    assert ops == ["SimplifiedLayerNormalization"], ops


def test_unsupported_opset_is_rejected(tmp_path):
    graph, _ = CASES["add"]()
    with pytest.raises(UnsupportedModelError, match="opset"):
        compile_graph(graph, tmp_path, opset=MIN_OPSET - 1)


@pytest.mark.parametrize("kernel", ["auto", "gather"])
def test_moe_layers_onnxruntime_computes_exactly_use_its_moe_op(kernel, tmp_path):
    """moe_kernel=auto: the softmax-routed SwiGLU layers (GPT-OSS's clamped one, and silu(gate) * up with a
    down bias) become com.microsoft.MoE with gate/up interleaved and nothing of the plain gate_up stored; the
    other layers (gelu experts) and moe_kernel=gather gather. Both equal the interpreter."""
    graph, feeds = CASES["moe_biased"]()
    gelu = graph.op("moe", graph.inputs[0], *graph.nodes[0].inputs[1:4], top_k=2, act="gelu")
    graph.outputs.append(gelu)
    compile_graph(graph, tmp_path, moe_kernel=kernel)
    m = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    names = {t.name for t in m.graph.initializer}
    if kernel == "auto":
        assert ops.count("MoE") == 2 and {"gate_up.interleaved", "gate_up_bias.interleaved"} <= names
        assert "gate_up" in names  # the gelu layer still gathers from it
    else:
        assert "MoE" not in ops and not any(n.endswith(".interleaved") for n in names)
    ex = OnnxExecutor(tmp_path, threads=1)
    for f in feeds:
        assert_outputs_match("moe_biased", graph, interpret(graph, f), ex.run(f))


def test_reordered_weight_streams_one_leading_row_at_a_time():
    from edgec.targets.onnx.lower import Initializer

    w = rand(3, 4, 5)
    order = np.array([0, 2, 1, 3])
    init = Initializer("w.interleaved", w, rows=order)
    chunks = list(init.chunks())
    assert len(chunks) == 3 and init.shape == (3, 4, 5)
    np.testing.assert_array_equal(np.stack(chunks), w[:, order])
    np.testing.assert_array_equal(init.to_numpy(), w[:, order])
