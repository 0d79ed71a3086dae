"""The FUSE phase: each fusion pass against the interpreter (hand-built graphs and tiny
models), its ONNX Runtime contrib-op lowering against the interpreter at fp32, and
`--no-fuse`.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM

from edgec.ir import Graph, interpret
from edgec.ir.quant import QuantSpec, quantize_rtn
from edgec.passes import FUSE
from edgec.targets.onnx import OnnxExecutor, compile_graph, prelower
from helpers import model_feeds, run_pass
from tiny import save_tiny

F32 = "float32"
R = np.random.default_rng(0)
TOL = 1e-4


def rand(*shape, dtype=F32, lo=-1.0, hi=1.0):
    return R.uniform(lo, hi, shape).astype(dtype)


def assert_close(a: dict, b: dict, atol=1e-6):
    assert list(a) == list(b) or len(a) == len(b)
    for va, vb in zip(a.values(), b.values()):
        assert va.shape == vb.shape
        np.testing.assert_allclose(vb, va, rtol=1e-5, atol=atol)


def onnx_run(graph: Graph, feeds: dict, tmp_path) -> tuple[dict, set[str]]:
    """Compile to ONNX, run with onnxruntime; also return the op types in model.onnx."""
    # the backend's PRELOWER, as a build runs it; fp32 compute in MatMulNBits: matches the interpreter to ~1e-5
    compile_graph(prelower(copy.deepcopy(graph)), tmp_path, accuracy_level=0)
    ops = {n.op_type for n in onnx.load(tmp_path / "model.onnx", load_external_data=False).graph.node}
    return OnnxExecutor(tmp_path).run(feeds), ops


def fuse_all(graph: Graph) -> None:
    for name, opts in FUSE:
        run_pass(graph, name, **opts)


# ============================================================== fuse_linears
def _siblings(form: str, bias: str = "none") -> Graph:
    """x -> three linears (q 8, k 4, v 4 outputs) in one weight form, each feeding an output."""
    g = Graph()
    x = g.add_input("x", F32, (1, "seq", 32))
    outs = []
    for i, (name, n) in enumerate((("q_proj", 8), ("k_proj", 4), ("v_proj", 4))):
        w = rand(n, 32)
        if form == "plain":
            wv = g.add_weight(f"attn.{name}.weight", w)
        elif form == "fp16":
            wv = g.op("cast", g.add_weight(f"attn.{name}.weight", w.astype("float16")), dtype=F32)
        else:
            p, s, z = quantize_rtn(w, QuantSpec(4, 16, False))
            wv = g.op("dequantize", g.add_weight(f"{name}.packed", p), g.add_weight(f"{name}.scales", s),
                      g.add_weight(f"{name}.zeros", z), bits=4, group_size=16, k=32)
        ins = [x, wv]
        if bias == "all" or (bias == "some" and i != 1):
            ins.append(g.add_weight(f"attn.{name}.bias", rand(n)))
        outs.append(g.op("relu", g.op("linear", *ins)))
    g.outputs = outs
    return g


@pytest.mark.parametrize("form, bias", [("plain", "none"), ("plain", "all"), ("plain", "some"),
                                        ("fp16", "all"), ("int4", "none"), ("int4", "some")])
def test_fuse_linears_merges_qkv(form, bias, tmp_path):
    g = _siblings(form, bias)
    before = copy.deepcopy(g)
    assert run_pass(g, "fuse_linears").counts == {"linears": 3, "merged": 1}
    run_pass(g, "dce")
    ops = g.op_counts()
    assert ops["linear"] == 1 and ops["split"] == 1
    assert ops.get("dequantize", 0) == (1 if form == "int4" else 0)
    assert ops.get("cast", 0) == (1 if form == "fp16" else 0)
    lin = next(n for n in g.nodes if n.op == "linear")
    assert lin.output.shape[-1] == 16 and (len(lin.inputs) == 3) == (bias != "none")
    if form == "plain":
        assert lin.inputs[1].name == "attn.q_k_v_proj.weight"
    feeds = {"x": rand(1, 5, 32)}
    assert_close(interpret(before, feeds), interpret(g, feeds))
    out, onnx_ops = onnx_run(g, feeds, tmp_path)
    assert_close(interpret(g, feeds), out, atol=TOL)
    assert "Split" in onnx_ops
    if form == "int4":
        assert "MatMulNBits" in onnx_ops


def test_fuse_linears_merges_w8a8():
    g = Graph()
    x = g.add_input("x", F32, (1, "seq", 16))
    g.outputs = [g.op("linear_w8a8", x, g.add_weight(f"wq{i}", R.integers(-127, 128, (n, 16)).astype("int8")),
                      g.add_weight(f"ws{i}", rand(n, lo=0.01, hi=0.02)), g.add_weight(f"b{i}", rand(n)))
                 for i, n in enumerate((8, 8))]
    before = copy.deepcopy(g)
    assert run_pass(g, "fuse_linears").counts == {"linears": 2, "merged": 1}
    feeds = {"x": rand(1, 4, 16)}
    assert_close(interpret(before, feeds), interpret(g, feeds))


def test_fuse_linears_leaves_mixed_forms_shared_weights_and_different_inputs():
    g = Graph()
    x = g.add_input("x", F32, (1, "seq", 16))
    y = g.add_input("y", F32, (1, "seq", 16))
    w = g.add_weight("shared", rand(8, 16))
    g.outputs = [
        g.op("linear", x, w), g.op("linear", y, w),                                      # shared weight
        g.op("linear", x, g.op("cast", g.add_weight("h", rand(8, 16, dtype="float16")), dtype=F32)),  # alone
        g.op("linear", y, g.add_weight("a", rand(4, 16))),                                # different input
    ]
    assert run_pass(g, "fuse_linears").counts == {"linears": 0, "merged": 0}


def test_fuse_linears_keeps_different_placements_and_tiers_apart():
    """Placement metadata: linears that run on different devices or read weights from different
    memory tiers are not merged; equal ones are."""
    g = Graph()
    x = g.add_input("x", F32, (1, "seq", 16))
    ws = [g.add_weight(f"w{i}", rand(8, 16)) for i in range(5)]
    outs = [g.op("linear", x, w) for w in ws]
    outs[1].producer.meta.placement = "gpu"   # alone on the GPU
    ws[2].meta.tier = ws[3].meta.tier = "cold"  # two cold ones merge with each other
    g.outputs = outs
    before = copy.deepcopy(g)
    assert run_pass(g, "fuse_linears").counts == {"linears": 4, "merged": 2}
    merged = [n for n in g.nodes if n.op == "linear"]
    assert sorted(n.output.shape[-1] for n in merged) == [8, 16, 16]
    assert sorted((n.meta.placement or "", n.inputs[1].meta.tier or "") for n in merged) == [
        ("", ""), ("", "cold"), ("gpu", "")]  # the merged weights and linears keep their meta
    feeds = {"x": rand(1, 3, 16)}
    assert_close(interpret(before, feeds), interpret(g, feeds))


# ============================================================== fuse_add_rms_norm
def test_fuse_add_rms_norm_keeps_the_residual(tmp_path):
    g = Graph()
    h = g.add_input("h", F32, (1, "seq", 16))
    w1, w2 = (g.add_weight(f"norm{i}.weight", rand(16, lo=0.5, hi=1.5)) for i in (1, 2))
    d = g.add_weight("d", rand(16, 16))
    h1 = g.op("add", h, g.op("linear", g.op("rms_norm", h, w1), d))      # residual
    h2 = g.op("add", h1, g.op("linear", g.op("rms_norm", h1, w2, eps=1e-5), d))
    bias = g.op("add", h2, g.add_weight("b", rand(16)))                 # broadcasting add: not a residual
    g.outputs = [g.op("rms_norm", h2, w1), g.op("rms_norm", bias, w2),
                 g.op("rms_norm", h1, w1)]                              # a second norm of h1 stays plain
    before = copy.deepcopy(g)
    assert run_pass(g, "fuse_add_rms_norm").counts == {"add_rms_norm": 2}
    ops = g.op_counts()
    assert ops["add_rms_norm"] == 2 and ops["rms_norm"] == 3 and ops["add"] == 1
    feeds = {"h": rand(1, 5, 16)}
    assert_close(interpret(before, feeds), interpret(g, feeds))
    out, onnx_ops = onnx_run(g, feeds, tmp_path)
    assert_close(interpret(g, feeds), out, atol=TOL)
    assert "SkipSimplifiedLayerNormalization" in onnx_ops


def test_add_rms_norm_fp16_falls_back_to_standard_ops(tmp_path):
    g = Graph()
    x, s = (g.add_input(n, "float16", (1, "seq", 8)) for n in ("x", "s"))
    g.outputs = list(g.add_node("add_rms_norm", [x, s, g.add_weight("w", rand(8, dtype="float16"))]).outputs)
    feeds = {"x": rand(1, 3, 8, dtype="float16"), "s": rand(1, 3, 8, dtype="float16")}
    out, onnx_ops = onnx_run(g, feeds, tmp_path)
    assert "SkipSimplifiedLayerNormalization" not in onnx_ops
    assert_close(interpret(g, feeds), out, atol=2e-3)


# ============================================================== fuse_rotary
def _rope_graph(rot_dim=8, head_dim=8, extra_input=False) -> Graph:
    """What transformers' Llama rotary traces into, for q and k of one layer."""
    g = Graph()
    g.facts.context_length = 32
    pos = g.add_input("position_ids", "int64", (1, "seq"))
    q = g.add_input("q", F32, (1, 4, "seq", head_dim))
    k = g.add_input("k", F32, (1, 2, "seq", head_dim))
    inv = g.add_weight("rotary_emb.inv_freq", (1.0 / 10000 ** (np.arange(0, rot_dim, 2) / rot_dim)).astype(F32))
    f = g.op("mul", g.op("cast", g.op("unsqueeze", pos, axis=2), dtype=F32), inv)
    if extra_input:  # cos/sin that depend on something besides positions cannot be tabulated
        f = g.op("add", f, g.add_input("shift", F32, (1, "seq", rot_dim // 2)))
    emb = g.op("concat", f, f, axis=2)
    cos, sin = (g.op("unsqueeze", g.op("mul", g.op(fn, emb), g.op("const", value=1.0, dtype=F32)), axis=1)
                for fn in ("cos", "sin"))
    g.outputs = [g.op("rotary", q, cos, sin), g.op("rotary", k, cos, sin)]
    return g


@pytest.mark.parametrize("rot_dim", [8, 4])
def test_fuse_rotary_tabulates_cos_sin(rot_dim, tmp_path):
    g = _rope_graph(rot_dim)
    before = copy.deepcopy(g)
    assert run_pass(g, "fuse_rotary").counts == {"rotary_cached": 2, "table_pairs": 1, "positions": 32}
    run_pass(g, "dce")
    assert g.op_counts() == {"rotary_cached": 2}
    assert g.weights["rotary.cos_cache"].shape == (32, rot_dim // 2)
    feeds = {"position_ids": np.array([[7, 8, 9, 31]]), "q": rand(1, 4, 4, 8), "k": rand(1, 2, 4, 8)}
    assert_close(interpret(before, feeds), interpret(g, feeds))
    out, onnx_ops = onnx_run(g, feeds, tmp_path)
    assert_close(interpret(g, feeds), out, atol=TOL)
    assert "RotaryEmbedding" in onnx_ops


def test_fuse_rotary_needs_position_only_cos_sin():
    g = _rope_graph(extra_input=True)
    assert run_pass(g, "fuse_rotary").counts == {"rotary_cached": 0, "table_pairs": 0, "positions": 32}
    g = _rope_graph()
    g.facts.context_length = None
    assert run_pass(g, "fuse_rotary").counts == {"rotary_cached": 0, "table_pairs": 0, "positions": 0}


def test_rotary_cached_positions_outside_the_table_are_an_error():
    g = _rope_graph()
    run_pass(g, "fuse_rotary")
    with pytest.raises(ValueError, match="outside the 32-position table"):
        interpret(g, {"position_ids": np.array([[32]]), "q": rand(1, 4, 1, 8), "k": rand(1, 2, 1, 8)})


def test_rotary_cached_fp16_falls_back_to_standard_ops(tmp_path):
    g = Graph()
    x = g.add_input("x", "float16", (1, 2, "seq", 8))
    pos = g.add_input("pos", "int64", (1, "seq"))
    g.outputs = [g.op("rotary_cached", x, pos, g.add_weight("c", rand(16, 2)), g.add_weight("s", rand(16, 2)))]
    feeds = {"x": rand(1, 2, 3, 8, dtype="float16"), "pos": np.array([[0, 5, 15]])}
    out, onnx_ops = onnx_run(g, feeds, tmp_path)
    assert "RotaryEmbedding" not in onnx_ops
    assert_close(interpret(g, feeds), out, atol=2e-3)


# ============================================================== tiny models, end to end
IDS = [5, 17, 33, 8, 41, 2, 60, 12, 9]


def _compile(hf, recipe="fp32", fuse=True):
    from edgec.pipeline import compile_ir
    from edgec.recipes import load_recipe

    imported, pm = compile_ir(str(hf), load_recipe(recipe), fuse=fuse)
    return imported.graph


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion-hf")
    return {arch: save_tiny(arch, root / arch) for arch in ("llama", "qwen2", "gpt_neox")}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox"])
def test_tiny_model_fused_matches_unfused_and_transformers(arch, hf_models, tmp_path):
    fused, plain = _compile(hf_models[arch]), _compile(hf_models[arch], fuse=False)
    ops = fused.op_counts()
    if arch in ("llama", "qwen2"):  # q/k/v and gate/up merged, residual adds in the norms
        assert ops["linear"] == 2 * 4 + 1 and ops["split"] == 4  # qkv, o, gate_up, down; lm_head
        assert ops["add_rms_norm"] == 4 and "add" not in ops
    else:  # GPT-NeoX: fused qkv already; partial rotary
        assert "add_rms_norm" not in ops
    assert ops["rotary_cached"] == 4 and "rotary" not in ops
    assert fused.facts.fused and not plain.facts.fused
    feeds = model_feeds(fused, IDS)
    a, b = interpret(plain, feeds)["logits"], interpret(fused, feeds)["logits"]
    eager = AutoModelForCausalLM.from_pretrained(hf_models[arch], attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    with torch.no_grad():
        ref = eager(torch.tensor([IDS])).logits.numpy()
    assert np.abs(a - b).max() <= 1e-5
    assert np.abs(b - ref).max() <= TOL
    out, onnx_ops = onnx_run(fused, feeds, tmp_path)
    assert np.abs(out["logits"] - ref).max() <= TOL
    assert "GroupQueryAttention" in onnx_ops
    if arch != "gpt_neox":
        assert "SkipSimplifiedLayerNormalization" in onnx_ops
        # GQA takes the packed QKV projection and rotates q/k itself (do_rotary)
        assert not {"RotaryEmbedding", "Transpose"} & onnx_ops
    else:  # partial rotary: GQA cannot rotate it, RotaryEmbedding does
        assert "RotaryEmbedding" in onnx_ops


def test_tiny_int4_model_merges_quantized_linears(hf_models, tmp_path):
    fused, plain = _compile(hf_models["llama"], "int4-rtn"), _compile(hf_models["llama"], "int4-rtn", fuse=False)
    assert plain.op_counts()["dequantize"] == 2 * 7
    assert fused.op_counts()["dequantize"] == 2 * 4  # qkv, o, gate_up, down per layer
    feeds = model_feeds(fused, IDS)
    a, b = interpret(plain, feeds)["logits"], interpret(fused, feeds)["logits"]
    assert np.abs(a - b).max() <= 1e-5
    _, onnx_ops = onnx_run(fused, feeds, tmp_path)
    assert "MatMulNBits" in onnx_ops


def test_build_no_fuse_is_recorded(hf_models, tmp_path):
    from click.testing import CliRunner

    from edgec.cli import main

    res = CliRunner().invoke(main, ["build", str(hf_models["llama"]), "-o", str(tmp_path / "a"), "--no-fuse", "-q"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert manifest["build"]["fuse"] is False and report["fuse"] is False
    assert not any(p["pass"].startswith("fuse_") for p in report["passes"])
    assert "add_rms_norm" not in manifest["graph"]["op_counts"]
