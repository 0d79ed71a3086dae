"""Weight-only quantization: the packed format, RTN / GPTQ / AWQ passes, and their ONNX lowering.

Fast: the tiny Llama (K = 64 and 128, so group sizes up to 64 apply) and small
synthetic matrices. Calibration text is WikiText-2 from ../shared/data when
present, else a generated English-like text (the tiny tokenizer is per character).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgec.calibration import CalibConfig, run_calibration
from edgec.errors import EdgecError
from edgec.ir import Graph, interpret
from edgec.ir.quant import QuantSpec, dequantize, pack, quantize_rtn, unpack
from edgec.passes import CANONICALIZE, LOWER, RAISE, PassContext, PassManager
from edgec.passes.awq import rtn, search_scales
from edgec.passes.gptq import gptq_quantize, hessian
from edgec.targets.onnx import OnnxExecutor, compile_graph

RNG = np.random.default_rng(0)
WORDS = ("the of and a in to is was he for it with as his on be at by had are but from or have an they "
         "which one you were all her she there would their we him been has when who will more no if out "
         "so said what up its about into than them can only other new some could time these two may then "
         "first any my now such like our over man me even most made after also did many before must through "
         "years where much your way well down should because each just those people how too little state "
         "good very make world still own see men work long get here between both life being under never day "
         "same another know while last might us great old year off come since against go came right used").split()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def calib_file(tmp_path_factory) -> Path:
    from conftest import SHARED_DATA

    path = tmp_path_factory.mktemp("calib") / "text.txt"
    real = SHARED_DATA / "wikitext-2" / "valid.txt"
    if real.is_file():  # the head of it: the tiny tokenizer is per character, 40k tokens are plenty
        path.write_text(real.read_text(encoding="utf-8")[:40_000])
    else:
        path.write_text(" ".join(np.random.default_rng(1).choice(WORDS, 8000)) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    """The tiny Llama imported, canonicalized and raised: where a recipe's passes run."""
    from edgec.frontend import import_model

    imported = import_model(str(tiny_llama))
    pm = PassManager()
    pm.run(imported.graph, CANONICALIZE)
    pm.run(imported.graph, RAISE)
    return imported


def compress(tiny, calib_file, passes, samples=4, seqlen=64) -> Graph:
    """A copy of the raised tiny graph after `passes` (and the KV cache pass); the first pass's
    PassRecord is kept as `graph.record` (a test-only attribute)."""
    graph = copy.deepcopy(tiny.graph)
    ctx = PassContext(tiny.tokenizer, CalibConfig(str(calib_file), samples, seqlen))
    pm = PassManager(context=ctx)
    pm.run(graph, passes)
    pm.run(graph, LOWER)
    graph.record = pm.records[0]
    return graph


IDS = np.array([[5, 9, 20, 33, 40, 11, 7, 60, 3, 22, 31, 44, 8, 15, 52, 19]])


def feeds(graph: Graph, ids=IDS) -> dict:
    f = {"input_ids": ids, "position_ids": np.arange(ids.shape[1])[None]}
    for v in graph.inputs:
        if v.name.startswith("past_"):
            f[v.name] = np.zeros((1, v.shape[1], 0, v.shape[3]), np.float32)
    return f


def logits(graph: Graph) -> np.ndarray:
    return interpret(graph, feeds(graph))["logits"]


@pytest.fixture(scope="module")
def fp32_logits(tiny, calib_file):
    return logits(compress(tiny, calib_file, []))


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def onnx_run(graph: Graph, out: Path, accuracy_level: int | None = None):
    compile_graph(graph, out, accuracy_level=accuracy_level)
    model = onnx.load(out / "model.onnx", load_external_data=False)
    return OnnxExecutor(out).run(feeds(graph))["logits"], model


def op_count(model, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph.node)


