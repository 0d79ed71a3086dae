"""`edgec sweep` on the tiny model: cells as Ray tasks (a local Ray, then a cluster this module starts),
a failing cell isolated, a second run reusing the finished cells, and bad input refused before Ray starts.

Ray starts in seconds, so one sweep (module fixture) serves several tests, and the cluster is started
once. Both are always shut down, so no other test module sees Ray."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgec.cli import main

ray = pytest.importorskip("ray")

WINDOW = 64  # the tiny model's context is 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sweep(*args):
    r = CliRunner().invoke(main, ["sweep", *map(str, args)])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


@pytest.fixture(scope="module")
def grid(tiny_llama, tmp_path_factory):
    """fp32, int8 and a recipe the ONNX backend refuses at build time, on host, with --eval and --profile:
    the sweep starts and stops its own local Ray."""
    d = tmp_path_factory.mktemp("sweep")
    text = d / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. " * 12)
    bad = d / "bad.toml"
    bad.write_text('name = "bad"\n[backend.onnx]\nno_such_option = 1\n')
    args = ["--model", tiny_llama, "--devices", "host", "-o", d / "out", "--eval", "--text", text,
            "--window", WINDOW, "--max-tokens", 2 * WINDOW, "--profile"]
    try:
        t0 = time.perf_counter()
        r = run_sweep("--recipes", f"fp32,int8,{bad}", *args)
        seconds = time.perf_counter() - t0
    finally:
        if ray.is_initialized():  # the sweep shuts its Ray down; never leave one to other test modules
            ray.shutdown()
            pytest.fail("edgec sweep left Ray running")
    return {"dir": d / "out", "args": args, "bad": bad, "first": r, "seconds": seconds}


def test_cells_run_and_a_failing_cell_is_isolated(grid):
    r, out = grid["first"], grid["dir"]
    assert r.exit_code == 1, r.output
    assert "[3/3]" in r.stderr and "bad@host failed: recipe bad [backend.onnx]" in r.stderr
    assert "INFO" not in r.stderr  # Ray's logging stays off the terminal
    data = json.loads((out / "sweep.json").read_text())
    assert [(c["name"], c["status"]) for c in data["cells"]] == [
        ("fp32@host", "ok"), ("int8@host", "ok"), ("bad@host", "failed")]
    rows = {row["name"]: row for row in data["compare"]["rows"]}
    for name, recipe in (("fp32@host", "fp32"), ("int8@host", "int8")):
        row = rows[name]
        assert row["recipe"] == recipe and row["device"] == "host" and row["error"] is None
        assert row["perplexity"] > 1 and row["kl"] is not None and row["speed_source"] == "measured"
        assert row["decode_tok_s"] > 0 and row["size_mb"] > 0 and row["bits_per_weight"] > 0
    assert rows["bad@host"]["recipe"] == "bad" and "no_such_option" in rows["bad@host"]["error"]
    assert data["compare"]["quality_metric"] == "kl"  # every row that did not fail has a KL
    cell = json.loads((out / "cells" / "int8@host" / "result.json").read_text())
    assert cell["status"] == "ok" and len(cell["artifact_id"]) == 64 and cell["key"]["recipe"]["name"] == "int8"
    assert (out / "cells" / "int8@host" / "artifact" / "manifest.json").is_file()
    assert (out / "sweep.html").is_file() and "Pareto front" in r.stdout


def test_second_run_reuses_finished_cells_without_ray(grid):
    t0 = time.perf_counter()
    r = run_sweep("--recipes", "fp32,int8", *grid["args"], "--json")
    assert r.exit_code == 0, r.output
    assert time.perf_counter() - t0 < 15 and not ray.is_initialized()
    data = json.loads(r.stdout)
    assert [c["status"] for c in data["cells"]] == ["cached", "cached"]
    assert [row["error"] for row in data["compare"]["rows"]] == [None, None]
    # other inputs for a cell (here: no --eval, no --profile) make another cell: not reused
    from edgec.sweep import cached, plan

    _, specs = plan(grid["args"][1], "fp32", "host", grid["dir"], evaluate=False)
    assert cached(specs[0]) is None


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster on 127.0.0.1, started like a user would (`ray start --head`, with --block so
    that ending that one process, which this fixture started, stops the cluster's processes)."""
    ray_cli = Path(sys.executable).with_name("ray")
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    log = open(Path(temp) / "ray-start.log", "w")
    proc = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}", "--block"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (Path(temp) / "ray-start.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (Path(temp) / "ray-start.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this fixture started
            proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_cluster_address_runs_new_cells_and_retries_failed_ones(grid, cluster):
    failed = grid["dir"] / "cells" / "bad@host" / "result.json"
    failed.write_text(json.dumps({**json.loads(failed.read_text()), "stale": True}))
    r = run_sweep("--recipes", f"fp32,fp16,{grid['bad']}", *grid["args"], "--address", cluster)
    assert r.exit_code == 1, r.output
    assert not ray.is_initialized()  # disconnected; the cluster itself keeps running
    data = json.loads((grid["dir"] / "sweep.json").read_text())
    assert [(c["name"], c["status"]) for c in data["cells"]] == [
        ("fp32@host", "cached"), ("fp16@host", "ok"), ("bad@host", "failed")]
    assert f"on the Ray cluster at {cluster}" in r.stderr
    fp16 = data["compare"]["rows"][1]
    assert fp16["recipe"] == "fp16" and fp16["perplexity"] > 1 and fp16["speed_source"] == "measured"
    after = json.loads(failed.read_text())
    assert after["status"] == "failed" and "stale" not in after  # run again, not reused


def test_unreachable_address_fails_fast(tiny_llama, tmp_path):
    port = free_port()  # nobody listens on it
    t0 = time.perf_counter()
    r = run_sweep("--model", tiny_llama, "--recipes", "fp32", "-o", tmp_path / "out", "--address", f"127.0.0.1:{port}")
    assert r.exit_code == 2 and time.perf_counter() - t0 < 5
    assert r.stderr.startswith(f"edgec: error: cannot reach a Ray cluster at 127.0.0.1:{port} (")
    assert "ray start --head" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists() and not ray.is_initialized()


@pytest.mark.parametrize("args, message", [
    (["--recipes", "fp32,nope"], "unknown recipe"),
    (["--recipes", "fp32", "--devices", "host,mars"], "unknown device 'mars'"),
    (["--recipes", "fp32", "--model", "{tmp}/no-model"], "does not exist"),
    (["--recipes", "int4-gptq"], "needs calibration data: pass --calib"),
    (["--recipes", "fp32,fp32"], "names a recipe twice"),
    (["--recipes", "fp32", "--cpus-per-cell", "9999"], "--cpus-per-cell"),
    (["--recipes", "fp32", "--address", "localhost"], "HOST:PORT"),
    (["--recipes", "fp32", "--html", "{tmp}/missing/x.html"], "does not exist"),
    (["--recipes", "fp32", "--eval", "--max-tokens", "10"], "at least one window"),
])
def test_bad_input_fails_before_anything_starts(tiny_llama, tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_llama)]
    t0 = time.perf_counter()
    r = run_sweep(*args, "-o", tmp_path / "out")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("edgec: error:") and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "out").exists() and not ray.is_initialized()
