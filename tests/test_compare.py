"""`edgec compare` on tiny artifacts: sizes, bits/weight, measured and estimated speed, evaluations recorded
and read back, and a failing artifact isolated in its own row."""
import json
import shutil
import time

import pytest
from click.testing import CliRunner

import edgec
from edgec.cli import main
from edgec.compare import record_eval, recorded_evals

WINDOW = 64  # the tiny model's context is 128


@pytest.fixture(scope="module")
def arts(tiny_llama, tmp_path_factory):
    """fp32 and int8 builds of the tiny Llama (ONNX, host), and an evaluation text."""
    d = tmp_path_factory.mktemp("compare")
    text = d / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 12)
    return {r: edgec.build(tiny_llama, d / r, recipe=r) for r in ("fp32", "int8")}, text


def run(*args):
    r = CliRunner().invoke(main, ["compare", *map(str, args)])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def test_rows_then_eval_recorded_and_read_back(arts):
    (a, text) = arts
    r = run(a["fp32"], a["int8"], "--json")
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    fp32, int8 = c["rows"]
    assert (fp32["name"], fp32["recipe"], int8["recipe"]) == ("fp32", "fp32", "int8")
    assert fp32["backend"] == "onnx" and fp32["device"] == "host" and c["devices"] == ["host"]
    assert 0 < int8["size_mb"] < fp32["size_mb"]
    assert 30 < fp32["bits_per_weight"] < 36 and int8["bits_per_weight"] < fp32["bits_per_weight"] / 2
    for row in (fp32, int8):
        assert row["speed_source"] == "measured" and row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0
        assert row["perplexity"] is None and row["kl"] is None and row["error"] is None
    assert any("not evaluated; pass --eval" in n for n in c["notes"])
    assert c["quality_metric"] == "perplexity"

    r = run(a["fp32"], a["int8"], "--eval", "--text", text, "--window", WINDOW, "--max-tokens", 2 * WINDOW, "-q")
    assert r.exit_code == 0, r.output
    assert "Pareto front (decode tok/s vs KL): host:" in r.stdout
    assert len(recorded_evals(a["int8"])) == 1

    c = json.loads(run(a["fp32"], a["int8"], "--json").stdout)  # no --eval: the recorded values
    fp32, int8 = c["rows"]
    assert fp32["perplexity"] > 1 and fp32["kl"] < 1e-6 < int8["kl"]
    assert c["quality_metric"] == "kl"
    assert any("quality recorded" in n and "text.txt" in n and f"{2 * (WINDOW - 1)} tokens" in n for n in c["notes"])


def test_most_complete_recorded_eval_wins(arts, tmp_path):
    (a, text) = arts
    art = shutil.copytree(a["fp32"], tmp_path / "copy")  # same manifest bytes: the same artifact id
    base = edgec.evaluate(art, text=text, window=WINDOW, max_tokens=WINDOW).to_dict()
    record_eval(art, {**base, "windows": 3, "tokens": 3 * (WINDOW - 1), "perplexity": 7.0})
    windows = [e["windows"] for e in recorded_evals(art)]
    assert windows[0] == 3 and 1 in windows
    assert recorded_evals(art, text_sha256="0" * 64) == []
    assert json.loads(run(art, "--json").stdout)["rows"][0]["perplexity"] == 7.0


def test_failing_artifacts_get_error_rows(arts, tmp_path):
    (a, _) = arts
    corrupt = shutil.copytree(a["int8"], tmp_path / "corrupt")
    data = corrupt / "model" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    (tmp_path / "plain").mkdir()
    r = run(a["fp32"], corrupt, tmp_path / "plain", "--json", "-q")
    assert r.exit_code == 1
    good, bad, plain = json.loads(r.stdout)["rows"]
    assert good["error"] is None and good["decode_tok_s"] > 0
    assert "corrupt" in bad["error"] and bad["decode_tok_s"] is None and "\n" not in bad["error"]
    assert "not an edgec artifact" in plain["error"] and plain["name"] == "plain"
    r = run(a["fp32"], corrupt, "-q")  # the table still prints, errors under it
    assert r.exit_code == 1 and "error: corrupt:" in r.stdout and "measured" in r.stdout


def test_estimates_for_other_devices_and_html(arts, tmp_path):
    (a, _) = arts
    out = tmp_path / "compare.html"
    r = run(a["fp32"], a["int8"], "--device", "host", "--device", "rpi5", "--json", "--html", out, "-q")
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    assert [(x["name"], x["device"], x["speed_source"]) for x in c["rows"]] == [
        ("fp32", "host", "measured"), ("fp32", "rpi5", "estimate"),
        ("int8", "host", "measured"), ("int8", "rpi5", "estimate")]
    assert all(x["decode_tok_s"] > 0 for x in c["rows"]) and c["devices"] == ["host", "rpi5"]
    assert any(n.startswith("estimate:") for n in c["notes"])
    assert "<title>edgec compare</title>" in out.read_text() and "rpi5" in out.read_text()


@pytest.mark.parametrize("args, message", [
    ([], "at least one artifact"),
    (["{art}", "--device", "mars"], "unknown device 'mars'"),
    (["{art}", "--html", "{tmp}/missing/out.html"], "does not exist"),
    (["{art}", "--eval", "--text", "{tmp}/none.txt"], "does not exist"),
    (["{art}", "--eval", "--max-tokens", "10"], "at least one window"),
])
def test_bad_input_fails_fast(arts, tmp_path, args, message):
    (a, _) = arts
    t0 = time.perf_counter()
    r = run(*[x.format(art=a["fp32"], tmp=tmp_path) for x in args])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("edgec: error:") and message in r.stderr and r.stderr.count("\n") == 1
    assert time.perf_counter() - t0 < 5  # before any measurement
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="needs gcc-aarch64-linux-gnu")
def test_artifact_for_another_machine_is_estimated_for_its_device(tiny_llama, tmp_path):
    art = edgec.build(tiny_llama, tmp_path / "c-rpi5", device="rpi5", backend="c", recipe="int8")
    r = run(art, "--json", "-q")
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    (row,) = c["rows"]
    assert (row["device"], row["speed_source"], row["backend"]) == ("rpi5", "estimate", "c")
    assert row["decode_tok_s"] > 0 and row["error"] is None
