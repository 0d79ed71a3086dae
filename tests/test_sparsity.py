"""Activation sparsity without retraining (passes/sparsity.py: cats, teal) on tiny random models:
the target sparsity is reached on the calibration windows, a ReLU model's threshold 0 is exactly
dense, the budget search stays within its budget, and the C and ONNX backends run the result."""
import copy
import dataclasses

import numpy as np
import pytest

import edgec
from edgec.backends import get_backend
from edgec.devices import get_device
from edgec.errors import EdgecError
from edgec.ir import interpret
from edgec.passes.lib.activations import Stats, collect
from edgec.passes.lib.ffn import find_ffns
from edgec.passes.sparsity import STEPS
from edgec.pipeline import calib_config, compile_ir, write_artifact
from edgec.recipes import load_recipe
from helpers import IDS, Calib, check_prefill_and_decode, logits, model_feeds, raised_graph, write_calib
from helpers import run_pass_on_copy as run_pass  # (the copy, its PassResult); calibrated passes get Calib()
from tiny import save_tiny


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return raised_graph(tiny_llama)


@pytest.fixture(scope="module")
def opt(tmp_path_factory):
    """OPT: fc1 -> relu -> fc2, exact zeros in the middle."""
    return raised_graph(save_tiny("opt", tmp_path_factory.mktemp("opt") / "hf"))


def zeroed(graph) -> float:
    """The fraction of exact zeros, on Calib()'s windows, of what is thresholded: the outputs of the glus
    with a threshold (act(gate) zeroed makes act(gate) * up zero) and of the sparsify nodes."""
    values = [n.output for n in graph.nodes if n.op == "sparsify" or n.op == "glu" and n.attrs["threshold"] > 0]
    stats = collect(graph, Calib().windows(), {v: Stats(fire=0.0, fire_abs=True) for v in values})
    fired = sum(s.fired.sum() for s in stats.values())
    return 1 - fired / sum(s.count * s.channels for s in stats.values())


