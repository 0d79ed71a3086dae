"""Inputs that would silently build garbage or exhaust memory fail first, with one line.

Weights must match the config (no randomly filled tensors), the tokenizer must
fit the embedding, and sizes (context, weights, calibration, threads) are
checked against the machine before anything big is allocated.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgec import limits
from edgec.calibration import MAX_SAMPLES, CalibConfig, calibration_bytes, run_calibration
from edgec.errors import EdgecError
from edgec.frontend.source import load_hf, resolve_source
from helpers import two_linears
from tiny import ARCHS, VOCAB, save_tiny, tiny_tokenizer

MEMORY_CAP = 6 << 30  # RLIMIT_DATA: a child that regresses into allocating the context dies, not the machine


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def variant(src: Path, dst: Path, config=None, tensors=None) -> Path:
    """A copy of a model folder with config.json and/or the safetensors edited."""
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if tensors:
        sd = load_file(dst / "model.safetensors")
        tensors(sd)
        save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def load_error(path: Path) -> str:
    with pytest.raises(EdgecError) as e:
        load_hf(resolve_source(path))
    return one_line(e)


# 1. weights must match the config ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_loads_cleanly(arch, tmp_path):
    """Tied embeddings and non-persistent buffers are not reported as missing."""
    model, tok = load_hf(resolve_source(save_tiny(arch, tmp_path / arch)))
    assert model.get_input_embeddings().weight.shape[0] == VOCAB


def test_config_with_more_layers_than_the_weights(tiny_llama, tmp_path):
    bad = variant(tiny_llama, tmp_path / "m", config=lambda c: c.update(num_hidden_layers=3))
    msg = load_error(bad)
    assert msg.startswith(f"{bad / 'model.safetensors'} lacks 9 tensors the config needs (model.layers.2."), msg
    assert ", ...)" in msg and "fix config.json or re-download the model" in msg


def test_tensor_missing_from_the_weights(tiny_llama, tmp_path):
    bad = variant(tiny_llama, tmp_path / "m", tensors=lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    assert "lacks 1 tensor the config needs (model.layers.1.mlp.up_proj.weight)" in load_error(bad)


def test_untied_lm_head_missing(tiny_llama, tmp_path):
    assert json.loads((tiny_llama / "config.json").read_text())["tie_word_embeddings"] is False
    bad = variant(tiny_llama, tmp_path / "m", tensors=lambda sd: sd.pop("lm_head.weight"))
    assert "(lm_head.weight)" in load_error(bad)


def test_extra_tensor_in_the_weights(tiny_llama, tmp_path):
    bad = variant(tiny_llama, tmp_path / "m", tensors=lambda sd: sd.update({"model.layers.7.foo": torch.zeros(3)}))
    assert "has 1 tensor the config does not use (model.layers.7.foo)" in load_error(bad)


def test_tensor_with_the_wrong_shape(tiny_llama, tmp_path):
    bad = variant(tiny_llama, tmp_path / "m", config=lambda c: c.update(intermediate_size=96))
    msg = load_error(bad)
    assert "has 6 tensors of the wrong shape (model.layers.0.mlp.down_proj.weight is [64, 128] in the file " \
           "but [64, 96] for the config and 5 more)" in msg, msg


# 2. the tokenizer must fit the embedding --------------------------------------------------------

def test_tokenizer_larger_than_the_embedding(tiny_llama, tmp_path):
    bad = tmp_path / "m"
    shutil.copytree(tiny_llama, bad)
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<tool>", "</tool>"]})
    tok.save_pretrained(bad)
    msg = load_error(bad)
    assert f"has {VOCAB + 2} tokens (ids up to {VOCAB + 1})" in msg and f"only {VOCAB} rows" in msg, msg


def test_padded_embedding_is_fine(tmp_path):
    from tiny import tiny_config
    import transformers

    cfg = tiny_config("llama")
    cfg.vocab_size = VOCAB + 16  # padded to a multiple of 8, as many real models are
    path = tmp_path / "padded"
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    model, _ = load_hf(resolve_source(path))
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + 16


# 3. sizes against the machine -------------------------------------------------------------------

def build_in_child(model: Path, out: Path, *args) -> tuple[str, float]:
    """`edgec build` in a child process with capped memory; returns (stderr, seconds)."""
    def cap():
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP, MEMORY_CAP))

    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "from edgec.cli import main; main()", "build", str(model),
                        "-o", str(out), *args], capture_output=True, text=True, timeout=300, preexec_fn=cap,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - t
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("edgec: error: "), r.stderr[-2000:]
    assert not out.exists()
    return lines[0], seconds


@pytest.mark.parametrize("arch,key", [("llama", "max_position_embeddings"), ("gpt2", "n_positions")])
def test_absurd_context_fails_fast(arch, key, tmp_path):
    model = save_tiny(arch, tmp_path / "src")
    bad = variant(model, tmp_path / "m", config=lambda c: c.update({key: 10**9}))
    line, seconds = build_in_child(bad, tmp_path / "out")
    assert f"{key} = 1,000,000,000 tokens is beyond edgec's limit of 16,777,216" in line, line
    assert seconds < 120


def test_model_too_large_for_memory_fails_fast(tmp_path):
    """A config within the context limit whose weights cannot fit any machine (~400 TB)."""
    model = save_tiny("gpt2", tmp_path / "src")
    bad = variant(model, tmp_path / "m", config=lambda c: c.update(n_positions=1 << 24, n_embd=1 << 20))
    line, seconds = build_in_child(bad, tmp_path / "out")
    assert "building m needs about" in line and "B of memory but this machine has" in line, line
    assert "check the sizes in config.json" in line
    assert seconds < 120


def test_estimate_counts_weights_and_context(tiny_llama, tmp_path):
    from transformers import AutoConfig

    src = resolve_source(tiny_llama)
    cfg = AutoConfig.from_pretrained(tiny_llama)
    base = limits.estimate_build_memory(src, cfg)
    weights = 4 * sum(p.numel() for p in load_hf(src)[0].parameters())
    assert limits.WEIGHT_COPIES * weights <= base < limits.WEIGHT_COPIES * weights + (1 << 20)
    cfg.max_position_embeddings = 1 << 20  # rotary dim 16: about 40 bytes per position and dim
    grown = limits.estimate_build_memory(src, cfg) - base
    assert 600e6 < grown < 800e6, grown


def test_check_memory_message(monkeypatch):
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 4_100_000_000)
    limits.check_memory(4_000_000_000, "building x")
    with pytest.raises(EdgecError) as e:
        limits.check_memory(12_300_000_000, "building x", "use a smaller model")
    assert one_line(e) == ("building x needs about 12.3 GB of memory but this machine has 4.1 GB available; "
                           "use a smaller model")


def test_available_memory_honours_cgroup_limit(tmp_path, monkeypatch):
    (tmp_path / "memory.max").write_text("3000000000\n")
    (tmp_path / "memory.current").write_text("1500000000\n")
    (tmp_path / "memory.stat").write_text("anon 1000000000\nfile 500000000\n")
    monkeypatch.setattr(limits, "CGROUP_DIR", tmp_path)
    assert limits.available_memory_bytes() == 2_000_000_000  # page cache counts as free
    (tmp_path / "memory.max").write_text("max\n")
    assert limits.available_memory_bytes() > 0
    monkeypatch.setattr(limits, "CGROUP_DIR", tmp_path / "absent")
    assert limits.available_memory_bytes() > 0


# 4. calibration limits --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    (dict(samples=10**9), "--calib-samples must be between 1 and 100,000, got 1,000,000,000"),
    (dict(samples=0), "--calib-samples must be between 1 and 100,000, got 0"),
    (dict(seqlen=10**7), "--calib-seqlen must be between 2 and 1,000,000, got 10,000,000"),
    (dict(samples=3.5), "--calib-samples must be a whole number (1..100,000), got 3.5"),
    (dict(samples=True), "--calib-samples must be a whole number (1..100,000), got True"),
    (dict(seqlen="x"), "--calib-seqlen must be a whole number (2..1,000,000), got 'x'"),
    (dict(seed=-1), "calibration seed must be >= 0, got -1"),
])
def test_calib_config_ranges_and_types(kwargs, needle):
    with pytest.raises(EdgecError) as e:
        CalibConfig(**kwargs).check()
    assert one_line(e) == needle


def test_calib_memory_checked_before_loading(monkeypatch):
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 1 << 30)
    CalibConfig(samples=128, seqlen=512).check()
    with pytest.raises(EdgecError) as e:
        CalibConfig(samples=MAX_SAMPLES, seqlen=100_000).check()
    assert one_line(e).startswith("calibrating on 100,000 windows of 100,000 tokens needs about ")
    assert one_line(e).endswith("pass a smaller --calib-samples or --calib-seqlen")


@pytest.mark.parametrize("table,needle", [
    ({"samples": "x"}, "the recipe's [calibration] samples must be a whole number (1..100,000), got 'x'"),
    ({"seqlen": 3.5}, "the recipe's [calibration] seqlen must be a whole number (2..1,000,000), got 3.5"),
    ({"samples": True}, "the recipe's [calibration] samples must be a whole number (1..100,000), got True"),
    ({"seed": "0"}, "the recipe's [calibration] seed must be a whole number (>= 0), got '0'"),
    ({"source": 3}, "the recipe's [calibration] source must be a path string, got 3"),
])
def test_recipe_calibration_values(table, needle):
    with pytest.raises(EdgecError) as e:
        CalibConfig.from_settings(table)
    assert one_line(e) == needle


def test_command_line_wins_over_recipe():
    cfg = CalibConfig.from_settings({"samples": 8, "seqlen": 64, "seed": 3, "source": "a.txt"}, samples=4)
    assert cfg == CalibConfig("a.txt", 4, 64, 3)
    with pytest.raises(EdgecError, match="^--calib-samples must be between"):
        CalibConfig.from_settings({"samples": 8}, samples=10**9)


def test_run_calibration_checks_memory_first(monkeypatch):
    import numpy as np

    g = two_linears()
    windows = [np.arange(5) % 10] * 3
    nodes = [n for n in g.nodes if n.op != "linear" or n.inputs[1].name == "w1"]
    assert calibration_bytes(nodes, windows) == 15 * (16 + 2 * 4 * 8)
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 100)
    visited = []
    with pytest.raises(EdgecError, match="^calibrating on 3 windows of 5 tokens needs about"):
        run_calibration(g, windows, lambda n: n.op == "linear", lambda n, ins: visited.append(n))
    assert visited == []


# 5. threads -------------------------------------------------------------------------------------

def test_useful_threads():
    # the CPUs the process had when edgec was imported (a runtime may pin the process's threads later)
    assert limits.useful_threads(None) is None
    assert limits.useful_threads(1) == 1
    assert limits.useful_threads(10_000) == limits.available_cpus()
    for bad, needle in [(0, "--threads must be >= 1, got 0"), (-2, "--threads must be >= 1, got -2"),
                        (True, "--threads must be a whole number (>= 1), got True"),
                        (2.0, "--threads must be a whole number (>= 1), got 2.0"),
                        ("4", "--threads must be a whole number (>= 1), got '4'")]:
        with pytest.raises(EdgecError) as e:
            limits.useful_threads(bad)
        assert one_line(e) == needle
    with pytest.raises(EdgecError, match="^EDGEC_THREADS must be >= 1"):
        limits.useful_threads(0, "EDGEC_THREADS")
