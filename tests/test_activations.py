"""The activation profile of FFN neurons (edgec.activations) and `edgec activations`, on tiny random models."""
import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgec import activations as act
from edgec.calibration import token_windows
from edgec.cli import main
from edgec.errors import EdgecError
from edgec.passes import CANONICALIZE, RAISE, PassManager
from edgec.passes.lib.activations import collect
from edgec.passes.lib.ffn import find_ffns

WORDS = "the of and a in to is was he for it with as his on be at by had are but from or have an they".split()
SAMPLES, SEQLEN = 3, 48


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "text.txt"
    path.write_text(" ".join(np.random.default_rng(1).choice(WORDS, 3000)) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_opt(tmp_path_factory):
    """A tiny random OPT folder: its FFN is fc1 -> ReLU -> fc2, so h has exact zeros."""
    from tiny import save_tiny

    return save_tiny("opt", tmp_path_factory.mktemp("hf") / "tiny-opt")


def raised(folder):
    from edgec.frontend import import_model, model_hash

    imported = import_model(str(folder))
    pm = PassManager()
    pm.run(imported.graph, CANONICALIZE)
    pm.run(imported.graph, RAISE)
    return imported, model_hash(imported.source)


@pytest.fixture(scope="module")
def llama(tiny_llama, calib_file):
    """(imported, sha256, windows, profile) of the tiny Llama (SiLU-gated FFN)."""
    imported, sha = raised(tiny_llama)
    windows = token_windows(calib_file.read_text(), imported.tokenizer, SAMPLES, SEQLEN)
    return imported, sha, windows, act.profile_activations(imported.graph, windows, sha256=sha)


@pytest.fixture(scope="module")
def opt(tiny_opt, calib_file):
    imported, sha = raised(tiny_opt)
    windows = token_windows(calib_file.read_text(), imported.tokenizer, SAMPLES, SEQLEN)
    return imported, sha, windows, act.profile_activations(imported.graph, windows, sha256=sha)


def test_one_layer_per_ffn_with_its_neuron_count(llama):
    imported, sha, _, p = llama
    ffns = find_ffns(imported.graph)
    assert len(ffns) == 2 == len(p.layers)
    assert [layer.name for layer in p.layers] == [f.hidden.name for f in ffns]
    assert [layer.neurons for layer in p.layers] == [f.size for f in ffns] == [128, 128]
    assert all(layer.tokens == SAMPLES * SEQLEN for layer in p.layers)
    assert p.model == {"sha256": sha, "architecture": "llama", "layers": 2, "neurons": [128, 128]}
    assert p.calibration["tokens"] == SAMPLES * SEQLEN


def test_streamed_statistics_equal_the_activations_themselves(opt):
    """fired / mean / max exactly, and sparsities and per-neuron counts at the thresholds within a bin."""
    imported, _, windows, p = opt

    class Keep:
        def __init__(self):
            self.rows = []

        def add(self, x):
            self.rows.append(np.abs(np.asarray(x, np.float64).reshape(-1, x.shape[-1])))

    kept = collect(imported.graph, windows, {f.hidden: Keep() for f in find_ffns(imported.graph)})
    for layer, keep in zip(p.layers, kept.values()):
        a = np.concatenate(keep.rows)
        assert np.array_equal(layer.fired, (a > 0).sum(0))
        np.testing.assert_allclose(layer.mean_abs, a.mean(0), rtol=1e-9)
        np.testing.assert_allclose(layer.abs_max, a.max(0), rtol=1e-9)
        assert layer.hist.sum() == a.size
        for s, t in zip(layer.sparsities, layer.thresholds):
            exact = (a <= t).mean()
            if t == 0:  # the zeros alone reach s: the sparsity is the natural one
                assert exact >= s and layer.sparsity(0) == exact
            else:  # one bin is a factor 10**0.1: the interpolation is off by at most that bin's share
                assert abs(exact - s) < 0.03, (s, t, exact)
                assert abs(layer.sparsity(t) - s) < 1e-9
            counts = layer.active[layer.sparsities.index(s)]
            assert np.abs(counts - (a > t).sum(0)).max() <= 0.05 * len(a) + 1


def test_shares_are_monotone_and_in_unit_interval(llama, opt):
    for p in (llama[3], opt[3]):
        for layer in p.layers:
            m10, m20, m50 = (layer.mass_share(f) for f in act.TOP)
            assert 0.1 <= m10 <= m20 <= m50 <= 1  # the top k carry at least their k/n
            assert 0.2 <= m20 and 0.5 <= m50
            curve = layer.mass_curve()
            assert np.all(np.diff(curve) >= -1e-12) and curve[-1] == pytest.approx(1.0)
            assert list(layer.thresholds) == sorted(layer.thresholds) and layer.thresholds[-1] > 0
            sp = [layer.sparsity(t) for t in (0, *layer.thresholds, 1e9)]
            assert sp == sorted(sp) and 0 <= sp[0] and sp[-1] == 1.0
            assert 0.2 - 1e-9 <= layer.active_share() <= 1


def test_relu_has_exact_zeros_and_silu_does_not(llama, opt):
    for layer in opt[3].layers:  # a random ReLU FFN: about half the pre-activations are negative
        assert 0.2 < layer.zero_fraction < 0.8
        assert layer.firing_rate.min() < 1 and layer.thresholds[0] == 0.0
        assert layer.sparsity(0) == pytest.approx(layer.zero_fraction)
    for layer in llama[3].layers:
        assert layer.zero_fraction == 0.0 and np.all(layer.firing_rate == 1.0)
        assert layer.sparsity(0) == 0.0 and layer.thresholds[0] > 0


def test_json_round_trip(llama):
    p = llama[3]
    q = act.ActivationProfile.from_json(p.to_json())
    assert q.summary()["verdict"]["static_hot_set_pays"] == p.summary()["verdict"]["static_hot_set_pays"]
    assert q.model == p.model and q.calibration == p.calibration
    for a, b in zip(p.layers, q.layers):
        assert a.name == b.name and a.tokens == b.tokens and a.thresholds == b.thresholds
        assert np.array_equal(a.fired, b.fired) and np.array_equal(a.hist, b.hist)
        np.testing.assert_allclose(b.mean_abs, a.mean_abs, rtol=1e-5)
        np.testing.assert_allclose(b.abs_max, a.abs_max, rtol=1e-5)
        assert np.abs(b.active - a.active).max() <= 0.5
        assert b.active_share() == pytest.approx(a.active_share(), abs=1e-3)
        assert b.mass_share(0.2) == pytest.approx(a.mass_share(0.2), rel=1e-5)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format=99), "format 99"),
    (lambda d: d["layers"][0].update(fired=[1, 2]), "inconsistent sizes"),
    (lambda d: d["layers"][1].pop("hist"), "malformed"),
    (lambda d: d.update(edges={"start_log10": -6, "per_decade": 10, "count": 5}), "histogram bins"),
])
def test_malformed_json_is_one_error(llama, edit, message):
    d = json.loads(llama[3].to_json())
    edit(d)
    with pytest.raises(EdgecError, match=message):
        act.ActivationProfile.from_json(json.dumps(d))
    with pytest.raises(EdgecError, match="malformed"):
        act.ActivationProfile.from_json("[1, 2]")


