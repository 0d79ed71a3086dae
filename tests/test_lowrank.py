"""Low-rank (SVD / activation-aware SVD) factorization of linears on a tiny Llama."""
import numpy as np
import pytest

from edgec.calibration import run_calibration
from edgec.errors import EdgecError
from edgec.passes import get_pass
from edgec.passes.lib.activations import Stats
from edgec.passes.lowrank import activation_scale, choose_rank, factor
from edgec.passes.prune import weight_linears
from helpers import Calib, logits, raised_graph
from helpers import run_pass_on_copy as run_pass  # (the copy, its PassResult); calibrated passes get Calib()


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return raised_graph(tiny_llama)


def factored(graph):
    """{original weight name: (A shape, B shape)} for every factored linear."""
    out = {}
    for n in graph.nodes:
        a = n.inputs[1] if n.op == "linear" else None
        if a is not None and a.name.endswith(".lowrank_a"):
            b = n.inputs[0].producer.inputs[1]
            assert b.name == a.name.replace(".lowrank_a", ".lowrank_b")
            out[a.name[:-len(".lowrank_a")]] = (tuple(a.shape), tuple(b.shape))
    return out


def test_rank_option_gives_factors_of_that_rank(llama):
    g, result = run_pass(llama, "svd", rank=8)
    shapes = factored(g)
    assert len(shapes) == 14 and (result["factored"], result["linears"], result["rank_min"], result["rank_max"]) \
        == (14, 14, 8, 8)
    originals = {n.inputs[1].name: n.inputs[1].shape for n in weight_linears(llama)}
    for name, (a, b) in shapes.items():
        n, k = originals[name]
        assert a == (n, 8) and b == (8, k)
    assert "lm_head.weight" in g.weights and "lm_head.weight" not in shapes
    assert not any(name in g.weights for name in shapes)  # the dense weights are gone


def test_full_rank_reproduces_the_model(llama):
    g, _ = run_pass(llama, "svd", rank=64, min_saving=-2.0)
    assert len(factored(g)) == 14
    np.testing.assert_allclose(logits(g), logits(llama), atol=1e-4)


def test_min_saving_skips_linears_that_would_grow(llama):
    g, result = run_pass(llama, "svd", rank=40)  # 40*(64+64) >= 64*64 (q, o), 40*(128+64) < 128*64 (MLP)
    shapes = factored(g)
    assert sorted(shapes) == sorted(n.inputs[1].name for n in weight_linears(llama) if ".mlp." in n.inputs[1].name)
    assert (result["factored"], result["linears"], result["rank_min"], result["rank_max"]) == (6, 14, 40, 40)
    assert result["params_after"] == 6 * 40 * (128 + 64) < result["params_before"] == 6 * 128 * 64


def test_energy_picks_the_smallest_rank_that_keeps_it():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22: 72.7%, 90.9%, 95.5%, 100%
    assert [choose_rank(s, energy=e) for e in (0.5, 0.75, 0.8, 0.9, 0.95, 1.0)] == [1, 2, 2, 2, 3, 4]
    assert choose_rank(s, rank=3) == 3 and choose_rank(s, rank=10) == 4


def test_energy_option_on_the_model(llama):
    g, _ = run_pass(llama, "svd", energy=0.6, targets=["mlp"])
    shapes = factored(g)
    assert shapes and all("mlp" in n for n in shapes)
    for name, (a, _) in shapes.items():
        s = np.linalg.svd(np.asarray(llama.weights[name], np.float64), compute_uv=False)
        kept = np.cumsum(s ** 2) / np.sum(s ** 2)
        assert a[1] == int(np.argmax(kept >= 0.6)) + 1


@pytest.fixture(scope="module")
def acts(llama):
    """Calibration inputs of every linear of the dense model."""
    nodes, out = weight_linears(llama), {}
    run_calibration(llama, Calib().windows(), lambda n: n in set(nodes), lambda n, ins: out.__setitem__(n, ins))
    return out


@pytest.mark.parametrize("scaling", ["mean_abs", "rms", "whiten"])
def test_activation_aware_lowers_the_output_error(llama, acts, scaling):
    """||X W^T - X (AB)^T|| on calibration inputs, summed over the linears, at the same rank."""
    plain = aware = 0.0
    for node in weight_linears(llama):
        w = np.asarray(llama.weight(node.inputs[1]))
        x = np.concatenate([s[0].reshape(-1, w.shape[1]) for s in acts[node]])
        a, b = factor(w, rank=12)
        plain += np.linalg.norm(x @ w.T - x @ (a @ b).T)
        stats = Stats.of([s[0] for s in acts[node]], sum_sq=True, abs_sum=True, hessian=True)
        a, b = factor(w, rank=12, scale=activation_scale(stats, scaling, 0.5, 0.01))
        assert a.shape[1] == 12
        aware += np.linalg.norm(x @ w.T - x @ (a @ b).T)
    assert aware < plain


def test_asvd_pass_rewrites_and_beats_plain_svd_end_to_end(llama):
    ref = logits(llama)
    g_plain, _ = run_pass(llama, "svd", rank=12)
    g_aware, result = run_pass(llama, "asvd", rank=12, scaling="whiten")
    assert (result["factored"], result["linears"], result["rank_min"], result["rank_max"]) == (14, 14, 12, 12)
    assert factored(g_aware) == factored(g_plain)
    assert np.abs(logits(g_aware) - ref).mean() < np.abs(logits(g_plain) - ref).mean()


def test_asvd_full_rank_is_exact(llama):
    g, _ = run_pass(llama, "asvd", rank=64, min_saving=-2.0, scaling="mean_abs")
    np.testing.assert_allclose(logits(g), logits(llama), atol=1e-4)


@pytest.mark.parametrize("name, opts, message", [
    ("svd", {}, "exactly one of rank"),
    ("svd", {"rank": 8, "energy": 0.9}, "exactly one of rank"),
    ("svd", {"rank": -1}, "rank must be a positive integer"),
    ("svd", {"energy": 1.5}, "energy must be a fraction"),
    ("svd", {"rank": 8, "targets": ["nothing_like_this"]}, "no linear weight name contains"),
    ("svd", {"rank": 8, "targets": "mlp"}, "targets must be a list"),
    ("asvd", {"rank": 8, "scaling": "max"}, "scaling must be one of"),
])
def test_bad_options(llama, name, opts, message):
    with pytest.raises(EdgecError, match=message):
        run_pass(llama, name, **opts)


def test_svd_declares_no_calibration_and_asvd_does():
    assert not get_pass("svd").needs_calibration and get_pass("asvd").needs_calibration
    with pytest.raises(EdgecError, match="has no option"):
        get_pass("svd").check_options({"activation_aware": True})
