"""The C backend as a user meets it: an artifact whose edgec-run, libedgec.so and edgec.h work without
Python, the same greedy tokens from Python, from edgec-run on x86-64 and from the aarch64 build under
qemu, and one-line errors for bad input. (Op-level correctness: test_conformance.py; whole models
against transformers: test_architectures.py.)"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import edgec
from edgec.errors import ArtifactError
from helpers import IDS

N = 12
QEMU = shutil.which("qemu-aarch64")
CROSS = shutil.which("aarch64-linux-gnu-gcc")


@pytest.fixture(scope="module")
def c_fp32(tiny_llama, tmp_path_factory):
    return edgec.build(tiny_llama, tmp_path_factory.mktemp("c") / "fp32", backend="c", recipe="fp32")


@pytest.fixture(scope="module")
def c_int4(tiny_llama, tmp_path_factory):
    """int4 weights (fused quantized linears) with the device profile's int8 activations."""
    return edgec.build(tiny_llama, tmp_path_factory.mktemp("c") / "int4", backend="c", recipe="int4-rtn")


def run_ids(binary, artifact, *extra, runner=()):
    cmd = [*runner, str(binary), str(artifact), "--ids", ",".join(map(str, IDS)), "-n", str(N), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [int(t) for t in proc.stdout.split()]


def test_artifact_holds_a_program_and_libraries(c_fp32):
    model = c_fp32 / "model"
    for name in ("libedgec.so", "libedgec.a", "edgec.h", "edgec-run", "weights.bin", "c.json", "src/model.c"):
        assert (model / name).is_file(), name
    assert "int ec_graph_run(" in (model / "src" / "model.c").read_text()


@pytest.mark.parametrize("which", ["fp32", "int4"])
def test_edgec_run_matches_python(which, c_fp32, c_int4):
    art = {"fp32": c_fp32, "int4": c_int4}[which]
    want = edgec.load(art).generate(IDS, N)
    assert len(want) == N
    assert run_ids(art / "model" / "edgec-run", art) == want


def test_exact_and_int8_activations_agree(c_int4):
    """--exact (fp32 activations) and the default int8 activations: the same logits within a few %."""
    from edgec.backends import get_backend

    be = get_backend("c")
    exact = be.open(c_int4 / "model", options={"int8_activations": False}).sequence(64).run(IDS)
    fast = be.open(c_int4 / "model", options={"int8_activations": True}).sequence(64).run(IDS)
    assert np.abs(fast - exact).max() <= 0.05 * np.abs(exact).max()
    assert not np.array_equal(fast, exact)  # the two paths really differ


@pytest.mark.skipif(not (QEMU and CROSS), reason="needs qemu-user and gcc-aarch64-linux-gnu (.ci/run installs them)")
@pytest.mark.parametrize("device", ["rpi5", "pixel8"])
def test_aarch64_build_under_qemu_matches_x86(device, tiny_llama, c_fp32, tmp_path):
    art = edgec.build(tiny_llama, tmp_path / device, device=device, backend="c", recipe="fp32")
    binary = art / "model" / "edgec-run"
    assert binary.read_bytes()[:4] == b"\x7fELF" and binary.read_bytes()[18] == 183  # e_machine: AArch64
    file_type = subprocess.run(["file", str(binary)], capture_output=True, text=True).stdout
    assert "statically linked" in file_type or not shutil.which("file")
    want = run_ids(c_fp32 / "model" / "edgec-run", c_fp32)
    assert run_ids(binary, art, runner=[QEMU]) == want
    with pytest.raises(edgec.EdgecError, match="built for aarch64"):
        edgec.load(art, allow_unsigned=True)


def test_edgec_run_bad_input(c_fp32, tmp_path):
    binary = c_fp32 / "model" / "edgec-run"
    for args, code, needle in (([str(tmp_path / "nope"), "-p", "x"], 1, "cannot open"),
                               ([str(c_fp32), "-p", "x", "--top-p", "2"], 2, "--top-p"),
                               ([str(c_fp32), "--bogus"], 2, "unknown option --bogus"),
                               ([str(c_fp32)], 2, "give a prompt")):
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == code, (args, proc.stderr)
        assert proc.stderr.startswith("edgec-run: error: ") and needle in proc.stderr.splitlines()[0], proc.stderr
    # a token id beyond the vocabulary is refused, not read out of bounds
    proc = subprocess.run([str(binary), str(c_fp32), "--ids", "5,100000"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "outside the vocabulary" in proc.stderr


def test_weights_file_checked_by_the_library(c_fp32, tmp_path):
    """The library's own checks (without the manifest's): truncated file, wrong magic, modified data."""
    model = tmp_path / "model"
    shutil.copytree(c_fp32 / "model", model)
    from edgec.backends import get_backend

    be = get_backend("c")
    weights = model / "weights.bin"
    good = weights.read_bytes()
    weights.write_bytes(good[:-100])
    with pytest.raises(ArtifactError, match="truncated"):
        be.open(model)
    weights.write_bytes(b"XXXXXXXX" + good[8:])
    with pytest.raises(ArtifactError, match="bad magic"):
        be.open(model)
    flipped = bytearray(good)
    flipped[-8] ^= 1
    weights.write_bytes(bytes(flipped))
    proc = subprocess.run([str(model / "edgec-run"), str(tmp_path), "--ids", "5"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "checksum" in proc.stderr, proc.stderr


def test_unsupported_op_fails_the_build_naming_it(tmp_path):
    from edgec.errors import UnsupportedModelError
    from op_cases import CASES

    from helpers import compile_and_open

    graph, _ = CASES["gqa"]()
    with pytest.raises(UnsupportedModelError, match="'gqa'"):
        compile_and_open("c", graph, tmp_path)
    assert not (tmp_path / "libedgec.so").exists()


def test_profile_uses_the_runtime_timers(c_fp32):
    """`edgec profile` on a C artifact built without timers: a library with them is compiled from the
    artifact's own sources, and every decode step calls attention once per layer."""
    from edgec.profile import format_profile, profile

    p = profile(c_fp32, prompt_tokens=6, new_tokens=4, allow_unsigned=True)
    layers = edgec.load(c_fp32, allow_unsigned=True).manifest["graph"]["op_counts"]["attention"]
    ops = {o.op: o for o in p.decode_ops}
    assert ops["attention"].calls == layers and ops["linear"].calls > 0
    assert abs(sum(o.share for o in p.decode_ops) - 1) < 1e-6 and p.decode_kernel_ms > 0
    assert {o.op for o in p.prefill_ops} >= {"attention", "embedding"}
    assert "C runtime overhead" in format_profile(p)


def test_threads_pinned_to_one_cpu_give_the_same_tokens(c_int4):
    """The thread pool under preemption: with 5 threads pinned to one CPU every worker is descheduled most of
    the time, so the caller claims the chunks a worker would have run; the greedy ids equal one thread's."""
    import os

    cpu = min(os.sched_getaffinity(0))
    binary = c_int4 / "model" / "edgec-run"
    want = run_ids(binary, c_int4, "--threads", "1")
    cmd = [str(binary), str(c_int4), "--ids", ",".join(map(str, IDS)), "-n", str(N), "--threads", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert proc.returncode == 0, proc.stderr
    assert [int(t) for t in proc.stdout.split()] == want


def test_memory_budget_sizes_the_kv_cache(c_fp32):
    """edgec_options.memory_budget (edgec-run --memory-budget): the weights plus one context's KV cache. A budget
    under the weights fails the load naming both; one with room for 5 cache rows gives a 5-row context."""
    import json

    model = c_fp32 / "model"
    weights = (model / "weights.bin").stat().st_size
    sig = json.loads((model / "c.json").read_text())["signature"]["inputs"]
    row = sum(s["shape"][1] * s["shape"][3] * 4 for s in sig if s["name"].startswith("past_"))
    binary = str(model / "edgec-run")
    proc = subprocess.run([binary, str(c_fp32), "--ids", "5,6", "--memory-budget", str(weights - 1)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "over the memory budget" in proc.stderr, proc.stderr
    budget = str(weights + 5 * row + row // 2)
    proc = subprocess.run([binary, str(c_fp32), "--ids", "5,6,7,8,9,10", "--memory-budget", budget],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "(0 of 5 used)" in proc.stderr, proc.stderr
    assert run_ids(model / "edgec-run", c_fp32, "--memory-budget", str(weights + 64 * row)) == \
        run_ids(model / "edgec-run", c_fp32)
    proc = subprocess.run([binary, str(c_fp32), "--ids", "5", "--memory-budget", "12XB"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--memory-budget takes a size" in proc.stderr


def test_weights_in_huge_pages_or_mapped_give_the_same_tokens(c_int4):
    """edgec_options.huge_pages (the default: the weights read into 2 MiB-aligned memory) and --no-huge-pages
    (the file mapped) run the same bytes."""
    binary = c_int4 / "model" / "edgec-run"
    assert run_ids(binary, c_int4, "--no-huge-pages") == run_ids(binary, c_int4)


def test_two_four_sparse_recipe_matches_the_reference(tiny_llama, tmp_path):
    """A 2:4-pruned, int4-quantized model (what wanda-2:4+int4 makes, here by magnitude so no calibration is
    needed) runs on the C backend as the reference backend runs it: the pruned zeros are ordinary codes of
    the packed format, so the fused kernels need no sparse special case to be right."""
    from edgec.runtime import CompiledModel

    recipe = tmp_path / "magnitude-2_4-int4.toml"
    recipe.write_text('name = "magnitude-2:4+int4"\n\n[[passes]]\nname = "magnitude"\nsparsity = 0.5\nn = 2\n'
                      'm = 4\n\n[[passes]]\nname = "quantize"\nbits = 4\ngroup_size = 32\nsymmetric = true\n')
    c_art = edgec.build(tiny_llama, tmp_path / "c", backend="c", recipe=str(recipe))
    ref_art = edgec.build(tiny_llama, tmp_path / "ref", backend="reference", recipe=str(recipe))
    exact = CompiledModel(c_art, backend_options={"int8_activations": False}).logits(IDS)
    want = edgec.load(ref_art).logits(IDS)
    assert np.abs(exact - want).max() <= 1e-4 * np.abs(want).max()
    assert edgec.load(c_art).generate(IDS, N) == edgec.load(ref_art).generate(IDS, N)


def test_five_bit_codes_and_fp16_scales_are_widened_at_bind(tiny_llama, tmp_path):
    """5-bit codes and fp16 scales stay packed in the weights file and are widened once when the weights are
    bound (to bytes for the 8-bit kernels, to float32): the file is smaller, the logits are the reference's."""
    from edgec.runtime import CompiledModel

    recipe = tmp_path / "int5-fp16.toml"
    recipe.write_text('name = "int5-fp16"\n\n[[passes]]\nname = "quantize"\nbits = 5\ngroup_size = 32\n'
                      'symmetric = false\nscales = "fp16"\nlm_head = true\n')
    c_art = edgec.build(tiny_llama, tmp_path / "c", backend="c", recipe=str(recipe))
    ref_art = edgec.build(tiny_llama, tmp_path / "ref", backend="reference", recipe=str(recipe))
    src = (c_art / "model" / "src" / "model.c").read_text()
    widen = src.split("ec_model_weight_widen[] = {", 1)[1].split("}", 1)[0].split(", ")
    assert "5" in widen and "1" in widen
    assert "const ec_qweight" in src and "{5," not in src  # the kernels see 8-bit codes
    exact = CompiledModel(c_art, backend_options={"int8_activations": False}).logits(IDS)
    want = edgec.load(ref_art).logits(IDS)
    assert np.abs(exact - want).max() <= 1e-4 * np.abs(want).max()
    assert edgec.load(c_art).generate(IDS, N) == edgec.load(ref_art).generate(IDS, N)