def test_check_matches_refuses_another_models_profile(llama, opt):
    imported, sha, _, p = llama
    act.check_matches(p, imported.graph, sha)  # its own: fine
    act.check_matches(p, imported.graph)  # no hash at hand: shapes only
    with pytest.raises(EdgecError, match="another model .SHA-256"):
        act.check_matches(opt[3], imported.graph, sha)  # same shapes (2 x 128), another model
    fewer = copy.copy(p)
    fewer.layers = p.layers[:1]
    with pytest.raises(EdgecError, match="has 1 FFN layers, this model 2"):
        act.check_matches(fewer, imported.graph)
    d = json.loads(p.to_json())
    d["layers"][1].update(fired=d["layers"][1]["fired"][:100], mean_abs=d["layers"][1]["mean_abs"][:100],
                          abs_max=d["layers"][1]["abs_max"][:100],
                          active=[a[:100] for a in d["layers"][1]["active"]])
    with pytest.raises(EdgecError, match="FFN layer 1 has 100 neurons in the activation profile and 128"):
        act.check_matches(act.ActivationProfile.from_json(json.dumps(d)), imported.graph)


def test_verdict_follows_the_measured_skew(llama):
    p = llama[3]
    pays, why = act.static_hot_set_verdict(p)
    share = np.mean([layer.active_share() for layer in p.layers])
    assert isinstance(pays, bool) and pays == (share >= act.HOT_SET_PAYS)
    assert f"{share:.1%}" in why and "2 layers" in why
    skewed = copy.deepcopy(p)  # the same layers, but 10% of the neurons carry nearly every active event
    for layer in skewed.layers:
        layer.active[:] = 1.0
        layer.active[:, :13] = 1000.0
    pays, why = act.static_hot_set_verdict(skewed)
    assert pays and "at least 50%" in why
    assert skewed.layers[0].active_share() > 0.9


