"""Mixture-of-experts architectures end to end on tiny random models (tiny_moe.py).

As test_architectures.py does for dense models: the IR interpreter and every backend that lowers
`moe` against transformers' eager model (max abs diff <= 1e-4), greedy generation with the KV cache
against transformers' `generate`; backends that do not lower `moe` yet must refuse at build time
naming the op. Plus the routing op itself and the router kinds raise_moe refuses.
"""
import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import edgec
from edgec.backends import get_backend
from edgec.devices import get_device
from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, interpret
from edgec.ir.ops_moe import route, run_experts
from edgec.passes import PassManager
from edgec.pipeline import compile_ir, write_artifact
from edgec.recipes import load_recipe
from helpers import IDS, assert_greedy_matches_transformers, eager_logits, model_feeds, run_pass
from tiny_moe import MOE_ARCHS, save_tiny_moe

TOL = 1e-4
# TVM compiles each model for 10-25 s: `slow`, as in test_architectures.py
LOWERS_MOE = ["onnx", "reference", pytest.param("tvm", marks=pytest.mark.slow)]
REFUSES_MOE = ("c",)


@pytest.fixture(scope="module", params=MOE_ARCHS)
def built(request, tmp_path_factory):
    arch = request.param
    d = tmp_path_factory.mktemp(arch)
    save_tiny_moe(arch, d / "hf")
    recipe = load_recipe("fp32")
    imported, pm = compile_ir(str(d / "hf"), recipe)
    eager = AutoModelForCausalLM.from_pretrained(d / "hf", attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    return SimpleNamespace(arch=arch, dir=d, recipe=recipe, imported=imported, pm=pm, graph=imported.graph,
                           eager=eager, artifacts={})


def _write(built, backend: str):
    imported = dataclasses.replace(built.imported, graph=copy.deepcopy(built.graph))
    pm = PassManager()
    pm.records = list(built.pm.records)
    return write_artifact(imported, pm, built.dir / backend, device=get_device("host"),
                          backend=get_backend(backend), recipe=built.recipe)


@pytest.fixture(params=LOWERS_MOE)
def artifact(built, request):
    """`built` written as an artifact by one backend, once per module."""
    if request.param not in built.artifacts:
        built.artifacts[request.param] = _write(built, request.param)
    return built.artifacts[request.param]


def test_router_and_experts_raised_into_one_moe_op_per_layer(built):
    ops = built.graph.op_counts()
    assert ops.get("moe") == 2
    assert not {"topk", "moe_experts", "softmax"} & set(ops)
    norm = {"mixtral": True, "qwen2_moe": False, "qwen3_moe": True}[built.arch]
    assert all(n.attrs["normalize"] is norm and n.attrs["top_k"] == 2 for n in built.graph.nodes if n.op == "moe")


def test_interpreter_matches_transformers(built):
    ref = eager_logits(built.eager, IDS)
    out = interpret(built.graph, model_feeds(built.graph, IDS))["logits"][0]
    assert np.abs(out - ref).max() <= TOL


def test_artifact_matches_transformers(built, artifact):
    model = edgec.load(artifact)
    ref = eager_logits(built.eager, IDS)
    out = model.logits(IDS)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL


def test_greedy_generation_with_kv_cache_matches_transformers(built, artifact):
    assert_greedy_matches_transformers(built.eager, artifact)


@pytest.mark.parametrize("backend", REFUSES_MOE)
def test_backends_without_moe_refuse_at_build_time(built, backend, tmp_path):
    with pytest.raises(UnsupportedModelError, match="'moe'"):
        _write(built, backend)
    assert not (built.dir / backend).exists()


# -- the op and the pass ------------------------------------------------------------------------
def test_moe_reference_computes_only_the_routed_experts():
    """The op's reference equals a dense sum over every expert weighted by a routing matrix that is
    zero outside each token's top-k (so unrouted experts contribute nothing)."""
    rng = np.random.default_rng(0)
    T, H, I, E, k = 6, 8, 5, 4, 2
    x = rng.standard_normal((T, H)).astype(np.float32)
    router = rng.standard_normal((E, H)).astype(np.float32)
    gate_up = rng.standard_normal((E, 2 * I, H)).astype(np.float32)
    down = rng.standard_normal((E, H, I)).astype(np.float32)
    w, idx = route(x, router, k, "softmax", True)
    assert np.allclose(w.sum(-1), 1.0, atol=1e-6)
    dense = np.zeros((T, E), np.float32)
    np.put_along_axis(dense, idx, w, axis=1)
    expect = sum(dense[:, e:e + 1] * run_experts(x, np.full((T, 1), e), np.ones((T, 1), np.float32),
                                                 gate_up, down, "silu") for e in range(E))
    got = run_experts(x, idx, w, gate_up, down, "silu")
    assert np.abs(got - expect).max() < 1e-4
    assert (dense > 0).sum(1).tolist() == [k] * T


def _router_graph(scoring_op: str) -> Graph:
    """x -> linear -> <scoring_op> -> topk -> moe_experts: a router raise_moe must check."""
    rng = np.random.default_rng(1)
    g = Graph()
    x = g.add_input("x", "float32", ("seq", 8))
    logits = g.op("linear", x, g.add_weight("router", rng.standard_normal((4, 8)).astype(np.float32)))
    scores = g.op(scoring_op, logits, **({"axis": -1} if scoring_op == "softmax" else {}))
    vals, idx = g.add_node("topk", [scores], {"k": 2}).outputs
    out = g.op("moe_experts", x, idx, vals, g.add_weight("gate_up", rng.standard_normal((4, 6, 8)).astype(np.float32)),
               g.add_weight("down", rng.standard_normal((4, 8, 3)).astype(np.float32)), act="silu")
    out.name = "y"
    g.outputs = [out]
    return g


def test_raise_moe_keeps_the_graph_equal():
    g = _router_graph("softmax")
    feeds = {"x": np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)}
    before = interpret(g, feeds)["y"]
    assert run_pass(g, "raise_moe")["moe"] == 1
    run_pass(g, "dce")
    assert g.op_counts() == {"moe": 1}
    assert np.abs(interpret(g, feeds)[g.outputs[0].name] - before).max() < 1e-5