# ----------------------------------------------------------------------------- the format
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits):
    q = RNG.integers(0, 1 << bits, size=(5, 48)).astype(np.uint8)
    packed = pack(q, bits)
    assert packed.shape == (5, 48 * bits // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack(packed, bits, 48), q)


@pytest.mark.parametrize("bits,sym", [(2, False), (3, True), (3, False), (4, True), (4, False), (8, True), (8, False)])
@pytest.mark.parametrize("group", [32, 0])
def test_rtn_error_within_half_a_step(bits, sym, group):
    w = (RNG.standard_normal((16, 128)) * RNG.uniform(0.1, 3, (16, 1))).astype(np.float32)
    w[:, 5] += 4.0  # a one-sided outlier column: asymmetric groups must still cover it
    spec = QuantSpec(bits, group, sym)
    packed, scales, zeros = quantize_rtn(w, spec)
    g = spec.check(128)
    w_hat = dequantize(packed, scales, zeros, bits, g, 128)
    step = np.repeat(scales, g, axis=1)
    assert np.all(np.abs(w - w_hat) <= step / 2 * (1 + 1e-5) + 1e-7)


# ----------------------------------------------------------------------------- the quantize (RTN) pass
@pytest.mark.parametrize("bits,sym", [(2, False), (3, True), (4, True), (4, False), (8, True)])
def test_clip_search_never_increases_the_weighted_error(bits, sym):
    from edgec.ir.quant import QuantSpec, dequantize_codes, group_params, quantize_with, search_params

    rng = np.random.default_rng(bits)
    w = rng.standard_t(3, size=(64, 96)).astype(np.float32)  # heavy tails: outliers worth clipping
    imp = rng.uniform(0.1, 4.0, 96).astype(np.float32)
    spec = QuantSpec(bits, 32, sym)

    def err(params, weights):
        s, z = params
        w_hat = dequantize_codes(quantize_with(w, s, z, spec), s, z, 96)
        return (((w_hat - w) ** 2) * weights).sum(1)

    plain = err(group_params(w, spec), imp)
    searched = err(search_params(w, spec, imp), imp)
    assert np.all(searched <= plain * (1 + 1e-6))
    if bits <= 4:  # real gains on heavy-tailed weights (at 8 bits rounding is already fine)
        assert searched.sum() < (0.9 if sym else 0.95) * plain.sum()
    s, z = search_params(w, spec)
    if sym:  # symmetric stays zero-point-free: the scale's sign carries the largest magnitude to -2^(b-1)
        assert np.all(z == 1 << (bits - 1)) and (s < 0).any() and (s > 0).any()
        assert (quantize_with(w, s, z, spec) == 0).any()


def test_quantize_pass_int8_and_int4_keep_logits_close(tiny, calib_file, fp32_logits):
    g8 = compress(tiny, calib_file, [("quantize", {"bits": 8, "group_size": 0})])
    g4 = compress(tiny, calib_file, [("quantize", {"bits": 4, "group_size": 32})])
    assert g8.record.counts["quantized_linears"] == g4.record.counts["quantized_linears"] == 14  # lm_head kept fp32
    e8, e4 = rel(logits(g8), fp32_logits), rel(logits(g4), fp32_logits)
    # The tiny model is random (weights ~ N(0, 0.2)) and far more fragile than a trained one.
    assert e8 < 0.05, e8
    assert e4 < 0.6, e4
    assert e8 < e4 / 5
    for g in (g8, g4):
        assert g.op_counts()["dequantize"] == 14
        assert not any(n.inputs[1].kind == "weight" and n.inputs[1].name.endswith("proj.weight")
                       for n in g.nodes if n.op == "linear")
        assert g.outputs[0].producer.inputs[1].name == "lm_head.weight"  # the head stays fp32


def test_quantize_pass_shrinks_weights_by_the_expected_factor(tiny, calib_file):
    fp32 = compress(tiny, calib_file, [])
    linears = [n.inputs[1].name for n in fp32.nodes if n.op == "linear" and n.inputs[1].name != "lm_head.weight"]
    n_lin = sum(fp32.weights[name].size for name in linears)
    rest = fp32.weights.total_bytes() - 4 * n_lin
    rows = sum(fp32.weights[name].shape[0] for name in linears)
    for bits, group, sym in [(8, 0, True), (4, 32, True), (4, 32, False), (3, 64, False)]:
        g = compress(tiny, calib_file, [("quantize", {"bits": bits, "group_size": group, "symmetric": sym})])
        # packed codes + one f32 scale and one u8 zero point per group (per row when per-channel)
        expected = rest + n_lin * bits / 8 + 5 * (n_lin / group if group else rows)
        assert g.weights.total_bytes() == expected


def tied_graph(hidden: int = 32):
    g = Graph()
    ids = g.add_input("input_ids", "int64", (1, "seq"))
    g.add_input("position_ids", "int64", (1, "seq"))
    table = g.add_weight("embed.weight", RNG.standard_normal((40, hidden)).astype(np.float32))
    h = g.op("embedding", table, ids)
    fc = RNG.standard_normal((hidden, hidden)).astype(np.float32)
    h = g.op("relu", g.op("linear", h, g.add_weight("fc.weight", fc)))
    g.outputs = [g.op("linear", h, table, name="logits")]
    f = {"input_ids": np.array([[1, 5, 7, 39]]), "position_ids": np.arange(4)[None]}
    return g, f


def test_lm_head_option_and_tied_embedding():
    """lm_head=True quantizes the logits projection; a tied table is then stored once, packed."""
    g, f = tied_graph()
    ref = interpret(g, f)["logits"]

    from edgec.passes import get_pass

    default = copy.deepcopy(g)
    get_pass("quantize").fn(default, bits=8, group_size=16, symmetric=True, lm_head=False, skip=[])
    assert default.op_counts()["dequantize"] == 1 and "embed.weight" in default.weights
    get_pass("quantize").fn(g, bits=8, group_size=16, symmetric=True, lm_head=True, skip=[])
    assert g.op_counts()["dequantize"] == 2
    assert "embed.weight" not in g.weights  # embedding and head both read the packed table
    assert g.nodes[0].op == "dequantize" and g.nodes[1].op == "embedding"
    assert rel(interpret(g, f)["logits"], ref) < 0.02


def test_skip_option_leaves_matching_weights_fp32(tiny, calib_file):
    g = compress(tiny, calib_file, [("quantize", {"bits": 4, "group_size": 32, "skip": ["mlp.down_proj"]})])
    assert g.op_counts()["dequantize"] == 12
    assert {n.inputs[1].name for n in g.nodes if n.op == "linear" and n.inputs[1].kind == "weight"} == {
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"}


# ----------------------------------------------------------------------------- padded last group
@pytest.mark.parametrize("bits,sym", [(3, True), (4, True), (4, False), (8, False)])
def test_group_that_does_not_divide_k_pads_the_last_group(bits, sym):
    """K = 80 with g = 32: rows are stored as 96 columns; the partial group's scale is its own 16 columns'."""
    w = (RNG.standard_normal((8, 80)) * RNG.uniform(0.1, 3, (8, 1))).astype(np.float32)
    w[:, 70] += 5.0  # an outlier in the partial group only
    spec = QuantSpec(bits, 32, sym)
    packed, scales, zeros = quantize_rtn(w, spec)
    assert packed.shape == (8, 96 * bits // 8) and scales.shape == zeros.shape == (8, 3)
    last_scale, _ = quantize_rtn(np.ascontiguousarray(w[:, 64:]), QuantSpec(bits, 16, sym))[1:]
    np.testing.assert_allclose(scales[:, 2:], last_scale)
    w_hat = dequantize(packed, scales, zeros, bits, 32, 80)
    assert w_hat.shape == (8, 80)
    step = np.repeat(scales, 32, axis=1)[:, :80]
    assert np.all(np.abs(w - w_hat) <= step / 2 * (1 + 1e-5) + 1e-7)
    np.testing.assert_array_equal(unpack(packed, bits, 96)[:, 80:], np.repeat(zeros[:, 2:], 16, 1))  # w = 0


def interpret_node(g: Graph, n) -> np.ndarray:
    """Run one node whose inputs are all weights."""
    from edgec.ir.ops import get_op

    return get_op(n.op).ref(*[np.asarray(g.weights[v.name]) for v in n.inputs], **n.attrs)


def test_group_longer_than_k_is_per_channel():
    assert QuantSpec(4, 128).check(64) == 64


@pytest.mark.parametrize("name", ["quantize", "gptq", "awq"])
def test_passes_pad_a_group_size_that_does_not_divide_k(tiny, calib_file, fp32_logits, name):
    g = compress(tiny, calib_file, [(name, {"bits": 4, "group_size": 48})])  # K = 64 and 128
    dq = {n.inputs[0].name: n for n in g.nodes if n.op == "dequantize"}
    assert len(dq) == 14
    q = dq["model.layers.0.self_attn.q_proj.weight.q4"]
    assert q.attrs["group_size"] == 48 and g.weights[q.inputs[1].name].shape[1] == 2  # 64 -> 96 columns
    if name == "quantize":  # plain RTN: every weight, padded group included, within half a step
        for n in dq.values():
            w = np.asarray(tiny.graph.weights[n.inputs[0].name[:-3]])
            scales = np.asarray(g.weights[n.inputs[1].name])
            w_hat = interpret_node(g, n)
            step = np.repeat(scales, 48, axis=1)[:, :w.shape[1]]
            assert np.all(np.abs(w - w_hat) <= step / 2 * (1 + 1e-5) + 1e-7)
    assert rel(logits(g), fp32_logits) < 0.6  # int4 on the fragile random model, as for g32 above


@pytest.mark.parametrize("scales", ["fp32", "fp16"])
def test_onnx_runs_padded_groups_on_matmulnbits_and_standard_ops(tmp_path, scales):
    """K = 80: g = 32 maps to MatMulNBits' partial last block; g = 48 (blocks of 16 would need
    more than one padded block) lowers to standard ops. Both match the interpreter, with float32
    scales and with float16 ones (a Cast of the initializer onnxruntime folds at load)."""
    for group, fused in [(32, 1), (48, 0)]:
        g = Graph()
        x = g.add_input("input_ids", "int64", (1, "seq"))
        g.add_input("position_ids", "int64", (1, "seq"))
        h = g.op("embedding", g.add_weight("embed.weight", RNG.standard_normal((40, 80)).astype(np.float32)), x)
        g.outputs = [g.op("linear", h, g.add_weight("fc.weight", RNG.standard_normal((24, 80)).astype(np.float32)),
                          name="logits")]
        from edgec.passes import get_pass

        get_pass("quantize").fn(g, bits=4, group_size=group, symmetric=False, lm_head=True, skip=["embed"],
                                scales=scales)
        f = {"input_ids": np.array([[1, 5, 7, 39]]), "position_ids": np.arange(4)[None]}
        out = tmp_path / f"g{group}"
        compile_graph(g, out, accuracy_level=0)
        model = onnx.load(out / "model.onnx", load_external_data=False)
        assert op_count(model, "MatMulNBits") == fused
        assert op_count(model, "Cast") >= (scales == "fp16")
        got = OnnxExecutor(out).run(f)["logits"]
        np.testing.assert_allclose(got, interpret(g, f)["logits"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- bad input
def test_bad_group_sizes_are_rejected(tiny, calib_file):
    with pytest.raises(EdgecError, match="group_size must be a positive integer"):
        compress(tiny, calib_file, [("quantize", {"bits": 4, "group_size": -5})])
    with pytest.raises(EdgecError, match="3-bit packing needs a multiple of 8 values per row.*group size 12"):
        compress(tiny, calib_file, [("gptq", {"bits": 3, "group_size": 12})])


@pytest.mark.parametrize("name", ["quantize", "gptq", "awq"])
def test_unsupported_bits_are_rejected(tiny, calib_file, name):
    with pytest.raises(EdgecError, match="7-bit quantization is not supported"):
        compress(tiny, calib_file, [(name, {"bits": 7, "group_size": 32})])


@pytest.mark.parametrize("bits", [5, 6])
def test_five_and_six_bit_codes_for_mixed_recipes(tiny, calib_file, bits):
    """5/6-bit codes (the ggml blocks' widths) from quantize: stored packed, closer to fp32 than 4-bit."""
    def error(b):
        g = compress(tiny, calib_file, [("quantize", {"bits": b, "group_size": 32, "symmetric": False})])
        assert {n.attrs["bits"] for n in g.nodes if n.op == "dequantize"} == {b}
        return float(np.abs(logits(g) - logits(tiny.graph)).mean())

    assert error(bits) < error(4)


def test_recipes_parse_and_unknown_option_is_rejected():
    from edgec.recipes import load_recipe

    want = {"int8": ("quantize", 8), "int4-rtn": ("quantize", 4), "int4-gptq": ("gptq", 4),
            "int4-awq": ("awq", 4), "int3-gptq": ("gptq", 3), "int4-rtn-g32-asym": ("quantize", 4)}
    for name, (pass_name, bits) in want.items():
        r = load_recipe(name)
        assert r.passes[0][0] == pass_name and r.passes[0][1]["bits"] == bits
        assert r.needs_calibration == (pass_name != "quantize")
    assert load_recipe("int4-rtn-g32-asym").passes[0][1] == {
        "bits": 4, "group_size": 32, "symmetric": False, "lm_head": True, "lm_head_bits": 8, "lm_head_group_size": 32}
    assert all(load_recipe(n).passes[0][1]["act_order"] for n in ("int4-gptq", "int3-gptq"))  # RESULTS: it wins
    with pytest.raises(EdgecError, match="no option"):
        from edgec.passes import get_pass

        get_pass("gptq").check_options({"groupsize": 128})


# ----------------------------------------------------------------------------- GPTQ
def correlated_x(n=2048, k=128, seed=0) -> np.ndarray:
    """Activations with correlated channels (a decaying spectrum) and uneven scales, like a transformer's."""
    r = np.random.default_rng(seed)
    u, v = (np.linalg.qr(r.standard_normal((k, k)))[0] for _ in range(2))
    mix = (u * np.exp(-np.arange(k) / 32)) @ v
    return (r.standard_normal((n, k)) @ mix * r.uniform(0.2, 3.0, k)).astype(np.float32)


def out_err(x, w, w_hat) -> float:
    return float(np.linalg.norm(x @ (w - w_hat).T))


def gptq_weights(w, x, spec, **kw):
    codes, scales, zeros = gptq_quantize(w, hessian([x]), spec, **kw)
    k = w.shape[1]
    return dequantize(pack(codes, spec.bits), scales, zeros, spec.bits, k // scales.shape[1], k)


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (3, 64, False), (4, 0, False), (8, 128, True)])
def test_gptq_beats_rtn_on_correlated_activations(bits, group, sym):
    x = correlated_x()
    w = RNG.standard_normal((64, 128)).astype(np.float32)
    spec = QuantSpec(bits, group, sym)
    rtn_err = out_err(x, w, rtn(w, spec)[3])
    gptq_err = out_err(x, w, gptq_weights(w, x, spec))
    act_err = out_err(x, w, gptq_weights(w, x, spec, act_order=True, block_size=32))
    assert gptq_err < 0.8 * rtn_err, (gptq_err, rtn_err)
    assert act_err < 0.8 * rtn_err, (act_err, rtn_err)


def test_gptq_codes_stay_in_the_plain_group_format():
    """Every GPTQ weight is exactly (code - zero) * scale of its own group, act_order included."""
    x = correlated_x(512, 64)
    w = RNG.standard_normal((8, 64)).astype(np.float32)
    spec = QuantSpec(3, 16, False)
    for act_order in (False, True):
        codes, scales, zeros = gptq_quantize(w, hessian([x]), spec, act_order=act_order, block_size=24)
        assert codes.max() <= 7 and scales.shape == zeros.shape == (8, 4)
        w_hat = dequantize(pack(codes, 3), scales, zeros, 3, 16, 64)
        assert np.abs(w_hat - w).max() < np.repeat(scales, 16, 1).max() * 4


def test_gptq_handles_dead_input_channels():
    x = correlated_x(512, 64)
    x[:, [3, 40]] = 0  # channels that never fire: H has zero rows
    w = RNG.standard_normal((16, 64)).astype(np.float32)
    w_hat = gptq_weights(w, x, QuantSpec(4, 32, True))
    assert np.isfinite(w_hat).all()
    assert out_err(x, w, w_hat) < out_err(x, w, rtn(w, QuantSpec(4, 32, True))[3])


def test_gptq_beats_rtn_on_the_tiny_models_real_activations(tiny, calib_file):
    """Layer reconstruction error on the activations the tiny Llama produces from calibration text."""
    from edgec.calibration import token_windows, read_text

    graph = copy.deepcopy(tiny.graph)
    windows = token_windows(read_text(calib_file), tiny.tokenizer, 8, 64)
    seen = {}

    def visit(node, inputs):
        seen[node.inputs[1].name] = np.concatenate([s[0].reshape(-1, s[0].shape[-1]) for s in inputs])

    names = ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight")
    run_calibration(graph, windows, lambda n: n.op == "linear" and n.inputs[1].name in names, visit)
    spec = QuantSpec(4, 32, True)
    for name in names:
        x, w = seen[name], np.asarray(graph.weights[name])
        rtn_err, gptq_err = out_err(x, w, rtn(w, spec)[3]), out_err(x, w, gptq_weights(w, x, spec))
        assert gptq_err < 0.9 * rtn_err, (name, gptq_err, rtn_err)


def test_gptq_pass_quantizes_in_order_and_shares_hessians(tiny, calib_file, fp32_logits):
    progress = []
    graph = copy.deepcopy(tiny.graph)
    ctx = PassContext(tiny.tokenizer, CalibConfig(str(calib_file), 4, 64), progress.append)
    PassManager(context=ctx).run(graph, [("gptq", {"bits": 4, "group_size": 32, "act_order": True})])
    steps = [m for m in progress if m.startswith("gptq:")]
    assert len(steps) == 8  # per layer: q+k+v, o, gate+up, down
    assert "q_proj" in steps[0] and "k_proj" in steps[0] and "v_proj" in steps[0]
    assert graph.op_counts()["dequantize"] == 14
    PassManager().run(graph, LOWER)
    rtn_graph = compress(tiny, calib_file, [("quantize", {"bits": 4, "group_size": 32})])
    assert rel(logits(graph), fp32_logits) < 1.05 * rel(logits(rtn_graph), fp32_logits)


# ----------------------------------------------------------------------------- AWQ
def test_awq_scales_beat_rtn_on_outlier_channels():
    x = correlated_x(2048, 128)
    x[:, [7, 50, 99]] *= 30  # the salient channels AWQ is about
    w = RNG.standard_normal((64, 128)).astype(np.float32)
    spec = QuantSpec(4, 32, False)
    s, err, base = search_scales(w, hessian([x]), np.abs(x).mean(0), spec, grid=20)
    assert err < 0.8 * base, (err, base)
    assert s[[7, 50, 99]].min() > np.median(s)  # the outlier channels are scaled up
    # The searched error is the real output error of (x / s) Q(W diag(s))^T (H = 2/n X^T X).
    w_eff = rtn(w * s, spec)[3] / s
    assert out_err(x, w, w_eff) ** 2 == pytest.approx(err * len(x) / 2, rel=1e-3)


def test_awq_pass_folds_scales_and_keeps_logits(tiny, calib_file, fp32_logits):
    g = compress(tiny, calib_file, [("awq", {"bits": 4, "group_size": 32})])
    s = g.record.summary
    assert "quantized 14 linears to int4 g32 asym" in s and "of RTN" in s
    # q/k/v and gate/up fold into their rms_norms, down into up_proj; o_proj (GQA) would get a mul
    folds = re.search(r"folded into (\d+) norms \+ (\d+) up projections, (\d+) mul", s)
    assert folds and int(folds[1]) >= 2
    assert sum(n.op == "mul" and n.output.name.endswith(".awq") for n in g.nodes) == int(folds[3])
    assert sum(n.op == "rms_norm" and n.inputs[1].name.endswith(".awq") for n in g.nodes) == int(folds[1])
    rtn_g = compress(tiny, calib_file, [("quantize", {"bits": 4, "group_size": 32, "symmetric": False})])
    assert rel(logits(g), fp32_logits) < 1.05 * rel(logits(rtn_g), fp32_logits)


# ----------------------------------------------------------------------------- ONNX lowering
@pytest.mark.parametrize("passes,bits_attr", [
    ([("quantize", {"bits": 8, "group_size": 0})], 8),
    ([("quantize", {"bits": 4, "group_size": 32, "symmetric": False})], 4),
    ([("gptq", {"bits": 3, "group_size": 64, "symmetric": False})], 4),  # 3-bit runs as 4-bit nibbles
    ([("quantize", {"bits": 2, "group_size": 16, "symmetric": False})], 2),
    ([("awq", {"bits": 4, "group_size": 64})], 4),
    ([("quantize", {"bits": 4, "group_size": 32, "clip_search": True})], 4),  # sym: negative scales
    ([("gptq", {"bits": 4, "group_size": 32, "act_order": True, "clip_search": True})], 4),
    ([("awq", {"bits": 4, "group_size": 32, "clip_search": True})], 4),
])
def test_onnx_uses_matmulnbits_and_matches_the_interpreter(tmp_path, tiny, calib_file, passes, bits_attr):
    g = compress(tiny, calib_file, passes)
    ref = logits(g)
    # The default (accuracy_level 4) computes with int8 activations: close, not exact.
    fast, model = onnx_run(g, tmp_path / "fast", accuracy_level=None)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 14 and all(n.domain == "com.microsoft" for n in nbits)
    assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {bits_attr}
    assert any(o.domain == "com.microsoft" for o in model.opset_import)
    # No dequantized weight is materialized (nor transposed): the fused linears read the packed data.
    dq = {n.output.name for n in g.nodes if n.op == "dequantize"}
    assert not dq & {name for n in model.graph.node for name in [*n.input, *n.output]}
    assert rel(fast, ref) < 0.1
    # fp32 compute (accuracy_level 0) matches the interpreter; 8-bit then runs as weights dequantized at load
    exact, model = onnx_run(g, tmp_path / "exact", accuracy_level=0)
    assert op_count(model, "MatMulNBits") == (0 if bits_attr == 8 else 14)
    np.testing.assert_allclose(exact, ref, atol=1e-4, rtol=1e-4)


def test_onnx_falls_back_to_standard_ops(tmp_path, tiny, calib_file):
    """Group size 8 (no MatMulNBits block) and a dequantized table read by an embedding still run."""
    g = compress(tiny, calib_file, [("quantize", {"bits": 3, "group_size": 8, "symmetric": False})])
    out, model = onnx_run(g, tmp_path / "g8")
    assert op_count(model, "MatMulNBits") == 0 and op_count(model, "Mod") == 14
    np.testing.assert_allclose(out, logits(g), atol=1e-4, rtol=1e-4)

    tied, f = tied_graph()
    from edgec.passes import get_pass

    get_pass("quantize").fn(tied, bits=4, group_size=16, symmetric=False, lm_head=True, skip=[])
    compile_graph(tied, tmp_path / "tied", accuracy_level=0)
    model = onnx.load(tmp_path / "tied" / "model.onnx", load_external_data=False)
    assert op_count(model, "MatMulNBits") == 2  # both linears fused
    # the embedding gathers packed rows (no fp32 copy of the table is folded at load)
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert {n.input[0] for n in gathers} >= {"embed.weight.q4", "embed.weight.scales", "embed.weight.zeros"}
    got = OnnxExecutor(tmp_path / "tied").run(f)["logits"]
    np.testing.assert_allclose(got, interpret(tied, f)["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits,group,hidden", [(4, 16, 32), (4, 16, 40), (8, 16, 40), (8, 0, 32), (3, 32, 40)])
def test_quantized_tied_embedding_gathers_packed_rows(tmp_path, bits, group, hidden):
    """A quantized tied table: the lookup dequantizes only the gathered rows (padded groups sliced off)."""
    tied, f = tied_graph(hidden)
    from edgec.passes import get_pass

    get_pass("quantize").fn(tied, bits=bits, group_size=group, symmetric=False, lm_head=True, skip=[])
    compile_graph(tied, tmp_path / "tied", accuracy_level=0)
    model = onnx.load(tmp_path / "tied" / "model.onnx", load_external_data=False)
    got = OnnxExecutor(tmp_path / "tied").run(f)["logits"]
    assert op_count(model, "MatMulNBits") == (0 if bits == 8 else 2)  # 8-bit fp32 compute: folded at load
    assert {n.input[0] for n in model.graph.node if n.op_type == "Gather"} >= {
        f"embed.weight.q{bits}", "embed.weight.scales", "embed.weight.zeros"}
    np.testing.assert_allclose(got, interpret(tied, f)["logits"], atol=1e-4, rtol=1e-4)


def test_int4_recipe_keeps_an_int8_head(tmp_path, tiny_llama):
    """`int4`: int4 body, int8 per-channel lm_head read by MatMulNBits and by the embedding's row gather."""
    import json

    import edgec

    out = edgec.build(tiny_llama, tmp_path / "int4", recipe="int4")
    report = json.loads((out / "report.json").read_text())
    counts = next(p["counts"] for p in report["passes"] if p["pass"] == "quantize")
    assert counts["quantized_linears"] == 15  # 14 int4, the lm_head int8 (the MatMulNBits bits below)
    model = onnx.load(out / "model" / "model.onnx", load_external_data=False)
    kernels = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert sorted(a.i for n in kernels for a in n.attribute if a.name == "bits") == [4] * 8 + [8]
    head_fp32 = edgec.load(edgec.build(tiny_llama, tmp_path / "int4-rtn", recipe="int4-rtn"))
    ids = list(IDS[0])
    # the int8 head adds about int8's error (~0.03 on this model) to the int4 body's
    assert rel(edgec.load(out).logits(ids), head_fp32.logits(ids)) < 0.03
    with pytest.raises(EdgecError, match="need lm_head = true"):
        from edgec.passes import get_pass

        get_pass("quantize").fn(Graph(), bits=4, group_size=32, symmetric=True, lm_head=False, lm_head_bits=8,
                                lm_head_group_size=None, skip=[])


def test_build_int4_gptq_artifact(tmp_path, tiny_llama, calib_file):
    """The named recipe end to end through edgec.build: calibrated, MatMulNBits, smaller, close logits."""
    import json

    import edgec

    out = edgec.build(tiny_llama, tmp_path / "gptq", recipe="int4-gptq", calib=calib_file, calib_samples=16,
                      calib_seqlen=64)
    report = json.loads((out / "report.json").read_text())
    summary = next(p["summary"] for p in report["passes"] if p["pass"] == "gptq")
    assert summary.startswith("quantized 14 linears to int4 g128 sym")
    model = onnx.load(out / "model" / "model.onnx", load_external_data=False)
    assert op_count(model, "MatMulNBits") == 8  # 14 linears; FUSE merged q/k/v and gate/up
    fp32 = edgec.build(tiny_llama, tmp_path / "fp32")
    size = lambda p: (p / "model" / "model.onnx.data").stat().st_size  # noqa: E731
    assert size(out) < 0.45 * size(fp32)  # the fp32 embedding and head stay
    ids = list(IDS[0])
    a, b = edgec.load(out).logits(ids), edgec.load(fp32).logits(ids)
    # g128 is per-channel on the tiny model's K = 64/128 rows: far from fp32 on random weights,
    # but GPTQ must still beat round-to-nearest at the same settings.
    rtn = edgec.load(edgec.build(tiny_llama, tmp_path / "rtn", recipe="int4-rtn")).logits(ids)
    assert rel(a, b) < 0.9 * rel(rtn, b), (rel(a, b), rel(rtn, b))


def test_int4_speed_recipe_has_the_int4_layout_and_beats_it(tmp_path, tiny_llama, calib_file):
    """The speed recipe: int4's kernel layout (4-bit g128, no zero points, int8 head), GPTQ's quality."""
    import edgec

    kw = {"calib": calib_file, "calib_samples": 16, "calib_seqlen": 64}
    speed = edgec.build(tiny_llama, tmp_path / "speed", recipe="int4-speed", **kw)
    fast = edgec.build(tiny_llama, tmp_path / "int4", recipe="int4")
    layouts = []
    for art in (speed, fast):
        model = onnx.load(art / "model" / "model.onnx", load_external_data=False)
        layouts.append(sorted((a.i, len(n.input)) for n in model.graph.node if n.op_type == "MatMulNBits"
                              for a in n.attribute if a.name == "bits"))
    assert layouts[0] == layouts[1] and layouts[0].count((8, 3)) == 1  # the same kernels, one int8 head
    fp32 = edgec.build(tiny_llama, tmp_path / "fp32")
    ids = list(IDS[0])
    ref = edgec.load(fp32).logits(ids)
    a, b = edgec.load(speed).logits(ids), edgec.load(fast).logits(ids)
    assert rel(a, ref) < 0.9 * rel(b, ref), (rel(a, ref), rel(b, ref))


# ----------------------------------------------------------------------------- float16 scales
@pytest.mark.parametrize("name", ["quantize", "gptq", "awq"])
def test_fp16_scales_are_stored_half_and_chosen_among_float16(tiny, calib_file, fp32_logits, name):
    """scales = "fp16": every group scale is stored as float16 (half the bytes of the scales), chosen
    among float16 values before the codes, so the model is as close to fp32 as with float32 scales."""
    opts = {"bits": 4, "group_size": 32, "symmetric": False}
    g32 = compress(tiny, calib_file, [(name, opts)])
    g16 = compress(tiny, calib_file, [(name, {**opts, "scales": "fp16"})])
    dq = [n for n in g16.nodes if n.op == "dequantize"]
    assert dq and all(n.inputs[1].dtype == "float16" for n in dq)
    scales32 = sum(g32.weights.info(n.inputs[1].name).nbytes for n in g32.nodes if n.op == "dequantize")
    scales16 = sum(g16.weights.info(n.inputs[1].name).nbytes for n in dq)
    assert scales16 * 2 == scales32
    assert g16.weights.total_bytes() == g32.weights.total_bytes() - scales16
    assert "fp16 scales" in g16.record.summary
    err16, err32 = rel(logits(g16), fp32_logits), rel(logits(g32), fp32_logits)
    assert err16 < err32 * 1.1 + 1e-3, (err16, err32)


def test_gptq_fp16_scales_are_exact_float16_values():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 64)).astype(np.float32) * 0.05
    x = rng.standard_normal((256, 64)).astype(np.float32)
    spec = QuantSpec(4, 32, False, "float16")
    for clip in (False, True):
        _, sc, _ = gptq_quantize(w, hessian([x]), spec, clip_search=clip)
        np.testing.assert_array_equal(sc.astype(np.float16).astype(np.float32), sc)


def test_fp16_scale_range_limits():
    from edgec.ir.quant import storable_scales

    spec = QuantSpec(4, 32, True, "float16")
    tiny_s = storable_scales(np.array([1e-12, -1e-12, 0.1], np.float32), spec)  # underflow: the smallest fp16
    assert tiny_s[0] == 2.0 ** -24 and tiny_s[1] == -(2.0 ** -24) and tiny_s[2] == np.float32(np.float16(0.1))
    with pytest.raises(EdgecError, match='scales = "fp32"'):
        storable_scales(np.array([1e6], np.float32), spec)
    from edgec.passes.quantize import make_spec

    with pytest.raises(EdgecError, match="scales must be one of"):
        make_spec(4, 32, True, "bf16")


def test_only_and_skip_make_a_per_tensor_mix(tiny, calib_file):
    """`only` quantizes just the named tensors (here layer 0's down_proj at 6 bits), a second pass the rest:
    the per-tensor mix of llama.cpp's K-quant files."""
    g = compress(tiny, calib_file, [("gptq", {"bits": 6, "group_size": 32, "only": ["layers.0.mlp.down_proj"]}),
                                    ("quantize", {"bits": 4, "group_size": 32, "skip": ["layers.1.mlp"]})])
    bits = {n.inputs[0].name.rsplit(".", 1)[0]: n.attrs["bits"] for n in g.nodes if n.op == "dequantize"}
    assert bits.pop("model.layers.0.mlp.down_proj.weight") == 6
    assert set(bits.values()) == {4} and not any("layers.1.mlp" in k for k in bits)
    assert len(bits) == 14 - 1 - 3  # the 14 linears less the 6-bit one and layer 1's three MLP linears


def test_layers_select_llama_cpp_k_quant_layers(tiny, calib_file):
    """layers = "k-quant": llama.cpp's use_more_bits layers (first/last eighth, every third between); a
    list of indices works too, and anything else is a one-line error."""
    from edgec.passes.quantize import select_layers

    assert sorted(select_layers("k-quant", 30)) == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert select_layers("k-quant", 2) == {1}  # the tiny model: 2 // 8 = 0, so layer 1 (the last eighth)
    g = compress(tiny, calib_file, [("quantize", {"bits": 6, "group_size": 32, "only": ["mlp.down_proj"],
                                                  "layers": "k-quant"}),
                                    ("quantize", {"bits": 4, "group_size": 32, "layers": [0]})])
    bits = {n.inputs[0].name: n.attrs["bits"] for n in g.nodes if n.op == "dequantize"}
    assert bits.pop("model.layers.1.mlp.down_proj.weight.q6") == 6
    assert set(bits.values()) == {4} and all(".layers.0." in k for k in bits) and len(bits) == 7
    with pytest.raises(EdgecError, match="layers must be a list of layer indices"):
        compress(tiny, calib_file, [("quantize", {"bits": 4, "layers": "every-other"})])