def test_cli_prints_table_and_writes_png(tiny_llama, calib_file, tmp_path):
    png = tmp_path / "act.png"
    r = CliRunner().invoke(main, ["activations", str(tiny_llama), "--calib", str(calib_file), "--samples", "2",
                                  "--seqlen", "32", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "neurons"])
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [row[:2] for row in rows] == [["0", "128"], ["1", "128"]]
    assert "mass20" in lines[header] and "t@50%" in lines[header]
    assert lines[-1].startswith("static hot set: ") and "top 20% of neurons carry" in lines[-1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert len(np.unique(matplotlib.image.imread(png))) > 1


def test_cli_json(tiny_llama, calib_file):
    r = CliRunner().invoke(main, ["activations", str(tiny_llama), "--calib", str(calib_file), "--samples", "2",
                                  "--seqlen", "32", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert len(d["layers"]) == 2 and d["layers"][0]["neurons"] == 128
    assert set(d["layers"][0]["mass_share"]) == {"top10", "top20", "top50"}
    assert d["calibration"] == {"windows": 2, "tokens": 64, "source": calib_file.name, "seqlen": 32}
    assert isinstance(d["verdict"]["static_hot_set_pays"], bool) and "%" in d["verdict"]["reason"]


def test_cli_reads_an_artifacts_profile_or_profiles_its_source(llama, tiny_llama, calib_file, tmp_path):
    import fake_artifact

    _, sha, _, p = llama
    src = {"kind": "folder", "path": str(tiny_llama), "name": "tiny", "architecture": "llama", "sha256": sha}
    stored = fake_artifact.write(tmp_path / "stored", files={act.PROFILE_FILE: p.to_json().encode()}, source=src)
    r = CliRunner().invoke(main, ["activations", str(stored), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["calibration"]["windows"] == SAMPLES  # the stored one, not a new measure

    bare = fake_artifact.write(tmp_path / "bare", source=src)  # no profile: its source model is profiled
    r = CliRunner().invoke(main, ["activations", str(bare), "--calib", str(calib_file), "--samples", "1",
                                  "--seqlen", "16", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["model"]["sha256"] == sha and d["calibration"]["windows"] == 1

    other = fake_artifact.write(tmp_path / "other", files={act.PROFILE_FILE: p.to_json().encode()})
    r = CliRunner().invoke(main, ["activations", str(other)])
    assert r.exit_code == 2 and "profile of another model" in r.stderr
    lost = fake_artifact.write(tmp_path / "lost")  # source /nowhere
    r = CliRunner().invoke(main, ["activations", str(lost)])
    assert r.exit_code == 2 and "holds no activation profile" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--calib", "/nonexistent/text.txt"], "does not exist"),
    (["--samples", "0"], "--samples must be between 1"),
    (["--seqlen", "1"], "--seqlen must be between 2"),
    (["--plot", "/nonexistent/dir/a.png"], "folder /nonexistent/dir does not exist"),
    (["--seqlen", "100000"], "longer than the model's context"),
])
def test_cli_bad_input_is_one_line(tiny_llama, calib_file, args, message):
    base = ["activations", str(tiny_llama), "-q"] + ([] if "--calib" in args else ["--calib", str(calib_file)])
    r = CliRunner().invoke(main, base + args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("edgec: error: ") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_cli_missing_model_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["activations", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.stderr.startswith("edgec: error: ") and "does not exist" in r.stderr
