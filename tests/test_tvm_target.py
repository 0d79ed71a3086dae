"""The TVM target: IR -> Relax -> llvm (x86-64 here, aarch64 cross) and cuda.

Host artifacts run in the Relax VM and are checked against the reference
interpreter (fp32 and quantized <= 1e-4: the fused dequantizing matmul is
exact up to summation order) and against the ONNX artifact token for token.
Cross-compiled libraries are inspected, not run: aarch64 must be an AArch64
ELF with NEON code, CUDA must carry CUDA kernels.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import edgec
from edgec.backends import get_backend
from edgec.cli import main
from edgec.devices import get_device
from edgec.errors import EdgecError
from edgec.ir import Graph, interpret
from edgec.pipeline import compile_ir, write_artifact
from edgec.recipes import load_recipe
from helpers import IDS, check_prefill_and_decode

try:
    import tvm  # noqa: F401

    HAVE_TVM = True
except ImportError:
    HAVE_TVM = False

PIN = "apache-tvm==0.27.0.post1"
needs_tvm = pytest.mark.skipif(not HAVE_TVM, reason=f"apache-tvm is not installed (pip install {PIN})")
CROSS_GCC = "aarch64-linux-gnu-gcc"
needs_cross = pytest.mark.skipif(shutil.which(CROSS_GCC) is None,
                                 reason=f"{CROSS_GCC} not found (Debian package gcc-aarch64-linux-gnu)")
TOL = 1e-4


def build_tvm(model_dir, out, recipe="fp32", device="host"):
    rec = load_recipe(recipe)
    imported, pm = compile_ir(str(model_dir), rec)
    write_artifact(imported, pm, out, device=get_device(device), backend=get_backend("tvm"), recipe=rec)
    return imported.graph, out


# ----------------------------------------------------------------------------- host artifacts
@pytest.fixture(scope="module")
def fp32(tiny_llama, tmp_path_factory):
    if not HAVE_TVM:
        pytest.skip(f"apache-tvm is not installed (pip install {PIN})")
    return build_tvm(tiny_llama, tmp_path_factory.mktemp("tvm") / "tiny-llama-tvm")


@needs_tvm
def test_fp32_logits_and_decode_match_interpreter(fp32):
    check_prefill_and_decode(*fp32)


@needs_tvm
def test_running_with_one_thread_leaves_the_process_cpus_alone(fp32):
    """TVM pins the calling thread while configuring its pool; edgec restores it, or every runtime started
    later in the process (onnxruntime, the C runtime) would run on that one core."""
    before = os.sched_getaffinity(0)
    edgec.load(fp32[1], threads=1).generate([5, 6, 7], max_new_tokens=2, stop_at_eos=False)
    assert os.sched_getaffinity(0) == before


@needs_tvm
def test_manifest_records_target_triple_and_version(fp32):
    import tvm

    m = json.loads((fp32[1] / "manifest.json").read_text())
    be = m["backend"]
    assert be["name"] == "tvm" and be["kind"] == "llvm" and be["tvm_version"] == tvm.__version__
    assert be["triple"].startswith("x86_64") or be["triple"].startswith("aarch64")
    assert json.loads(be["target"])["kind"] == "llvm"
    assert set(be["functions"]) == {"prefill", "decode"}
    assert "model/model.so" in m["files"] and "model/weights.bin" in m["files"]


@needs_tvm
def test_greedy_generation_matches_onnx_artifact(fp32, tiny_artifact):
    prompt = IDS[:5]
    ours = edgec.load(fp32[1]).generate(prompt, max_new_tokens=16, stop_at_eos=False)
    theirs = edgec.load(tiny_artifact).generate(prompt, max_new_tokens=16, stop_at_eos=False)
    assert len(ours) == 16 and ours == theirs


@needs_tvm
def test_out_of_range_token_ids_are_refused_not_a_crash(fp32):
    model = edgec.load(fp32[1])
    for bad in (model.vocab_size, -1):  # an id >= vocab used to segfault the TVM runtime
        with pytest.raises(edgec.EdgecError, match="out of range"):
            model.logits([1, bad])
        with pytest.raises(edgec.EdgecError, match="out of range"):
            model.sequence(8).run([bad])


@needs_tvm
def test_native_artifact_is_refused_unsigned_or_untrusted(fp32, tmp_path):
    import shutil

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgec import signing

    unsigned = tmp_path / "unsigned"
    shutil.copytree(fp32[1], unsigned)
    (unsigned / "signature.json").unlink()
    with pytest.raises(edgec.EdgecError, match="contains native code and is not signed"):
        edgec.load(unsigned)
    assert edgec.load(unsigned, allow_unsigned=True).logits(IDS[:3]).shape[0] == 3
    stranger = Ed25519PrivateKey.generate()
    (unsigned / "signature.json").write_bytes(signing.signature_bytes(
        signing.sign_manifest((unsigned / "manifest.json").read_bytes(), stranger)))
    with pytest.raises(edgec.EdgecError, match="a key you do not trust"):
        edgec.load(unsigned)
    pub = tmp_path / "stranger.pub"
    pub.write_text(signing.public_line(stranger.public_key()))
    assert edgec.load(unsigned, trusted_keys=[pub]).trust == "trusted"


@needs_tvm
@pytest.mark.parametrize("recipe", ["int4-rtn", "int8-kv"])
def test_compressed_recipes_match_interpreter(recipe, tiny_llama, tmp_path):
    check_prefill_and_decode(*build_tvm(tiny_llama, tmp_path / recipe, recipe))


@needs_tvm
@pytest.mark.parametrize("arch", ["gemma2", "gpt2", "gpt_neox"])
def test_architectures_match_interpreter(arch, tmp_path):
    """Soft-capping + sliding window + GeGLU, LayerNorm + biases, partial rotary."""
    from tiny import save_tiny

    check_prefill_and_decode(*build_tvm(save_tiny(arch, tmp_path / "hf"), tmp_path / "art"))


# ----------------------------------------------------------------------------- quantized linears
def _quant_graph(specs, k=64, n=24):
    from edgec.ir.quant import quantize_rtn

    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", "float32", (1, "seq", k))
    outs = []
    for spec in specs:
        p, s, z = quantize_rtn(rng.uniform(-1, 1, (n, k)).astype("float32"), spec)
        w = g.op("dequantize", g.add_weight("p", p), g.add_weight("s", s), g.add_weight("z", z),
                 bits=spec.bits, group_size=spec.group_size, k=k)
        outs.append(g.op("linear", x, w, g.add_weight("b", rng.uniform(-1, 1, n).astype("float32"))))
    g.outputs = outs
    return g


@needs_tvm
def test_quantized_linears_fuse_dequantization_and_match(tmp_path):
    """2/3/4/8 bit, sym/asym, per-channel, and a group size that does not divide K (padded rows)."""
    from tvm import tirx

    from edgec.ir.quant import QuantSpec
    from edgec.targets.tvm import TvmExecutor, compile_graph, lower_graph

    specs = [QuantSpec(4, 16, True), QuantSpec(4, 48, False), QuantSpec(3, 0, True), QuantSpec(2, 32, False),
             QuantSpec(8, 64, True)]
    g = _quant_graph(specs)
    mod = lower_graph(g).mod
    prims = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    assert not any("dequantize" in name for name in prims), sorted(prims)
    # the linear kernels (prefill and decode) read the packed uint8 codes directly
    linears = [f.script() for name, f in prims.items() if name.startswith("linear")]
    assert len(linears) == 2 * len(specs) and all('"uint8"' in text for text in linears)
    compile_graph(g, tmp_path, device=get_device("host"))
    ex = TvmExecutor(tmp_path)
    for s in (1, 5):
        x = np.random.default_rng(s).uniform(-1, 1, (1, s, 64)).astype("float32")
        ref, out = interpret(g, {"x": x}), ex.run({"x": x})
        for k in ref:
            assert np.abs(out[k] - ref[k]).max() <= TOL, k


# ----------------------------------------------------------------------------- CLI
@needs_tvm
def test_cli_build_run_eval(tiny_llama, tmp_path):
    cli = CliRunner()
    out = tmp_path / "a"
    r = cli.invoke(main, ["build", str(tiny_llama), "--backend", "tvm", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["backend"] == "tvm"
    r = cli.invoke(main, ["run", str(out), "-p", "hello there", "-n", "8"])
    assert r.exit_code == 0, r.output
    model = edgec.load(out)
    new = model.generate(model.encode("hello there"), 8)
    assert r.stdout == model.tokenizer.decode([t for t in new if t not in model.eos_token_ids],
                                              skip_special_tokens=True) + "\n"
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on a mat; edge devices run small models. " * 12)
    r = cli.invoke(main, ["eval", str(out), "--text", str(text), "--window", "64", "--max-tokens", "128",
                          "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["windows"] == 2 and res["kl"] < 1e-6 and res["top1_agreement"] == 1.0


def test_cli_does_not_import_tvm():
    code = ("import sys; from click.testing import CliRunner; from edgec.cli import main; "
            "r = CliRunner().invoke(main, ['devices']); assert r.exit_code == 0; "
            "import edgec.pipeline, edgec.runtime, edgec.backends; "
            "print('tvm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- cross targets
@needs_tvm
@needs_cross
@pytest.mark.parametrize("device", ["rpi5", "jetson-orin-nano"])
def test_aarch64_library_is_arm64_elf_with_neon(device, tiny_llama, tmp_path):
    graph, art = build_tvm(tiny_llama, tmp_path / device, device=device)
    lib = (art / "model" / "model.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 183  # EM_AARCH64
    be = json.loads((art / "manifest.json").read_text())["backend"]
    assert be["triple"] == "aarch64-linux-gnu" and be["cross_compiled"]
    host = json.loads(be["target"]).get("host", json.loads(be["target"]))
    assert host["mcpu"] == get_device(device).mcpu and "+neon" in host["mattr"]
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump and be["kind"] == "llvm":  # on Jetson the math runs in CUDA kernels, the host code is glue
        asm = subprocess.run([objdump, "-d", str(art / "model" / "model.so")], capture_output=True,
                             text=True, check=True).stdout
        assert re.search(r"\bf(mla|mul|add)\s+v\d+\.4s", asm), "no NEON float vector instructions"
    if device.startswith("jetson"):
        assert b"__global__" in lib and be["kind"] == "cuda"
    with pytest.raises(EdgecError, match="cannot run on this machine"):
        edgec.load(art)


@needs_tvm
def test_cuda_library_carries_cuda_kernels(tiny_llama, tmp_path):
    graph, art = build_tvm(tiny_llama, tmp_path / "cuda", device="cuda")
    be = json.loads((art / "manifest.json").read_text())["backend"]
    target = json.loads(be["target"])
    assert be["kind"] == "cuda" and target["kind"] == "cuda" and target["arch"] == get_device("cuda").gpu_arch
    lib = (art / "model" / "model.so").read_bytes()
    kernels = set(re.findall(rb'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', lib))
    assert any(k.startswith(b"fused_linear") for k in kernels), sorted(kernels)[:10]
    import tvm

    if not tvm.cuda(0).exist:
        pytest.skip("no NVIDIA GPU visible: the CUDA artifact was built and inspected but not run")
    check_prefill_and_decode(graph, art, tol=1e-3)


# ----------------------------------------------------------------------------- bad input
def test_missing_tvm_is_one_line_with_install_command(tiny_llama, tmp_path):
    code = ("import sys; sys.modules['tvm'] = None; from click.testing import CliRunner; "
            "from edgec.cli import main; "
            f"r = CliRunner().invoke(main, ['build', {str(tiny_llama)!r}, '--backend', 'tvm', '-o', "
            f"{str(tmp_path / 'x')!r}]); print(r.exit_code); print(r.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    code_line, err = out.stdout.split("\n", 1)
    assert code_line == "2"
    assert err.strip().count("\n") == 0 and f"pip install {PIN}" in err
    assert not (tmp_path / "x").exists()


@needs_tvm
def test_unknown_triple_and_unservable_devices():
    from edgec.targets.tvm.target import plan_for

    with pytest.raises(EdgecError, match="cannot target triple 'riscv64-linux-gnu'"):
        plan_for(dataclasses.replace(get_device("rpi5"), cpu_triple="riscv64-linux-gnu"))
    with pytest.raises(EdgecError, match="NVIDIA GPUs"):
        plan_for(dataclasses.replace(get_device("cuda"), gpu_arch="gfx1100"))


@needs_tvm
def test_missing_cross_compiler_names_the_debian_package(tiny_llama, tmp_path, monkeypatch):
    import edgec.targets.tvm.target as T

    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    with pytest.raises(EdgecError, match="gcc-aarch64-linux-gnu"):
        edgec.build(tiny_llama, tmp_path / "x", device="rpi5", backend="tvm", recipe="fp32")
    assert not (tmp_path / "x").exists()


@needs_tvm
def test_every_ir_op_has_a_lowering():
    from edgec.ir import all_ops
    from edgec.targets.tvm import LOWERINGS

    assert sorted(set(all_ops()) - set(LOWERINGS)) == []