def nll(graph, windows) -> float:
    """Mean NLL of every next token of `windows`, from the interpreter's logits in float64."""
    total = count = 0
    for w in windows:
        z = logits(graph, list(w))[:-1].astype(np.float64)
        lp = z - z.max(-1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        total -= lp[np.arange(len(w) - 1), w[1:]].sum()
        count += len(w) - 1
    return total / count


class Given(Calib):
    """A PassContext with these calibration windows."""

    def __init__(self, windows):
        super().__init__()
        self._w = list(windows)


@pytest.fixture(scope="module")
def sampled(tiny_llama):
    """8 windows of 48 tokens sampled from tiny_llama itself: text it predicts (perplexity ~25, not the ~250 of
    random ids), so that zeroing activations costs perplexity as on a trained model."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    torch.manual_seed(0)
    start = torch.tensor(IDS[:8])[:, None]
    with torch.no_grad():
        out = model.generate(start, do_sample=True, max_new_tokens=47, min_new_tokens=47, pad_token_id=0)
    return [np.asarray(w) for w in out.numpy()]


# ---------------------------------------------------------------- target sparsity
@pytest.mark.parametrize("method, sites", [("cats", 2), ("teal", 8)])
@pytest.mark.parametrize("target", [0.25, 0.5, 0.7])
def test_target_sparsity_is_reached_on_calibration_windows(llama, method, sites, target):
    g, result = run_pass(llama, method, sparsity=target)
    assert result["sites"] == sites and result["target"] == target and result["zero_thresholds"] == 0
    assert abs(result["sparsity"] - target) <= 0.01  # what the histograms say
    assert abs(zeroed(g) - target) <= 0.03  # what the rewritten graph does
    ops = g.op_counts()
    if method == "cats":
        assert "sparsify" not in ops and all(n.attrs["threshold"] > 0 for n in g.nodes if n.op == "glu")
    else:  # q/k/v and gate/up share their input's node: 2 layers x (qkv, o, gate/up, down)
        assert ops["sparsify"] == 8 and len(find_ffns(g)) == 2  # the FFN matcher sees through sparsify


@pytest.mark.parametrize("method", ["cats", "teal"])
def test_sparsity_zero_changes_nothing(llama, method):
    g, result = run_pass(llama, method, sparsity=0.0)
    assert result["zero_thresholds"] == result["sites"]
    assert str(g) == str(llama)
    np.testing.assert_array_equal(logits(g), logits(llama))


def test_relu_model_uses_its_exact_zeros(opt):
    g, result = run_pass(opt, "cats", sparsity=0.3)  # the ReLU's zeros alone are ~48%
    assert result["zero_thresholds"] == result["sites"] == 2 and result["sparsity"] > 0.4
    assert str(g) == str(opt)
    np.testing.assert_array_equal(logits(g), logits(opt))
    g, result = run_pass(opt, "teal", sparsity=0.3)  # fc2's inputs keep threshold 0, the others do not
    assert result["zero_thresholds"] == 2 and g.op_counts()["sparsify"] == 6
    g, result = run_pass(opt, "cats", sparsity=0.6)  # beyond the zeros: a real threshold
    assert result["zero_thresholds"] == 0 and abs(zeroed(g) - 0.6) <= 0.03


# ---------------------------------------------------------------- budget
@pytest.mark.parametrize("method", ["cats", "teal"])
def test_budget_search_finds_the_largest_sparsity_within_it(llama, sampled, method):
    budget, top = 0.05, 0.9
    _, result = run_pass(llama, method, sparsity=top, budget=budget, ctx=Given(sampled))
    first, held = Given(sampled[:6]), sampled[6:]  # the last quarter is held out; the thresholds use the rest
    assert result["held_out"] == 2 and result["evaluations"] == STEPS + 2
    target = result["target"]
    assert 0.05 < target < top
    dense = nll(llama, held)
    assert result["perplexity_dense"] == pytest.approx(np.exp(dense), rel=1e-6)
    g, again = run_pass(llama, method, sparsity=target, ctx=first)
    assert again["target"] == target
    within = nll(g, held)
    assert result["perplexity"] == pytest.approx(np.exp(within), rel=1e-6)
    assert within <= dense + np.log1p(budget)
    g, _ = run_pass(llama, method, sparsity=target + top / 2 ** STEPS, ctx=first)
    assert nll(g, held) > dense + np.log1p(budget)  # one bisection step further is over the budget


# ---------------------------------------------------------------- backends
@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    return write_calib(tmp_path_factory.mktemp("calib") / "calib.txt")


def _compiled(tiny_llama, folder, calib_file, method):
    path = folder / f"{method}.toml"
    path.write_text(f'name = "{method}-50"\n[[passes]]\nname = "{method}"\nsparsity = 0.5\n')
    recipe = load_recipe(str(path))
    imported, pm = compile_ir(tiny_llama, recipe, calib=calib_config(recipe, calib_file, 8, 32))
    return recipe, imported, pm


@pytest.mark.parametrize("method", ["cats", "teal"])
def test_backends_run_the_sparsified_model_like_the_interpreter(tiny_llama, tmp_path, calib_file, method):
    recipe, imported, pm = _compiled(tiny_llama, tmp_path, calib_file, method)
    graph = imported.graph
    dense = compile_ir(tiny_llama, "fp32")[0].graph
    linears = lambda g: sum(n.op == "linear" for n in g.nodes)  # noqa: E731
    assert linears(graph) == linears(dense) == 9  # q/k/v and gate/up still fused
    if method == "cats":
        assert sum(n.op == "glu" and n.attrs["threshold"] > 0 for n in graph.nodes) == 2
    else:
        assert graph.op_counts()["sparsify"] == 8
    ref = interpret(graph, model_feeds(graph, IDS))["logits"][0]
    assert np.abs(ref - interpret(dense, model_feeds(dense, IDS))["logits"][0]).max() > 1e-2  # it does something
    tol = 1e-4 * float(np.abs(ref).max())
    for backend in ("c", "onnx"):
        copied = dataclasses.replace(imported, graph=copy.deepcopy(graph))
        art = write_artifact(copied, pm, tmp_path / backend, device=get_device("host"),
                             backend=get_backend(backend), recipe=recipe)
        check_prefill_and_decode(copied.graph, art, tol=tol)  # the graph after the backend's prelower passes
        out = edgec.load(art).logits(IDS)
        assert np.abs(out - ref).max() <= tol, backend


# ---------------------------------------------------------------- bad options
@pytest.mark.parametrize("opts, match", [
    (dict(sparsity=1.0), "sparsity must be a number in \\[0, 1\\)"),
    (dict(sparsity=-0.1), "sparsity must be"),
    (dict(sparsity="half"), "sparsity must be"),
    (dict(sparsity=True), "sparsity must be"),
    (dict(budget=-0.05), "budget must be a number >= 0"),
    (dict(budget=float("nan")), "budget must be"),
])
@pytest.mark.parametrize("method", ["cats", "teal"])
def test_bad_options_are_one_line_errors(llama, method, opts, match):
    with pytest.raises(EdgecError, match=f"{method}: {match}") as e:
        run_pass(llama, method, **opts)
    assert "\n" not in str(e.value)


def test_a_budget_needs_held_out_windows(llama):
    with pytest.raises(EdgecError, match="at least 2 calibration windows") as e:
        run_pass(llama, "cats", budget=0.05, ctx=Given(Calib().windows()[:1]))
    assert "\n" not in str(e.value)


def test_a_model_without_mlp_is_refused():
    from helpers import two_linears

    with pytest.raises(EdgecError, match="cats: found no MLP"):  # w2 is the logits projection, not a down
        run_pass(two_linears(), "cats", sparsity=0.5)
