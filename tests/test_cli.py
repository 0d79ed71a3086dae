"""The command line, in process (click's CliRunner), on a tiny model."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import edgec
from edgec.cli import main


@pytest.fixture()
def cli():
    return CliRunner()


def test_build_json_and_inspect(cli, tiny_llama, tmp_path):
    out = tmp_path / "a"
    r = cli.invoke(main, ["build", str(tiny_llama), "-o", str(out), "--recipe", "fp16", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["artifact"] == str(out) and info["recipe"] == "fp16" and info["backend"] == "onnx"
    r = cli.invoke(main, ["inspect", str(out)])
    assert r.exit_code == 0
    assert "fp16" in r.stdout and "rms_norm" in r.stdout and "model/model.onnx.data" in r.stdout
    m = json.loads(cli.invoke(main, ["inspect", str(out), "--json"]).stdout)
    assert m["source"]["architecture"] == "llama" and m["graph"]["kv_layers"] == 2
    assert len(m["source"]["sha256"]) == 64
    assert all(len(e["sha256"]) == 64 for e in m["files"].values())


def test_build_shows_progress_and_dump_ir(cli, tiny_llama, tmp_path):
    r = cli.invoke(main, ["build", str(tiny_llama), "-o", str(tmp_path / "a"), "--dump-ir", str(tmp_path / "ir")])
    assert r.exit_code == 0
    assert "raise_rms_norm" in r.stderr and "compiling for host" in r.stderr
    dumps = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert dumps[0].startswith("01-") and any("kv_cache" in d for d in dumps)
    assert any(d.endswith("-gqa.txt") for d in dumps)  # the ONNX backend's prelower phase is dumped too
    assert "gqa_packed(" in (tmp_path / "ir" / dumps[-1]).read_text()


def test_run_greedy_prints_continuation_matching_api(cli, tiny_artifact):
    r = cli.invoke(main, ["run", str(tiny_artifact), "-p", "hello there", "-n", "12"])
    assert r.exit_code == 0, r.output
    model = edgec.load(tiny_artifact)
    ids = model.encode("hello there")
    new = model.generate(ids, 12)
    expected = model.tokenizer.decode([t for t in new if t not in model.eos_token_ids], skip_special_tokens=True)
    assert r.stdout == expected + "\n"
    assert "hello there" not in r.stdout or expected.startswith("hello there")


def test_run_sampling_is_seeded(cli, tiny_artifact):
    args = ["run", str(tiny_artifact), "-p", "abc", "-n", "10", "--temperature", "1.0", "--top-k", "20",
            "--top-p", "0.9"]
    a = cli.invoke(main, args + ["--seed", "1"]).stdout
    b = cli.invoke(main, args + ["--seed", "1"]).stdout
    assert a == b


def test_run_chat_applies_template(cli, tiny_artifact):
    model = edgec.load(tiny_artifact)
    ids = model.encode("hi", chat=True)
    assert model.tokenizer.decode(ids) == "user: hi\nassistant: "
    r = cli.invoke(main, ["run", str(tiny_artifact), "-p", "hi", "--chat", "-n", "4", "--stats"])
    assert r.exit_code == 0 and "tokens/s" in r.stderr


def test_devices_and_recipes(cli):
    r = cli.invoke(main, ["devices"])
    for name in ["host", "x86-avx2", "rpi5", "pixel8", "jetson-orin-nano", "jetson-agx-orin", "cuda"]:
        assert name in r.stdout
    devs = json.loads(cli.invoke(main, ["devices", "--json"]).stdout)
    assert {d["name"] for d in devs} >= {"rpi5", "cuda"}
    r = cli.invoke(main, ["recipes"])
    assert "fp32" in r.stdout and "fp16" in r.stdout


def test_recipe_file(cli, tiny_llama, tmp_path):
    recipe = tmp_path / "half.yaml"
    recipe.write_text("name: half\ndescription: test\npasses:\n  - name: fp16_weights\n")
    r = cli.invoke(main, ["build", str(tiny_llama), "-o", str(tmp_path / "a"), "--recipe", str(recipe), "-q"])
    assert r.exit_code == 0, r.output
    m = edgec.load(tmp_path / "a").manifest
    assert m["recipe"]["name"] == "half" and m["recipe"]["passes"] == [{"name": "fp16_weights"}]


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_silences_library_progress_bars(quiet):
    """-q also stops bars libraries draw with tqdm directly (transformers' GGUF reader), in a
    fresh process as the CLI runs: tqdm reads TQDM_DISABLE when it is first imported."""
    code = (f"from edgec.cli import _quiet_libraries; _quiet_libraries({quiet}); from tqdm.auto import tqdm; "
            "[_ for _ in tqdm(range(3), desc='a-bar')]")
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # in-process CLI tests may have set it
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stderr
    assert ("a-bar" in err) is not quiet, err


def test_python_api_logits_shape(tiny_artifact):
    model = edgec.load(tiny_artifact)
    out = model.logits([1, 2, 3, 4])
    assert out.shape == (4, model.tokenizer.vocab_size)


def test_profile_splits_decode_time_per_op(cli, tiny_artifact):
    r = cli.invoke(main, ["profile", str(tiny_artifact), "--prompt-tokens", "8", "--new-tokens", "5", "--json"])
    assert r.exit_code == 0, r.output
    p = json.loads(r.output)
    assert p["prompt_tokens"] == 8 and p["decode_tok_s"] > 0 and p["prefill_tok_s"] > 0
    ops = {o["op"]: o for o in p["decode_ops"]}
    assert ops["GroupQueryAttention"]["calls"] == 2  # one per layer and token
    assert abs(sum(o["share"] for o in p["decode_ops"]) - 1) < 1e-6
    assert p["decode_kernel_ms"] > 0 and p["huge_page_mb"] >= 0
    text = cli.invoke(main, ["profile", str(tiny_artifact), "--prompt-tokens", "8", "--new-tokens", "3"])
    assert text.exit_code == 0 and "decode, per token:" in text.output and "GroupQueryAttention" in text.output
    assert "2 MiB pages" in text.output
    bad = cli.invoke(main, ["profile", str(tiny_artifact), "--new-tokens", "1"])
    assert bad.exit_code == 2 and "--new-tokens" in bad.output
