"""Quantized MoE experts (passes/quantize.py's quantize_experts): every expert's weights at the recipe's
bits, the graph still runnable by the interpreter, and each backend equal to the interpreter on it.

The ONNX backend gathers the packed rows of the routed experts and dequantizes only those
(targets/onnx/lower_quant.py), so an artifact holds the experts packed, never widened to fp32.
"""
import numpy as np
import onnx
import pytest

from edgec.backends import get_backend
from edgec.devices import get_device
from edgec.ir import get_op, interpret
from edgec.ir.cost import evaluate, node_costs
from edgec.pipeline import compile_ir, write_artifact
from edgec.recipes import load_recipe
from helpers import IDS, check_prefill_and_decode, model_feeds, raised_graph, run_pass
from tiny_moe import save_tiny_moe

BACKENDS = ["onnx", pytest.param("tvm", marks=pytest.mark.slow)]  # (reference: the interpreter itself)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    return save_tiny_moe("mixtral", tmp_path_factory.mktemp("mixtral") / "hf")


@pytest.mark.parametrize("recipe", ["int8", "int4"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_quantized_experts_match_the_interpreter(mixtral, recipe, backend, tmp_path):
    imported, pm = compile_ir(str(mixtral), load_recipe(recipe))
    graph = imported.graph
    assert pm.records and any(r.counts.get("quantized_expert_weights") == 4 for r in pm.records)
    moes = [n for n in graph.nodes if n.op == "moe"]
    assert len(moes) == 2 and all(v.producer.op == "reshape" for n in moes for v in n.inputs[2:4])
    # ONNX: fp32 compute in MatMulNBits (accuracy_level 0), so the dense linears match to float rounding too
    art = write_artifact(imported, pm, tmp_path / "art", device=get_device("host"), backend=get_backend(backend),
                         recipe=load_recipe(recipe), options={"accuracy_level": 0} if backend == "onnx" else None)
    check_prefill_and_decode(graph, art)


def test_onnx_artifact_keeps_the_experts_packed(mixtral, tmp_path):
    """No fp32 copy of any expert in the model file, and no node dequantizing a whole expert tensor."""
    imported, pm = compile_ir(str(mixtral), load_recipe("int4"))
    art = write_artifact(imported, pm, tmp_path / "art", device=get_device("host"), backend=get_backend("onnx"),
                         recipe=load_recipe("int4"))
    model = onnx.load(art / "model" / "model.onnx", load_external_data=False)
    names = {i.name for i in model.graph.initializer}
    assert not any(n.endswith("experts.gate_up_proj") or n.endswith("experts.down_proj") for n in names)
    assert any(n.endswith("experts.gate_up_proj.q4") for n in names)
    experts, rows, k = 4, 2 * 96, 64  # tiny_moe: 4 experts, FFN 96, hidden 64
    full = {(experts * rows, k), (experts, rows, k)}
    shapes = {tuple(d.dim_value for d in vi.type.tensor_type.shape.dim) for vi in model.graph.value_info}
    assert not full & shapes


def test_quantize_options_choose_expert_weights_too(mixtral):
    """skip / only name weights: experts are weights like any other (here only the down projections)."""
    imported, _ = compile_ir(str(mixtral), load_recipe("fp32"))
    graph = imported.graph
    ref = interpret(graph, model_feeds(graph, IDS))["logits"]
    result = run_pass(graph, "quantize", bits=8, group_size=0, only=["experts.down_proj"])
    assert result["quantized_expert_weights"] == 2 and result["quantized_linears"] == 0
    moe = next(n for n in graph.nodes if n.op == "moe")
    assert moe.inputs[2].kind == "weight" and moe.inputs[3].producer.op == "reshape"
    out = interpret(graph, model_feeds(graph, IDS))["logits"]
    assert 0 < np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_cost_of_quantized_experts_is_their_packed_bytes(mixtral):
    """A decode step reads top_k/E of the packed expert bytes, and the dequantize is not counted apart."""
    imported, _ = compile_ir(str(mixtral), load_recipe("int8"))
    graph = imported.graph
    rows = node_costs(graph)
    assert not any(r["op"] == "dequantize" and "experts" in r["name"] for r in rows)
    moe = next(r for r in rows if r["op"] == "moe")
    packed = sum(graph.weights.info(n).nbytes for n in graph.weight_values
                 if "layers.0.mlp.experts" in n)
    router = 4 * 64 * 4
    assert evaluate(moe["weight_bytes"], 1, 1) == pytest.approx(router + packed * 2 / 4)


def test_gptq_calibrates_each_expert_on_the_tokens_routed_to_it(mixtral, tmp_path):
    """GPTQ on the experts (each on its own routed tokens) beats round-to-nearest in the layer's own
    output error on held-out tokens; experts calibration never reaches are rounded to nearest."""
    from edgec.ir.ops_moe import route
    from helpers import Calib

    graph = raised_graph(mixtral)
    dense = copy_graph(graph)
    rtn = copy_graph(graph)
    run_pass(rtn, "quantize", bits=4, group_size=16, lm_head=False)
    result = run_pass(graph, "gptq", ctx=Calib(n=8, seqlen=48), bits=4, group_size=16)
    assert result["expert_layers"] == 2
    node = next(n for n in graph.nodes if n.op == "moe")
    x = _first_moe_inputs(copy_graph(rtn), Calib(n=4, seqlen=48, seed=9).windows())  # held-out windows
    err_gptq, err_rtn = _first_layer_errors(dense, x, graph, rtn)
    assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)
    _, idx = route(x, graph.weight(node.inputs[1]), 2, "softmax", True)
    assert len(np.unique(idx)) == 4  # every expert seen


def _first_moe_inputs(graph, windows) -> np.ndarray:
    """The rows the first moe layer of `graph` sees on `windows`."""
    from edgec.passes.lib.activations import collect

    class Rows:
        def __init__(self):
            self.rows = []

        def add(self, x):
            self.rows.append(np.asarray(x).reshape(-1, x.shape[-1]))

    rows = Rows()
    collect(graph, windows, {next(n for n in graph.nodes if n.op == "moe").inputs[0]: rows})
    return np.concatenate(rows.rows)


def _first_layer(g, x) -> np.ndarray:
    """g's first moe layer on rows x, its experts as g holds them (dequantized where quantized)."""
    n = next(m for m in g.nodes if m.op == "moe")
    weights = [np.asarray(g.weight(n.inputs[1]))] + [interpret_value(g, n.inputs[i]) for i in (2, 3)]
    return get_op("moe").ref(x, *weights, **n.attrs)


def _first_layer_errors(dense, x, *graphs) -> list[float]:
    """The mean absolute error of each graph's first moe layer on rows x against the dense graph's."""
    exact = _first_layer(dense, x)
    return [np.abs(_first_layer(g, x) - exact).mean() for g in graphs]


def copy_graph(graph):
    import copy

    return copy.deepcopy(graph)


def interpret_value(graph, v):
    """The array behind an expert weight input: the weight, or its reshape(dequantize(...))."""
    if v.kind == "weight":
        return np.asarray(graph.weight(v))
    reshape = v.producer
    dq = reshape.inputs[0].producer
    arrays = [np.asarray(graph.weight(w)) for w in dq.inputs]
    return get_op("dequantize").ref(*arrays, **dq.attrs).reshape(reshape.attrs["shape"])


def test_awq_scales_each_experts_down_projection_on_its_routed_tokens(mixtral):
    """Per-expert AWQ: each expert's down projection scaled on its own routed tokens' activations with 1/s
    folded into its up rows (exact in full precision), then every expert stored quantized; the layer's
    output error on held-out tokens is below round-to-nearest's."""
    from helpers import Calib

    graph = raised_graph(mixtral)
    dense = copy_graph(graph)
    rtn = copy_graph(graph)
    run_pass(rtn, "quantize", bits=4, group_size=16, lm_head=False)
    result = run_pass(graph, "awq", ctx=Calib(n=8, seqlen=48), bits=4, group_size=16)
    assert result["quantized_expert_weights"] == 4 and result["awq_scaled_experts"] == 8
    assert "down projections AWQ-scaled" in result.summary
    assert all(v.producer.op == "reshape" for n in graph.nodes if n.op == "moe" for v in n.inputs[2:4])
    x = _first_moe_inputs(copy_graph(rtn), Calib(n=4, seqlen=48, seed=9).windows())  # held-out windows
    err_awq, err_rtn = _first_layer_errors(dense, x, graph, rtn)
    assert err_awq < 0.9 * err_rtn, (err_awq, err_rtn)


@pytest.mark.parametrize("recipe", ["int4-gptq", "int4-awq"])
def test_gpt_oss_experts_quantized_match_the_interpreter(recipe, tmp_path):
    """GPT-OSS's biased experts and clamped SwiGLU through the calibrated recipes (GPTQ's down
    projection is calibrated on the biased, clamped activations) and the ONNX backend."""
    from edgec.pipeline import calib_config
    from helpers import write_calib

    hf = save_tiny_moe("gpt_oss", tmp_path / "hf")
    rec = load_recipe(recipe)
    imported, pm = compile_ir(str(hf), rec, calib=calib_config(rec, write_calib(tmp_path / "calib.txt"), 8, 48))
    graph = imported.graph
    assert any(r.counts.get("quantized_expert_weights") == 4 or r.counts.get("expert_layers") == 2
               for r in pm.records)
    moes = [n for n in graph.nodes if n.op == "moe"]
    assert len(moes) == 2 and all(v.producer.op == "reshape" for n in moes for v in n.inputs[2:4])
    art = write_artifact(imported, pm, tmp_path / "art", device=get_device("host"), backend=get_backend("onnx"),
                         recipe=load_recipe(recipe), options={"accuracy_level": 0})
    check_prefill_and_decode(graph, art)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_pruning_prunes_every_expert_on_its_routed_tokens(mixtral, method):
    """The pruning passes reach the experts: every expert's gate_up and down at 2:4. Wanda scores each expert's
    gate_up by the norms of exactly the rows its router sends to it; SparseGPT keeps the layer closer to the
    dense one than magnitude does on held-out tokens."""
    from edgec.ir.ops_moe import node_route
    from edgec.passes.prune import wanda_prune
    from helpers import Calib

    graph = raised_graph(mixtral)
    dense = copy_graph(graph)
    calib = Calib(n=8, seqlen=48)
    result = run_pass(graph, method, ctx=calib, sparsity=0.5, n=2, m=4)
    assert result["moe_layers"] == 2 and result["rare_experts"] == 0 and "experts of 2 MoE layers" in result.summary
    for n in (x for x in graph.nodes if x.op == "moe"):
        for v in n.inputs[2:4]:
            assert np.all((np.asarray(graph.weight(v)).reshape(-1, 4) != 0).sum(1) <= 2), v.name
    assert np.isfinite(interpret(graph, model_feeds(graph, IDS))["logits"]).all()
    first = next(n for n in graph.nodes if n.op == "moe")
    if method == "wanda":  # the first layer's rows as the pass saw them (its attention already pruned)
        x = _first_moe_inputs(graph, calib.windows())
        idx = node_route(graph, first, x)[1]
        gu = np.asarray(dense.weight(next(n for n in dense.nodes if n.op == "moe").inputs[2]))
        for e in range(gu.shape[0]):
            xe = x[(idx == e).any(1)].astype(np.float64)
            want = wanda_prune(gu[e], np.sqrt((xe ** 2).sum(0)), 0.5, 2, 4)
            np.testing.assert_array_equal(np.asarray(graph.weight(first.inputs[2]))[e], want)
    if method == "sparsegpt":
        mag = copy_graph(dense)
        run_pass(mag, "magnitude", sparsity=0.5, n=2, m=4)
        x = _first_moe_inputs(copy_graph(dense), Calib(n=4, seqlen=48, seed=9).windows())  # held-out rows
        err_sparsegpt, err_magnitude = _first_layer_errors(dense, x, graph, mag)
        assert err_sparsegpt < 0.95 * err_magnitude, (err_sparsegpt, err_magnitude)
