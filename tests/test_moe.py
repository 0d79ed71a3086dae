"""Mixture-of-experts architectures end to end on tiny random models (tiny_moe.py).

As test_architectures.py does for dense models: the IR interpreter and every backend that lowers
`moe` against transformers' eager model (max abs diff <= 1e-4), greedy generation with the KV cache
against transformers' `generate`; backends that do not lower `moe` yet must refuse at build time
naming the op (SOFTMAX_ROUTERS_ONLY: backends that lower softmax routers only; none now). Plus the
routing op itself (against transformers' own routers) and the router kinds raise_moe refuses.
"""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import edgec
from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, interpret
from edgec.ir.ops_moe import ROUTING_ATTRS, route, run_experts
from edgec.passes import PassManager
from edgec.pipeline import compile_ir
from edgec.recipes import load_recipe
from helpers import (IDS, assert_greedy_matches_transformers, build_tiny, eager_logits, model_feeds, run_pass,
                     write_once)
from tiny_moe import MOE_ARCHS, ROUTERS, save_tiny_moe

TOL = 1e-4
# TVM compiles each model for 10-25 s: `slow`, as in test_architectures.py
BACKENDS = ["onnx", "reference", "c", "tvm"]
# backends whose moe serves softmax routers only: their other router kinds are not run here
SOFTMAX_ROUTERS_ONLY = ()
def _serves(backend: str, arch: str) -> bool:
    return backend not in SOFTMAX_ROUTERS_ONLY or ROUTERS[arch]["scoring"] == "softmax"


def _pairs(keep):
    """(arch, backend) params, `built` indirect; TVM's are slow."""
    return [pytest.param(a, b, marks=[pytest.mark.slow] if b == "tvm" else [], id=f"{a}-{b}")
            for a in MOE_ARCHS for b in BACKENDS if keep(b, a)]


SERVED = _pairs(_serves)  # every backend on every router kind it lowers


@pytest.fixture(scope="module", params=MOE_ARCHS)
def built(request, tmp_path_factory):
    return build_tiny(save_tiny_moe, request.param, tmp_path_factory.mktemp(request.param))


def test_router_and_experts_raised_into_one_moe_op_per_layer(built):
    ops = built.graph.op_counts()
    assert ops.get("moe") == 2
    assert not {"topk", "moe_experts", "softmax", "gather", "scatter", "masked_fill", "full_like"} & set(ops)
    want = ROUTERS[built.arch]
    for n in (n for n in built.graph.nodes if n.op == "moe"):
        assert {k: n.attrs[k] for k in want} == want
        biases = want.get("biases", ("score",) if built.arch == "deepseek_v3" else ())  # + the score correction bias
        assert tuple(n.attrs["biases"]) == biases and len(n.inputs) == 4 + len(biases)


def test_interpreter_matches_transformers(built):
    ref = eager_logits(built.eager, IDS)
    out = interpret(built.graph, model_feeds(built.graph, IDS))["logits"][0]
    assert np.abs(out - ref).max() <= TOL


@pytest.mark.parametrize("built, backend", SERVED, indirect=["built"])
def test_artifact_matches_transformers(built, backend):
    model = edgec.load(write_once(built, backend))
    ref = eager_logits(built.eager, IDS)
    out = model.logits(IDS)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL


@pytest.mark.parametrize("built, backend", SERVED, indirect=["built"])
def test_greedy_generation_with_kv_cache_matches_transformers(built, backend):
    assert_greedy_matches_transformers(built.eager, write_once(built, backend))


@pytest.mark.parametrize("flag, needle", [("has_bias", "biased experts"), ("is_transposed", "transposed expert"),
                                           ("is_concatenated", "interleaved gate/up")])
def test_expert_layouts_it_does_not_know_fail_naming_them(flag, needle):
    """An experts module with a layout only GPT-OSS's class is known to use (biases, transposed, interleaved
    gate/up) is refused by name at trace time: the layout flags alone do not say how its gate is computed."""
    import torch
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    from edgec.frontend.moe import _experts_forward
    from tiny_moe import tiny_moe_config

    experts = MixtralExperts(tiny_moe_config("mixtral"))
    setattr(experts, flag, flag != "is_concatenated")
    with pytest.raises(UnsupportedModelError, match=needle) as e:
        _experts_forward(experts, torch.zeros(3, 64), torch.zeros(3, 2, dtype=torch.int64), torch.ones(3, 2))
    assert "\n" not in str(e.value)


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


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_raise_moe_keeps_the_graph_equal(scoring):
    g = _router_graph(scoring)
    feeds = {"x": np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)}
    before = interpret(g, feeds)["y"]
    assert run_pass(g, "raise_moe")["moe"] == 1
    run_pass(g, "dce")
    assert g.op_counts() == {"moe": 1}
    assert np.abs(interpret(g, feeds)[g.outputs[0].name] - before).max() < 1e-5
    assert next(iter(g.nodes)).attrs["scoring"] == scoring


def test_raise_moe_refuses_a_router_it_does_not_know():
    with pytest.raises(UnsupportedModelError, match="scores come from tanh.*router kind is not supported"):
        run_pass(_router_graph("tanh"), "raise_moe")


def test_route_matches_transformers_deepseek_v3_router():
    """Sigmoid scores, the bias choosing only, the best 2 of 4 groups by their two best biased scores,
    renormalised and scaled: route() against transformers' DeepseekV3TopkRouter."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    from tiny_moe import tiny_moe_config

    config = tiny_moe_config("deepseek_v3")
    router = DeepseekV3TopkRouter(config)
    torch.manual_seed(0)
    with torch.no_grad():
        router.weight.normal_(0, 0.5)
        router.e_score_correction_bias.normal_(0, 0.3)
        x = torch.randn(64, config.hidden_size)
        _, want_w, want_i = router(x)
    want_w, want_i = want_w.numpy(), want_i.numpy()
    routing = dict(ROUTERS["deepseek_v3"])
    w, idx = route(x.numpy(), router.weight.detach().numpy(), routing.pop("top_k"), **routing,
                   bias=router.e_score_correction_bias.numpy())
    order = np.argsort(want_i, 1)  # transformers' top-k is unsorted
    assert (np.sort(idx, 1) == np.take_along_axis(want_i, order, 1)).all()
    assert np.abs(np.take_along_axis(w, np.argsort(idx, 1), 1) - np.take_along_axis(want_w, order, 1)).max() < 1e-6


def test_route_matches_transformers_sparsemixer():
    """Phi-MoE's router at inference: route(scoring="sparsemixer") against transformers' sparsemixer."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    logits = torch.randn(256, 6) * torch.tensor([1.0, 0.01, 3.0, 0.2, 1.0, 1.0])  # some within 2 eps
    want_w, want_i = sparsemixer(logits, jitter_eps=0.01, training=False)
    eye = np.eye(6, dtype=np.float32)  # x @ eye.T: the logits themselves
    routing = dict(ROUTERS["phimoe"])
    w, idx = route(logits.numpy(), eye, routing.pop("top_k"), **routing)
    assert (idx == want_i.numpy()).all()
    assert np.abs(w - want_w.numpy()).max() < 1e-6
    assert set(ROUTERS["phimoe"]) <= set(ROUTING_ATTRS)


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
