"""Pruning passes on tiny models: exact sparsity, N:M patterns, SparseGPT/Wanda/magnitude
reconstruction order, structured pruning that shrinks shapes and still runs in ONNX, bad options."""
import copy

import numpy as np
import pytest

import edgec
from edgec.backends import get_backend
from edgec.calibration import run_calibration
from edgec.devices import get_device
from edgec.errors import EdgecError
from edgec.ir import interpret
from edgec.passes.lib.activations import Stats
from edgec.passes.prune import apply_mask, lm_head_nodes, prune_mask, sparsegpt_prune, wanda_prune, weight_linears
from edgec.pipeline import compile_ir, write_artifact
from edgec.recipes import list_recipes, load_recipe
from helpers import IDS, Calib, logits, raised_graph
from helpers import run_pass_on_copy as run_pass  # (the copy, its PassResult); calibrated passes get Calib()
from tiny import save_tiny


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return raised_graph(tiny_llama)


def pruned_weights(graph):
    return {n.inputs[1].name: np.asarray(graph.weight(n.inputs[1])) for n in weight_linears(graph)}


# ---------------------------------------------------------------- unstructured and N:M
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_unstructured_sparsity_is_exact_per_row(llama, method):
    g, result = run_pass(llama, method, sparsity=0.5)
    ws = pruned_weights(g)
    assert len(ws) == 14 and result["linears"] == 14 and (result["n"], result["m"]) == (0, 0)
    assert result["zeros"] == sum((w == 0).sum() for w in ws.values()) == result["weights"] // 2
    for name, w in ws.items():
        zeros = (w == 0).sum(1)
        assert np.all(np.abs(zeros - w.shape[1] // 2) <= 1), name


def test_sparsegpt_unstructured_sparsity_is_exact_per_layer(llama):
    g, result = run_pass(llama, "sparsegpt", sparsity=0.6)
    for name, w in pruned_weights(g).items():
        blocks = -(-w.shape[1] // 128)
        assert abs((w == 0).sum() - int(w.size * 0.6)) <= blocks + 1, name
    assert result["zeros"] / result["weights"] == pytest.approx(0.6, abs=5e-4)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_2_4_holds_in_every_group_of_four(llama, method):
    g, result = run_pass(llama, method, n=2, m=4)
    assert (result["n"], result["m"]) == (2, 4)
    for name, w in pruned_weights(g).items():
        groups = w.reshape(w.shape[0], -1, 4)
        assert ((groups != 0).sum(-1) <= 2).all(), name
    heads = lm_head_nodes(g)
    assert len(heads) == 1 and (np.asarray(g.weight(next(iter(heads)).inputs[1])) != 0).all()


def test_lm_head_option_prunes_it_too(llama):
    g, _ = run_pass(llama, "magnitude", sparsity=0.5, lm_head=True)
    (head,) = lm_head_nodes(g)
    assert (np.asarray(g.weight(head.inputs[1])) == 0).mean() == pytest.approx(0.5, abs=0.02)


def test_sparsity_zero_changes_nothing(llama):
    g, _ = run_pass(llama, "wanda", sparsity=0.0)
    np.testing.assert_array_equal(logits(g), logits(llama))


def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(llama):
    """||X W^T - X What^T|| on every linear's calibration inputs, summed over the model."""
    nodes = weight_linears(llama)
    acts = {}
    run_calibration(llama, Calib().windows(), lambda n: n in set(nodes), lambda n, ins: acts.__setitem__(n, ins))
    for n_, m in ((0, 0), (2, 4)):
        err = {"magnitude": 0.0, "wanda": 0.0, "sparsegpt": 0.0}
        for node in nodes:
            ins, w = acts[node], np.asarray(llama.weight(node.inputs[1]))
            x = np.concatenate([s[0].reshape(-1, w.shape[1]) for s in ins])
            pruned = {"magnitude": apply_mask(w, prune_mask(np.abs(w), 0.5, n_, m)),
                      "wanda": wanda_prune(w, Stats.of([s[0] for s in ins], sum_sq=True).norms, 0.5, n_, m),
                      "sparsegpt": sparsegpt_prune(w, x.T.astype(np.float64) @ x, 0.5, n_, m)}
            for k, wh in pruned.items():
                assert (wh == 0).mean() >= 0.49
                err[k] += np.linalg.norm(x @ w.T - x @ wh.T)
        assert err["sparsegpt"] < err["wanda"] <= err["magnitude"], (n_, m, err)


def test_sparsegpt_model_output_closer_than_magnitude(llama):
    ref = logits(llama)
    errs = {m: np.abs(logits(run_pass(llama, m, sparsity=0.5)[0]) - ref).mean() for m in ("magnitude", "sparsegpt")}
    assert errs["sparsegpt"] < errs["magnitude"]


@pytest.mark.parametrize("opts, message", [
    ({"sparsity": 1.0}, r"sparsity must be a number in \[0, 1\)"),
    ({"sparsity": -0.1}, r"sparsity must be a number in \[0, 1\)"),
    ({"n": 4, "m": 4}, "needs 0 < n < m, got 4:4"),
    ({"n": 3, "m": 2}, "needs 0 < n < m"),
    ({"n": 2, "m": 0}, "needs 0 < n < m"),
    ({"n": 2, "m": 3}, "multiple of 3"),
])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_bad_options(llama, method, opts, message):
    with pytest.raises(EdgecError, match=message):
        run_pass(llama, method, **opts)


def test_pruning_after_fp16_is_refused(llama):
    g, _ = run_pass(llama, "fp16_weights")
    with pytest.raises(EdgecError, match="run pruning before quantization or fp16_weights"):
        run_pass(g, "magnitude")


def test_sparsegpt_block_must_be_multiple_of_m(llama):
    with pytest.raises(EdgecError, match="block_size"):
        run_pass(llama, "sparsegpt", n=2, m=4, block_size=6)


# ---------------------------------------------------------------- recipes
def test_named_pruning_recipes():
    names = set(list_recipes())
    assert {"magnitude-50", "wanda-50", "wanda-2:4", "sparsegpt-50", "sparsegpt-2:4", "svd",
            "prune-ffn-25"} <= names
    assert load_recipe("wanda-2:4").passes == [("wanda", {"sparsity": 0.5, "n": 2, "m": 4})]
    assert load_recipe("wanda-2:4").needs_calibration and not load_recipe("magnitude-50").needs_calibration


def test_wanda_2_4_composes_with_fp16(tiny_llama, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. It was a sunny day.\n" * 20)
    recipe = load_recipe("wanda-2:4+fp16")
    cfg = edgec.pipeline.calib_config(recipe, text, 4, 32)
    imported, pm = compile_ir(tiny_llama, recipe, calib=cfg)
    assert [r.name for r in pm.records if r.name in ("wanda", "fp16_weights")] == ["wanda", "fp16_weights"]
    halves = [n.inputs[0] for n in imported.graph.nodes if n.op == "cast" and n.inputs[0].dtype == "float16"]
    pruned = [v for v in halves if "proj" in v.name]
    assert len(pruned) == 8  # every 2:4 linear is now stored as fp16 (q/k/v, gate/up merged), still 2:4
    for v in pruned:
        w = np.asarray(imported.graph.weight(v))
        assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    art = write_artifact(imported, pm, tmp_path / "art", device=get_device("host"),
                         backend=get_backend("onnx"), recipe=recipe)
    out = edgec.load(art).logits(IDS)
    assert out.shape == (len(IDS), 75) and np.isfinite(out).all()


# ---------------------------------------------------------------- structured
def _by_name(graph, part):
    (v,) = [v for n, v in graph.weight_values.items() if part in n]
    return v


def test_prune_ffn_shrinks_gated_mlps(llama):
    g, result = run_pass(llama, "prune_ffn", ratio=0.25)
    assert result.counts == {"mlps": 2, "channels_before": 256, "channels_after": 192}
    for i in (0, 1):
        assert _by_name(g, f"layers.{i}.mlp.gate_proj").shape == (96, 64)
        assert _by_name(g, f"layers.{i}.mlp.up_proj").shape == (96, 64)
        assert _by_name(g, f"layers.{i}.mlp.down_proj").shape == (64, 96)
    assert g.num_parameters() == llama.num_parameters() - 2 * 3 * 32 * 64


def _zero(graph, rows=(), cols=(), channels=()):
    """A copy of graph with `channels` zeroed in the rows of weights `rows` and the columns of `cols`."""
    g = copy.deepcopy(graph)
    for part, axis in [(r, 0) for r in rows] + [(c, 1) for c in cols]:
        v = _by_name(g, part)
        w = np.array(g.weight(v))
        w[(slice(None),) * axis + (channels,)] = 0
        g.weights[v.name] = w
    return g


def test_prune_ffn_removes_exactly_the_dead_channels(llama):
    """Channels whose down-projection columns are zero contribute nothing: removing them is exact."""
    g = _zero(llama, cols=["layers.0.mlp.down_proj", "layers.1.mlp.down_proj"], channels=np.arange(0, 128, 4))
    pruned, _ = run_pass(g, "prune_ffn", ratio=0.25)
    np.testing.assert_allclose(logits(pruned), logits(g), atol=1e-5)


def test_prune_ffn_plain_mlp_with_biases(tmp_path):
    opt = raised_graph(save_tiny("opt", tmp_path / "opt"))
    g = _zero(opt, rows=[f"layers.{i}.fc1.{p}" for i in (0, 1) for p in ("weight", "bias")],
              channels=np.arange(1, 128, 4))
    pruned, result = run_pass(g, "prune_ffn", ratio=0.25, multiple_of=1)
    assert (result["channels_before"], result["channels_after"]) == (256, 192)
    assert _by_name(pruned, "layers.1.fc1.bias").shape == (96,)
    assert _by_name(pruned, "layers.1.fc2.weight").shape == (64, 96)
    np.testing.assert_allclose(logits(pruned), logits(g), atol=1e-5)


def test_prune_heads_removes_exactly_the_dead_kv_group(llama):
    """KV group 1 (kv head 1, query heads 2-3) with zero value rows adds nothing: removing it is exact."""
    g = _zero(llama, rows=["layers.0.self_attn.v_proj", "layers.1.self_attn.v_proj"], channels=np.arange(16, 32))
    pruned, result = run_pass(g, "prune_heads", groups=1)
    assert result.counts == {"layers": 2, "heads_before": 8, "heads_after": 4}
    assert _by_name(pruned, "layers.0.self_attn.q_proj").shape == (32, 64)
    assert _by_name(pruned, "layers.0.self_attn.k_proj").shape == (16, 64)
    assert _by_name(pruned, "layers.0.self_attn.o_proj").shape == (64, 32)
    att = [n for n in pruned.nodes if n.op == "attention"][0]
    assert [tuple(v.shape) for v in att.inputs] == [(1, 2, "seq", 16), (1, 1, "seq", 16), (1, 1, "seq", 16)]
    np.testing.assert_allclose(logits(pruned), logits(g), atol=1e-5)


def test_wanda_structured_passes(llama):
    g, result = run_pass(llama, "wanda_ffn", ratio=0.5)
    assert (result["channels_before"], result["channels_after"]) == (256, 128)
    g, result = run_pass(g, "wanda_heads", ratio=0.5)
    assert (result["heads_before"], result["heads_after"]) == (8, 4)


def test_prune_heads_refuses_fused_qkv(tmp_path):
    phi3 = raised_graph(save_tiny("phi3", tmp_path / "phi3"))
    with pytest.raises(EdgecError, match="head pruning cannot handle this model.*fused qkv"):
        run_pass(phi3, "prune_heads", groups=1)
    g, result = run_pass(phi3, "prune_ffn", ratio=0.25)  # fused gate_up is handled
    assert (result["channels_before"], result["channels_after"]) == (256, 192)
    assert _by_name(g, "layers.0.mlp.gate_up_proj").shape == (192, 64)


@pytest.mark.parametrize("opts, message", [
    ({"groups": 2}, "keep at least one"), ({}, "exactly one of groups"), ({"groups": 1, "ratio": 0.5}, "exactly one"),
    ({"ratio": 1.5}, r"ratio must be a number in \[0, 1\)")])
def test_prune_heads_bad_options(llama, opts, message):
    with pytest.raises(EdgecError, match=message):
        run_pass(llama, "prune_heads", **opts)


def test_structured_recipe_onnx_artifact_matches_interpreter(llama, tiny_llama, tmp_path):
    rec = tmp_path / "structured.toml"
    rec.write_text('name = "structured"\n[[passes]]\nname = "prune_ffn"\nratio = 0.25\n'
                   '[[passes]]\nname = "prune_heads"\ngroups = 1\n')
    recipe = load_recipe(str(rec))
    imported, pm = compile_ir(tiny_llama, recipe)
    art = write_artifact(imported, pm, tmp_path / "art", device=get_device("host"),
                         backend=get_backend("onnx"), recipe=recipe)
    g = imported.graph
    ref = logits(g)  # the graph as the backend compiled it (after its prelower phase)
    model = edgec.load(art)
    np.testing.assert_allclose(model.logits(IDS), ref, atol=1e-4)
    assert len(model.generate(IDS[:4], max_new_tokens=6, stop_at_eos=False)) == 6
    assert g.num_parameters() < 0.9 * llama.num_parameters()