def test_raise_moe_refuses_a_router_it_does_not_know():
    with pytest.raises(UnsupportedModelError, match="sigmoid.*not supported"):
        run_pass(_router_graph("sigmoid"), "raise_moe")


def test_cost_table_counts_only_the_routed_experts_per_token():
    """The roofline's cost model (edgec.ir.cost): a decode step reads the router and top_k/E of the
    expert weights, and twice that for two tokens (the router once)."""
    from edgec.ir.cost import evaluate, node_costs
    from op_cases import CASES

    graph, _ = CASES["moe"]()
    first = graph.nodes[0]
    assert first.op == "moe" and first.attrs["top_k"] == 2
    row = node_costs(graph)[0]
    router, experts = 4 * 8 * 4, (4 * 6 * 8 + 4 * 8 * 3) * 4  # float32 bytes
    assert evaluate(row["weight_bytes"], 1, 1) == router + experts * 2 / 4
    assert evaluate(row["weight_bytes"], 2, 2) == router + 2 * experts * 2 / 4
    # router logits, then per routed expert gate_up (2I x H) and down (H x I) multiply-adds
    assert evaluate(row["flops"], 1, 1) == 2 * 8 * 4 + 2 * (2 * 6 * 8 + 2 * 8 * 3)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_activation_profile_counts_the_experts_transformers_routes_to(arch, tmp_path):
    """`edgec activations`' expert table: per MoE layer, the tokens routed to each expert, equal to the
    indices transformers' own routers return on the same tokens; kept through the JSON round trip."""
    from edgec.activations import ActivationProfile, format_table, profile_activations
    from edgec.frontend import import_model
    from edgec.passes import CANONICALIZE, RAISE

    save_tiny_moe(arch, tmp_path / "hf")
    imported = import_model(str(tmp_path / "hf"))
    pm = PassManager()
    pm.run(imported.graph, CANONICALIZE)
    pm.run(imported.graph, RAISE)
    windows = [np.random.default_rng(i).integers(3, 60, 24) for i in range(3)]
    profile = profile_activations(imported.graph, windows)
    assert len(profile.experts) == 2 and len(profile.layers) == (2 if arch == "qwen2_moe" else 0)

    eager = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    counts = [np.zeros(4, np.int64) for _ in range(2)]

    def counter(c):
        def hook(module, args, out):  # the router returns (logits, scores, indices)
            np.add(c, np.bincount(out[2].reshape(-1).numpy(), minlength=4), out=c)
        return hook

    hooks = [layer.mlp.gate.register_forward_hook(counter(c)) for layer, c in zip(eager.model.layers, counts)]
    with torch.no_grad():
        for w in windows:
            eager(torch.tensor([w]))
    for h in hooks:
        h.remove()
    for e, want in zip(profile.experts, counts):
        assert e.tokens == 72 and e.routed.sum() == 72 * 2
        assert e.routed.tolist() == want.tolist()
    again = ActivationProfile.from_json(profile.to_json())
    assert [e.routed.tolist() for e in again.experts] == [c.tolist() for c in counts]
    assert "res25" in format_table(again)
