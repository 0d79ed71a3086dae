"""passes/reorder_neurons.py: FFN neurons permuted most-active first, outputs unchanged, profile stored."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgec
from edgec.activations import PROFILE_FILE, SKEW_SPARSITY, ActivationProfile
from edgec.errors import EdgecError
from helpers import IDS
from test_activations import WORDS


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "text.txt"
    path.write_text(" ".join(np.random.default_rng(2).choice(WORDS, 3000)) + "\n")
    return path


def recipe(tmp_path, extra: str = "") -> str:
    path = tmp_path / "reorder.toml"
    path.write_text(f'name = "reorder"\n[calibration]\nsamples = 4\nseqlen = 64\n\n[[passes]]\n'
                    f'name = "reorder_neurons"\n{extra}')
    return str(path)


@pytest.mark.parametrize("arch", ["llama", "opt"])  # SiLU-gated and ReLU FFNs
def test_a_pure_permutation_hot_first(arch, tiny_llama, calib_file, tmp_path):
    from tiny import save_tiny

    model = tiny_llama if arch == "llama" else save_tiny("opt", tmp_path / "tiny-opt")
    dense = edgec.build(model, tmp_path / "dense", backend="reference")
    art = edgec.build(model, tmp_path / "hot", backend="reference", recipe=recipe(tmp_path), calib=calib_file)
    a, b = edgec.load(art).logits(IDS), edgec.load(dense).logits(IDS)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    prof = ActivationProfile.from_json((art / PROFILE_FILE).read_text())
    for layer in prof.layers:  # stored in the new order: most active first
        active = layer.active[layer.sparsities.index(SKEW_SPARSITY)]
        assert (np.diff(active) <= 0).all()
    report = json.loads((art / "report.json").read_text())
    summary = next(p["summary"] for p in report["passes"] if p["pass"] == "reorder_neurons")
    assert "reordered 2 FFNs hot-first" in summary and "static hot set" in summary
    manifest = json.loads((art / "manifest.json").read_text())
    assert PROFILE_FILE in manifest["files"]


def test_a_stored_profile_is_reused_and_another_models_refused(tiny_llama, calib_file, tmp_path):
    from tiny import save_tiny

    first = edgec.build(tiny_llama, tmp_path / "a", backend="reference", recipe=recipe(tmp_path), calib=calib_file)
    stored = tmp_path / "profile.json"
    stored.write_text((first / PROFILE_FILE).read_text())
    # the stored profile is in the reordered order; applied to the original model it still sorts it
    again = edgec.build(tiny_llama, tmp_path / "b", backend="reference",
                        recipe=recipe(tmp_path, f'profile = "{stored}"\n'), calib=calib_file)
    assert edgec.load(again).generate(IDS, 6) == edgec.load(first).generate(IDS, 6)
    other = save_tiny("qwen2", tmp_path / "tiny-qwen2")
    with pytest.raises(EdgecError, match="another model"):
        edgec.build(other, tmp_path / "c", backend="reference", recipe=recipe(tmp_path, f'profile = "{stored}"\n'),
                    calib=calib_file)
    with pytest.raises(EdgecError, match="not found"):
        edgec.build(tiny_llama, tmp_path / "d", backend="reference",
                    recipe=recipe(tmp_path, 'profile = "/nonexistent.json"\n'), calib=calib_file)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()  # no partial artifact


def test_after_down_quantization_it_refuses(tiny_llama, calib_file, tmp_path):
    path = tmp_path / "q.toml"
    path.write_text('name = "q"\n[calibration]\nsamples = 4\nseqlen = 64\n\n[[passes]]\nname = "quantize"\n'
                    'bits = 4\ngroup_size = 32\n\n[[passes]]\nname = "reorder_neurons"\n')
    with pytest.raises(EdgecError):
        edgec.build(tiny_llama, tmp_path / "q", backend="reference", recipe=str(path), calib=calib_file)
