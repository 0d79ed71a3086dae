"""MetaSchedule tuning of the TVM target (`--backend-opt tune_minutes=M`, `tune_log=PATH`) on a tiny model.

A few seconds of tuning: the log lands in the artifact, the tuned library
still matches the interpreter, a rebuild with the tune_log option reuses the log
without measuring anything, and bad options fail in one line.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import edgec
from edgec.cli import main
from edgec.errors import EdgecError
from edgec.pipeline import compile_ir
from edgec.recipes import load_recipe

tvm = pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install apache-tvm==0.27.0.post1)")

from helpers import check_prefill_and_decode  # noqa: E402


@pytest.fixture(scope="module")
def tuned(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "tuned"
    # 15 s: on a loaded 2-core machine 6 s sometimes ended before the first batch of trials finished
    edgec.build(tiny_llama, out, backend="tvm", backend_options={"tune_minutes": 0.25})
    return out


def test_tuning_writes_its_log_into_the_artifact_and_matches_the_interpreter(tuned, tiny_llama):
    m = json.loads((tuned / "manifest.json").read_text())
    tuning = m["backend"]["tuning"]
    # the guard: no batch starts after the 15 s budget (a started batch runs to its end, however slow)
    assert tuning["minutes"] == 0.25 and tuning["trials"] > 0 and tuning["last_batch_started_s"] < 15
    assert tuning["database_applied"] and tuning["applied"] and tuning["reused_log"] is None
    assert "model/tune/records.json" in m["files"]  # checksummed with the rest
    log = json.loads((tuned / "model" / "tune" / "records.json").read_text())
    assert len(log["records"]) == tuning["records"] >= 1
    assert all(len(r["key"]) == 64 and r["run_secs"] and r["trace"] for r in log["records"])
    graph = compile_ir(str(tiny_llama), load_recipe("fp32"))[0].graph
    check_prefill_and_decode(graph, tuned)


def test_tune_log_is_reused_without_measuring(tuned, tiny_llama, tmp_path):
    out = edgec.build(tiny_llama, tmp_path / "again", backend="tvm", backend_options={"tune_log": tuned})
    tuning = json.loads((out / "manifest.json").read_text())["backend"]["tuning"]
    first = json.loads((tuned / "manifest.json").read_text())["backend"]["tuning"]
    assert tuning["trials"] == 0 and tuning["reused_records"] == first["records"]
    assert sorted(tuning["applied"]) == sorted(first["applied"])
    a = edgec.load(tuned).logits([5, 9, 14, 3])
    b = edgec.load(out).logits([5, 9, 14, 3])
    assert abs(a - b).max() <= 1e-5  # the same schedules: the same library


@pytest.mark.parametrize("args,message", [
    (["--backend-opt", "tune_minutes=-1", "--backend", "tvm"], "tune_minutes must be between 0"),
    (["--backend-opt", "tune_minutes=x", "--backend", "tvm"], "tune_minutes must be a number, got 'x'"),
    (["--backend-opt", "tune_minutes=1", "--backend", "onnx"],
     "the onnx backend has no option(s) ['tune_minutes']; valid: accuracy_level, allow_spinning"),
    (["--backend-opt", "tune_minutes", "--backend", "tvm"], "expected key=value, got 'tune_minutes'"),
    (["--backend-opt", "tune_minutes=1", "--backend", "tvm", "--device", "rpi5", "--recipe", "fp32"], "on the target device"),
    (["--backend", "tvm", "--backend-opt", "tune_log=/nonexistent/log"], "no tuning log"),
])
def test_bad_tuning_options_fail_in_one_line(tiny_llama, tmp_path, args, message):
    out = tmp_path / "bad"
    r = CliRunner().invoke(main, ["build", str(tiny_llama), "-o", str(out), "-q", *args])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_corrupt_tune_log_is_refused(tiny_llama, tmp_path):
    bad = tmp_path / "records.json"
    bad.write_text("{not json")
    with pytest.raises(EdgecError, match="tuning log"):
        edgec.build(tiny_llama, tmp_path / "x", backend="tvm", backend_options={"tune_log": bad})
    assert not (tmp_path / "x").exists()
