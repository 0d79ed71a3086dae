"""Hot/cold neuron offloading: the planner (edgec/offload.py), the C lowering (targets/c/offload.py) and the
runtime's cold reads (runtime/offload.c), on tiny models built here.

A ReLU model at threshold 0 must compute what the dense build computes (only exact zeros are skipped); the
dense-streaming mode computes every neuron through the same reads; quantized down projections are stored
again along the model width, so they stay within quantization error of the dense build.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from click.testing import CliRunner

import edgec
from edgec.activations import SPARSITIES, LayerProfile
from edgec.errors import EdgecError
from edgec.offload import MIN_SLOTS, FFNCost, parse_budget, plan_offload
from helpers import IDS
from tiny import tiny_config, tiny_tokenizer

QEMU = shutil.which("qemu-aarch64")
CROSS = shutil.which("aarch64-linux-gnu-gcc")


@pytest.fixture(scope="module")
def relu_llama(tmp_path_factory):
    """A tiny Llama whose MLP is ReLU-gated (ReGLU): half its activations are exact zeros."""
    path = tmp_path_factory.mktemp("relu") / "tiny-relu"
    cfg = tiny_config("llama")
    cfg.hidden_act = "relu"
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dense(relu_llama, tmp_path_factory):
    """recipe -> the dense C build of the ReLU model."""
    out, made = tmp_path_factory.mktemp("dense"), {}

    def get(recipe):
        if recipe not in made:
            made[recipe] = edgec.build(relu_llama, out / recipe, backend="c", recipe=recipe)
        return made[recipe]
    return get


def offload_meta(art) -> dict:
    return json.loads((art / "model" / "c.json").read_text())["offload"]


@pytest.mark.parametrize("mode", ["sparse", "stream"])
def test_relu_at_threshold_zero_computes_what_dense_computes(mode, relu_llama, dense, tmp_path):
    art = edgec.build(relu_llama, tmp_path / mode, backend="c", recipe="fp16", memory_budget="70%", offload=mode)
    meta = offload_meta(art)
    plan = meta["plan"]
    assert plan["mode"] == mode and plan["cold_neurons"] > 0 and not meta["down_requantized"]
    assert plan["resident_mb"] + plan["cache_mb"] <= plan["budget_mb"] + 1e-6
    assert (art / "model" / "cold.bin").stat().st_size == meta["bytes"] > 0
    hot, ref = edgec.load(art), edgec.load(dense("fp16"))
    a, b = hot.logits(IDS), ref.logits(IDS)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    interp = edgec.load(edgec.build(relu_llama, tmp_path / "ref", backend="reference", recipe="fp16")).logits(IDS)
    np.testing.assert_allclose(a, interp, rtol=0, atol=1e-3 * np.abs(interp).max())
    assert hot.generate(IDS, 16) == ref.generate(IDS, 16)
    stats = hot.executor.cold_stats()
    assert stats["ffn_calls"] > 0 and stats["bytes_read"] >= stats["bundles_read"] > 0
    share = stats["neurons_computed"] / stats["neurons"]
    if mode == "stream":
        assert share == 1.0
    else:  # ReLU: about half of the neurons are zero for a token, and those are skipped
        assert 0.3 < share < 0.7


def test_cats_threshold_and_widened_formats_match_the_dense_build(tiny_llama, tmp_path):
    """SiLU with a CATS threshold, 5-bit codes (widened to bytes when read) and fp16 scales."""
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(np.random.default_rng(0).choice(["a", "b c", "the", "dog.", "xyz"], 4000)))
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "q5-cats"\n[calibration]\nsamples = 4\nseqlen = 64\n\n'
                      '[[passes]]\nname = "quantize"\nbits = 5\ngroup_size = 32\nsymmetric = false\nscales = "fp16"\n\n'
                      '[[passes]]\nname = "cats"\nsparsity = 0.5\n')
    ref = edgec.build(tiny_llama, tmp_path / "dense", backend="c", recipe=str(recipe), calib=calib)
    art = edgec.build(tiny_llama, tmp_path / "hc", backend="c", recipe=str(recipe), calib=calib, memory_budget="90%")
    meta = offload_meta(art)
    assert meta["down_requantized"] and meta["plan"]["profiled"]  # --calib: the profile ranks the neurons
    assert (art / "activations.json").is_file()
    fp = edgec.load(edgec.build(tiny_llama, tmp_path / "fp32", backend="c", recipe="fp32")).logits(IDS)
    a, b = edgec.load(art).logits(IDS), edgec.load(ref).logits(IDS)
    # the down projection quantized again along the width: within the recipe's own quantization error
    assert np.abs(a - b).max() < np.abs(b - fp).max()
    hot = edgec.load(art)
    assert hot.executor.cold_stats()["ffn_calls"] == 0  # nothing read before the first token
    hot.logits(IDS)
    s = hot.executor.cold_stats()
    assert 0.2 < s["neurons_computed"] / s["neurons"] < 0.8  # CATS at 50%: about half computed


def test_quantized_offload_is_within_quantization_error(relu_llama, dense, tmp_path):
    art = edgec.build(relu_llama, tmp_path / "int8", backend="c", recipe="int8", memory_budget="90%")
    a = edgec.load(art).logits(IDS)
    b, fp = edgec.load(dense("int8")).logits(IDS), edgec.load(dense("fp16")).logits(IDS)
    assert np.abs(a - b).max() < np.abs(b - fp).max()


def test_cached_reads_give_the_same_result_and_the_cache_is_used(relu_llama, tmp_path):
    art = edgec.build(relu_llama, tmp_path / "hc", backend="c", recipe="fp16", memory_budget="75%")
    be = edgec.load(art).backend
    direct = be.open(art / "model", options={"cold_io": "direct"})
    cached = be.open(art / "model", options={"cold_io": "cached"})
    a, b = direct.sequence(32).run(IDS), cached.sequence(32).run(IDS)
    np.testing.assert_array_equal(a, b)
    assert cached.cold_stats()["direct"] == 0
    # the same token twice: its active cold neurons are in the cache the second time
    seq = cached.sequence(32)
    seq.run(IDS[:1])
    before = cached.cold_stats(reset=True)
    assert before["bundles_read"] > 0
    cached.sequence(32).run(IDS[:1])
    after = cached.cold_stats()
    assert after["cache_hits"] > 0 and after["bundles_read"] < before["bundles_read"]


def test_budget_below_the_resident_minimum_fails_naming_it(relu_llama, tmp_path):
    out = tmp_path / "small"
    with pytest.raises(EdgecError, match=r"below the resident minimum of [\d.]+ (MB|kB).*raise --memory-budget"):
        edgec.build(relu_llama, out, backend="c", recipe="fp16", memory_budget="20%")
    assert not out.exists()  # no partial artifact
    with pytest.raises(EdgecError, match="add --backend c"):
        edgec.build(relu_llama, out, backend="onnx", recipe="fp16", memory_budget="50%")
    with pytest.raises(EdgecError, match="not a size"):
        edgec.build(relu_llama, out, backend="c", recipe="fp16", memory_budget="lots")


@pytest.mark.parametrize("text, want", [("60MB", ("bytes", 60e6)), ("1.5GiB", ("bytes", 1.5 * 2**30)),
                                        ("4096", ("bytes", 4096.0)), ("50%", ("share", 0.5)),
                                        (" 25 % ", ("share", 0.25))])
def test_parse_budget(text, want):
    assert parse_budget(text) == want


@pytest.mark.parametrize("text", ["", "abc", "0%", "150%", "0MB", "-5MB", "5TB", "1e9"])
def test_parse_budget_refuses(text):
    with pytest.raises(EdgecError):
        parse_budget(text)


def _profile(active: np.ndarray, tokens: int = 100) -> LayerProfile:
    """A profile whose neurons fire `active` times in `tokens` (at every stored sparsity)."""
    n = len(active)
    return LayerProfile("h", tokens, active.astype(np.int64), active / tokens, np.ones(n), np.zeros(10),
                        SPARSITIES, [0.0] * len(SPARSITIES), np.tile(active, (len(SPARSITIES), 1)).astype(np.int64))


def test_planner_keeps_the_most_active_neurons_and_shares_the_cache():
    rng = np.random.default_rng(0)
    costs = [FFNCost(f"ffn{i}", 256, bundle=100, slot=120, hot=120, fixed=1000, dense=256 * 130) for i in range(2)]
    profiles = [_profile(rng.integers(0, 100, 256)) for _ in costs]
    plan = plan_offload(costs, other=20_000, budget="80%", mode="sparse", profiles=profiles)
    assert plan.resident + plan.cache <= plan.budget and plan.profiled
    for p, prof in zip(plan.ffns, profiles):
        assert len(p.hot) and len(p.cold) and MIN_SLOTS <= p.slots <= len(p.cold)
        assert prof.fired[p.hot].min() >= prof.fired[p.cold].max()  # hot = the most often active
        assert p.expected_active == pytest.approx(prof.fired[p.cold].sum() / 100)
    stream = plan_offload(costs, other=20_000, budget="80%", mode="stream")
    assert all(p.expected_active == len(p.cold) for p in stream.ffns)
    everything = plan_offload(costs, other=20_000, budget="100%", mode="sparse")
    assert all(len(p.cold) == 0 and p.slots == 0 for p in everything.ffns)
    with pytest.raises(EdgecError, match="resident minimum"):
        plan_offload(costs, other=20_000, budget="25%", mode="sparse")
    with pytest.raises(EdgecError, match="offload mode"):
        plan_offload(costs, other=20_000, budget="80%", mode="lazy")


def test_cli_flags(relu_llama, tmp_path):
    from edgec.cli import main

    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["build", str(relu_llama), "-o", str(out), "--backend", "c", "--recipe", "fp16",
                                    "--memory-budget", "70%", "--offload", "stream", "-q"])
    assert res.exit_code == 0, res.output
    assert offload_meta(out)["plan"]["mode"] == "stream"
    for args, needle in ((["--memory-budget", "50%", "--backend", "onnx"], "add --backend c"),
                         (["--offload", "stream", "--backend", "c"], "needs --memory-budget"),
                         (["--sparsity-budget", "5%", "--backend", "c"], "needs calibration data"),
                         (["--sparsity-budget", "x", "--backend", "c"], "not a share")):
        res = CliRunner().invoke(main, ["build", str(relu_llama), "-o", str(tmp_path / "bad"), "--recipe", "fp16",
                                        "-q", *args])
        assert res.exit_code != 0 and needle in res.output, (args, res.output)


def test_gpu_device_reports_the_split(relu_llama, tmp_path):
    if not CROSS:
        pytest.skip("needs gcc-aarch64-linux-gnu (.ci/run installs it)")
    art = edgec.build(relu_llama, tmp_path / "jetson", device="jetson-orin-nano", backend="c", recipe="fp16",
                      memory_budget="70%")
    split = offload_meta(art)["gpu_split"]
    assert split["device"] == "jetson-orin-nano" and split["estimated"]
    assert split["gpu_bytes_per_token_mb"] > 0 and split["cpu_bytes_per_token_mb"] > 0


@pytest.mark.skipif(not (QEMU and CROSS), reason="needs qemu-user and gcc-aarch64-linux-gnu (.ci/run installs them)")
def test_aarch64_offload_under_qemu_matches_x86(relu_llama, tmp_path):
    def ids(art, runner=()):
        cmd = [*runner, str(art / "model" / "edgec-run"), str(art), "--ids", ",".join(map(str, IDS)), "-n", "12",
               "--stats"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "cold: " in proc.stderr and "bundles read" in proc.stderr
        return [int(t) for t in proc.stdout.split()]

    x86 = edgec.build(relu_llama, tmp_path / "x86", backend="c", recipe="int8", memory_budget="90%")
    arm = edgec.build(relu_llama, tmp_path / "arm", device="rpi5", backend="c", recipe="int8", memory_budget="90%")
    assert ids(arm, [QEMU]) == ids(x86)


def test_predictor_reads_only_candidates_and_misses_little(relu_llama, dense, tmp_path):
    """passes/predictor.py: the gate leaves memory, candidates are read with their gate rows."""
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(np.random.default_rng(0).choice(["a", "b c", "the", "dog.", "xyz", "Hello"], 6000)))
    recipe = tmp_path / "p.toml"
    recipe.write_text('name = "pred"\n[calibration]\nsamples = 16\nseqlen = 128\n\n[[passes]]\nname = "fp16_weights"\n'
                      '\n[[passes]]\nname = "predictor"\nrank = 0.25\nrecall = 0.99\n')
    art = edgec.build(relu_llama, tmp_path / "pred", backend="c", recipe=str(recipe), calib=calib, memory_budget="60%")
    meta = offload_meta(art)
    preds = meta["predictors"]
    assert len(preds) == 2 and all(p["rank"] == 16 and p["recall"] > 0.97 for p in preds)
    assert all(p["active"] < p["candidates"] < 1 for p in preds)
    report = json.loads((art / "report.json").read_text())
    assert any(r["pass"] == "predictor" and "held-out recall" in r["summary"] for r in report["passes"])
    hot, ref = edgec.load(art), edgec.load(dense("fp16"))
    a, b = hot.logits(IDS), ref.logits(IDS)
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()  # a missed active neuron is the only error
    s = hot.executor.cold_stats()
    assert s["neurons_computed"] < s["neurons"]  # only candidates
    # the same recipe without a memory budget computes the dense model: the graph is unchanged
    plain = edgec.build(relu_llama, tmp_path / "plain", backend="c", recipe=str(recipe), calib=calib)
    np.testing.assert_array_equal(edgec.load(plain).logits(IDS), b)


def test_predictor_needs_a_relu_model(tiny_llama, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("some text to calibrate on. " * 200)
    recipe = tmp_path / "p.toml"
    recipe.write_text('name = "pred"\n[calibration]\nsamples = 2\nseqlen = 64\n\n[[passes]]\nname = "predictor"\n')
    with pytest.raises(EdgecError, match="needs ReLU-gated FFNs"):
        edgec.build(tiny_llama, tmp_path / "x", backend="c", recipe=str(recipe), calib=calib)


@pytest.mark.slow
def test_real_model_holds_its_budget(tmp_path):
    """SmolLM2 (its Q4_1 blocks) at 75% of its weights, dense streaming: edgec-run's peak RSS stays within the
    budget plus the KV cache and the process's own memory, well under the dense build's, and it answers the same."""
    def run(art):
        cmd = ["/usr/bin/time", "-f", "maxrss_kb %M", str(art / "model" / "edgec-run"), str(art), "-p",
               "The capital of France is", "-n", "8", "--context", "256", "--stats"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, int(proc.stderr.rsplit("maxrss_kb ", 1)[1].split()[0]) * 1e3

    if not Path("/usr/bin/time").exists():
        pytest.skip("needs GNU time")
    dense = edgec.build(None, tmp_path / "dense", backend="c", recipe="source")
    art = edgec.build(None, tmp_path / "hc", backend="c", recipe="source", memory_budget="75%", offload="stream")
    plan = offload_meta(art)["plan"]
    text_dense, rss_dense = run(dense)
    text, rss = run(art)
    assert text == text_dense and "Paris" in text
    kv = 30 * 2 * 3 * 64 * 4 * 256  # SmolLM2's fp32 KV cache at 256 rows
    assert rss <= plan["budget_mb"] * 1e6 + kv + 30e6, (rss, plan)
    assert rss < rss_dense - 0.15 * plan["weights_mb"] * 1e6


def test_a_damaged_cold_file_is_refused(relu_llama, tmp_path):
    art = edgec.build(relu_llama, tmp_path / "hc", backend="c", recipe="fp16", memory_budget="70%")
    cold = art / "model" / "cold.bin"
    data = cold.read_bytes()
    cold.write_bytes(data[: len(data) // 2])
    with pytest.raises(edgec.ArtifactError):
        edgec.load(art)  # the manifest's hashes
    # the library on its own (edgec-run: no manifest) refuses a cold file shorter than the model needs
    proc = subprocess.run([str(art / "model" / "edgec-run"), str(art), "--ids", "5,17,33", "-n", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cannot read the cold weights" in proc.stderr and "rebuild" in proc.stderr
    cold.unlink()
    proc = subprocess.run([str(art / "model" / "edgec-run"), str(art), "--ids", "5,17,33", "-n", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cold.bin" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
