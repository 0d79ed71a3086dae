"""Mixture-of-experts layers in the C runtime (runtime/moe.c): the `moe` kernel against the interpreter, its
refusals at build time, the routing-trace hook (EDGEC_MOE_TRACE), and cold experts under a memory budget
(edgec/offload.py plans them, targets/c/offload_moe.py writes cold.bin, runtime/offload.c reads them).

Whole tiny models against transformers: tests/test_moe.py (the "c" backend among the ones that lower moe).
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import edgec
from edgec.backends import get_backend
from edgec.errors import EdgecError, UnsupportedModelError
from edgec.ir import Graph, interpret
from edgec.ir.ops_moe import expert_act, run_experts, top_k
from edgec.offload import TRACE_ENV, read_routing_trace, write_routing_trace
from helpers import IDS, compile_and_open
from tiny_moe import save_tiny_moe

QEMU = shutil.which("qemu-aarch64")
CROSS = shutil.which("aarch64-linux-gnu-gcc")
RNG = np.random.default_rng(0)


def rand(*shape, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, shape).astype(np.float32)


def moe_graph(layers=2, experts=4, top_k=2, hidden=8, inter=6, normalize=True, act="silu", fp16=False) -> Graph:
    """x [seq, hidden] through `layers` moe layers in a row (each its own router and experts)."""
    g = Graph()
    x = g.add_input("x", "float32", ("seq", hidden))
    h = x
    for i in range(layers):
        arrays = [rand(experts, hidden, lo=-3, hi=3), rand(experts, 2 * inter, hidden), rand(experts, hidden, inter)]
        ws = []
        for name, a in zip(("router", "gate_up", "down"), arrays):
            if fp16:
                w = g.add_weight(f"l{i}.{name}.fp16", a.astype(np.float16))
                ws.append(g.op("cast", w, dtype="float32"))
            else:
                ws.append(g.add_weight(f"l{i}.{name}", a))
        h = g.op("moe", h, *ws, top_k=top_k, normalize=normalize, act=act)
    h.name = "y"
    g.outputs = [h]
    return g


def weights_of(g: Graph, layer: int) -> list[np.ndarray]:
    """router, gate_up, down of moe layer `layer` as float32 (through an fp16 weight's cast)."""
    node = [n for n in g.nodes if n.op == "moe"][layer]
    out = []
    for v in node.inputs[1:4]:
        w = v if v.kind == "weight" else v.producer.inputs[0]
        out.append(np.asarray(g.weight(w), np.float32))
    return out


def reference(g: Graph, x: np.ndarray, experts_of=None) -> np.ndarray:
    """The graph's moe layers in numpy, one token row at a time; experts_of(layer, row) -> the experts to take
    instead of the router's top-k (a routing trace), their weights still the router's softmax scores."""
    nodes = [n for n in g.nodes if n.op == "moe"]
    h = x
    for i, node in enumerate(nodes):
        router, gate_up, down = weights_of(g, i)
        a = node.attrs
        inter = down.shape[2]
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            logits = h[t] @ router.T
            s = np.exp(logits - logits.max())
            s /= s.sum()
            idx = experts_of(i, t) if experts_of else top_k(s, a["top_k"])[1]
            w = s[idx] / s[idx].sum() if a["normalize"] else s[idx]
            for e, we in zip(idx, w):
                gu = gate_up[e] @ h[t]
                out[t] += we * (down[e] @ (expert_act(gu[:inter], a["act"]) * gu[inter:]))
        h = out
    return h


# ----------------------------------------------------------------------------- the kernel
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_moe_layers_match_the_interpreter_in_prefill_and_decode(fp16, tmp_path):
    """Two moe layers of 8 experts, top-3: 1 row (decode), 5 and 40 rows (prefill: the rows grouped by expert,
    every expert reached); fp16 experts and routers run through the fp16 kernels, their casts folded."""
    g = moe_graph(experts=8, top_k=3, fp16=fp16)
    ex = compile_and_open("c", g, tmp_path)
    src = (tmp_path / "src" / "model.c").read_text()
    assert src.count("ec_moe(rt,") == 2 and ("EC_F16" in src) == fp16 and "ec_cast(" not in src
    for seq in (1, 5, 40):
        x = rand(seq, 8)
        want = interpret(g, {"x": x})["y"]
        got = ex.run({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, reference(g, x), rtol=1e-4, atol=1e-5)


def test_routed_scaling_and_activations(tmp_path):
    g = moe_graph(layers=1, experts=5, top_k=2, normalize=False, act="gelu")
    node = next(n for n in g.nodes if n.op == "moe")
    if "routed_scaling" not in node.attrs:
        pytest.skip("this IR's moe has no routed_scaling")
    node.attrs["routed_scaling"] = 2.5
    ex = compile_and_open("c", g, tmp_path)
    x = rand(7, 8)
    np.testing.assert_allclose(ex.run({"x": x})["y"], interpret(g, {"x": x})["y"], rtol=1e-5, atol=1e-5)


def _quantized_experts(g: Graph) -> Graph:
    """The moe's gate_up read through reshape(dequantize(packed, scales, zeros)) (passes/quantize.py's form)."""
    from edgec.ir.quant import QuantSpec, quantize_rtn

    node = next(n for n in g.nodes if n.op == "moe")
    w = node.inputs[2]
    e, r, k = w.shape
    spec = QuantSpec(4, 8, symmetric=False)
    packed, scales, zeros = quantize_rtn(np.asarray(g.weight(w)).reshape(e * r, k), spec)
    dq = g.make_node("dequantize", [g.add_weight("q", packed), g.add_weight("s", scales), g.add_weight("z", zeros)],
                     {"bits": 4, "group_size": 8, "k": k})
    shaped = g.make_node("reshape", [dq.output], {"shape": [e, r, k]})
    g.insert_before(node, dq)
    g.insert_before(node, shaped)
    node.inputs = [shaped.output if v is w else v for v in node.inputs]
    return g


def router_graph(experts=16, hidden=8, inter=4, **attrs) -> Graph:
    """One moe layer of `experts` with the router attrs (a "score" bias when attrs name it)."""
    g = Graph()
    x = g.add_input("x", "float32", ("seq", hidden))
    ws = [g.add_weight(n, a) for n, a in (("router", rand(experts, hidden, lo=-1.5, hi=1.5)),
                                          ("gate_up", rand(experts, 2 * inter, hidden)),
                                          ("down", rand(experts, hidden, inter)))]
    if "score" in attrs.get("biases", ()):
        ws.append(g.add_weight("score_bias", rand(experts, lo=-0.3, hi=0.3)))
    y = g.op("moe", x, *ws, **attrs)
    y.name = "y"
    g.outputs = [y]
    return g


@pytest.mark.parametrize("attrs", [
    dict(top_k=4, scoring="sigmoid", n_group=4, topk_group=2, routed_scaling=2.5, biases=("score",)),
    dict(top_k=3, scoring="sigmoid", normalize=False, biases=("score",)),
    dict(top_k=3, scoring="softmax", n_group=4, topk_group=2),
    dict(top_k=2, scoring="sparsemixer", normalize=False, jitter_eps=0.1),
], ids=["deepseek_v3", "sigmoid-score-bias", "softmax-groups", "sparsemixer"])
def test_other_routers_match_the_interpreter(attrs, tmp_path):
    """Sigmoid scores, a score bias that only chooses, grouped top-k and Phi-MoE's sparsemixer (a jitter wide enough
    that about half its picks mix several experts) on 16 experts, in decode and prefill: the interpreter's experts
    and weights (the bias and the groups change the experts of most of the 40 rows)."""
    g = router_graph(**attrs)
    ex = compile_and_open("c", g, tmp_path)
    for seq in (1, 40):
        x = rand(seq, 8, lo=-2, hi=2)
        np.testing.assert_allclose(ex.run({"x": x})["y"], interpret(g, {"x": x})["y"], rtol=1e-5, atol=1e-5)


def test_a_routing_trace_weights_its_experts_by_the_unbiased_scores(tmp_path, monkeypatch):
    """DeepSeek-V3's router under a trace: the trace's experts, each weighted by its sigmoid score (not the score
    bias's), renormalised and scaled."""
    attrs = dict(top_k=3, scoring="sigmoid", n_group=4, topk_group=2, routed_scaling=2.5, biases=("score",))
    g = router_graph(experts=8, **attrs)
    ids = np.stack([RNG.permutation(8)[:3] for _ in range(5)])[:, None]  # [5 rows, 1 layer, 3]
    monkeypatch.setenv(TRACE_ENV, str(write_routing_trace(tmp_path / "trace.bin", ids, 8)))
    ex = compile_and_open("c", g, tmp_path / "art")
    router, gate_up, down = weights_of(g, 0)
    x = rand(5, 8)
    s = 1 / (1 + np.exp(-(x @ router.T)))
    idx = ids[:, 0]
    w = np.take_along_axis(s, idx, -1)
    w = (w / w.sum(-1, keepdims=True) * 2.5).astype(np.float32)
    np.testing.assert_allclose(ex.run({"x": x})["y"], run_experts(x, idx, w, gate_up, down, "silu"), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("change, needle", [
    (lambda g, n: n.attrs.update(surprise=1), "unknown"),
    (lambda g, n: _quantized_experts(g), "quantized MoE experts are not supported by the C runtime yet"),
], ids=["unknown-attr", "quantized"])
def test_what_the_kernel_does_not_serve_fails_the_build_naming_it(change, needle, tmp_path):
    g = moe_graph(layers=1)
    change(g, next(n for n in g.nodes if n.op == "moe"))
    with pytest.raises(UnsupportedModelError, match="'moe'") as err:
        compile_and_open("c", g, tmp_path)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "libedgec.so").exists()


def test_too_many_experts_or_a_top_k_beyond_them_fail_the_build(tmp_path):
    from edgec.targets.c.codegen import generate

    g = moe_graph(layers=1, experts=257, top_k=2, hidden=4, inter=2)
    with pytest.raises(UnsupportedModelError, match="257 experts .*at most 256"):
        compile_and_open("c", g, tmp_path)
    g = moe_graph(layers=1)
    next(n for n in g.nodes if n.op == "moe").attrs["top_k"] = 5  # the IR's verifier refuses it before (checked)
    with pytest.raises(UnsupportedModelError, match="top_k=5 of 4 experts"):
        generate(g)


@pytest.mark.parametrize("attrs, needle", [
    (dict(scoring="tanh"), "router scoring 'tanh'"),
    (dict(n_group=3, topk_group=1), "cannot be split into n_group=3 groups"),
    (dict(n_group=2, topk_group=1, top_k=3), "top_k=3 exceeds the 2 experts of the kept groups"),
    (dict(scoring="sparsemixer", n_group=2, topk_group=1), "sparsemixer router picks exactly 2 experts"),
], ids=["scoring", "groups", "top-k-beyond-groups", "grouped-sparsemixer"])
def test_routers_the_op_does_not_define_fail_the_build(attrs, needle):
    """Routers the op does not define (the IR's verifier refuses them before): the code generator refuses them too."""
    from edgec.targets.c.codegen import generate

    g = moe_graph(layers=1)
    next(n for n in g.nodes if n.op == "moe").attrs.update(attrs)
    with pytest.raises(UnsupportedModelError, match="'moe'") as err:
        generate(g)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- routing traces
def test_a_routing_trace_replaces_the_routers_choice(tmp_path, monkeypatch):
    g = moe_graph(layers=2, experts=6, top_k=2)
    ids = np.stack([np.stack([RNG.permutation(6)[:2] for _ in range(2)]) for _ in range(7)])  # [7 rows, 2, 2]
    trace = write_routing_trace(tmp_path / "trace.bin", ids, 6)
    back, experts = read_routing_trace(trace)
    assert experts == 6 and np.array_equal(back, ids)
    monkeypatch.setenv(TRACE_ENV, str(trace))
    ex = compile_and_open("c", g, tmp_path / "art")
    x1, x2 = rand(4, 8), rand(5, 8)  # rows 0-3, then 4-6 and the first two again (the trace starts over)
    rows = [0, 1, 2, 3, 4, 5, 6, 0, 1]
    np.testing.assert_allclose(ex.run({"x": x1})["y"], reference(g, x1, lambda i, t: ids[rows[t], i]), atol=1e-5)
    np.testing.assert_allclose(ex.run({"x": x2})["y"], reference(g, x2, lambda i, t: ids[rows[4 + t], i]), atol=1e-5)


@pytest.mark.parametrize("ids, experts, needle", [
    (np.zeros((3, 1, 2), np.int64) + [0, 1], 4, "1 layers of top-2 of 4 experts; this model has 2 moe layers"),
    (np.zeros((3, 2, 3), np.int64) + [0, 1, 2], 4, "top-3 of 4 experts"),
    (np.zeros((3, 2, 2), np.int64) + [0, 1], 5, "top-2 of 5 experts"),
], ids=["layers", "top-k", "experts"])
def test_a_trace_of_the_wrong_shape_is_refused(ids, experts, needle, tmp_path, monkeypatch):
    g = moe_graph(layers=2, experts=4, top_k=2)
    compile_and_open("c", g, tmp_path / "art")
    trace = write_routing_trace(tmp_path / "t.bin", ids, experts)
    monkeypatch.setenv(TRACE_ENV, str(trace))
    with pytest.raises(EdgecError, match=needle) as err:
        get_backend("c").open(tmp_path / "art")
    assert "\n" not in str(err.value) and TRACE_ENV in str(err.value)


def test_damaged_trace_files_are_refused(tmp_path, monkeypatch):
    g = moe_graph(layers=1, experts=4, top_k=2)
    compile_and_open("c", g, tmp_path / "art")
    good = write_routing_trace(tmp_path / "t.bin", np.zeros((3, 1, 2), np.int64) + [0, 1], 4).read_bytes()
    for name, data, needle in (("short", good[:-4], "size"), ("magic", b"X" + good[1:], "not a routing trace"),
                               ("range", good[:-4] + (9).to_bytes(4, "little"), "out of range"),
                               ("twice", good[:-8] + (1).to_bytes(4, "little") * 2, "twice")):
        (tmp_path / name).write_bytes(data)
        monkeypatch.setenv(TRACE_ENV, str(tmp_path / name))
        with pytest.raises(EdgecError, match=needle):
            get_backend("c").open(tmp_path / "art")
    with pytest.raises(EdgecError, match="twice"):
        write_routing_trace(tmp_path / "x", np.zeros((1, 1, 2), np.int64), 4)


# ----------------------------------------------------------------------------- whole models
@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    return save_tiny_moe("mixtral", tmp_path_factory.mktemp("hf") / "mixtral")


@pytest.fixture(scope="module")
def c_mixtral(mixtral, tmp_path_factory):
    return edgec.build(mixtral, tmp_path_factory.mktemp("c") / "fp16", backend="c", recipe="fp16")


def run_ids(art, *extra, runner=(), env=None, n=12):
    cmd = [*runner, str(art / "model" / "edgec-run"), str(art), "--ids", ",".join(map(str, IDS)), "-n", str(n), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return [int(t) for t in proc.stdout.split()], proc.stderr


def test_fp16_mixtral_matches_the_reference_backend(mixtral, c_mixtral, tmp_path):
    ref = edgec.load(edgec.build(mixtral, tmp_path / "ref", backend="reference", recipe="fp16"))
    c = edgec.load(c_mixtral)
    a, b = c.logits(IDS), ref.logits(IDS)
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max())
    assert c.generate(IDS, 12) == ref.generate(IDS, 12) == run_ids(c_mixtral)[0]


def test_profile_build_times_each_moe_layer(mixtral, tmp_path):
    art = edgec.build(mixtral, tmp_path / "prof", backend="c", recipe="fp32", backend_options={"profile": True})
    model = edgec.load(art)
    model.generate(IDS, 3)
    times = model.executor.op_times()
    assert {k: times[k][0] for k in times if k.startswith("moe@")} == {"moe@0": 3, "moe@1": 3}  # prefill, 2 decodes
    assert all(times[k][1] > 0 for k in ("moe@0", "moe@1"))


@pytest.mark.skipif(not (QEMU and CROSS), reason="needs qemu-user and gcc-aarch64-linux-gnu (.ci/run installs them)")
def test_aarch64_moe_build_under_qemu_matches_x86(mixtral, c_mixtral, tmp_path):
    art = edgec.build(mixtral, tmp_path / "rpi5", device="rpi5", backend="c", recipe="fp16")
    assert run_ids(art, runner=[QEMU])[0] == run_ids(c_mixtral)[0]


# ----------------------------------------------------------------------------- cold experts under a memory budget
def offload_meta(art) -> dict:
    return json.loads((art / "model" / "c.json").read_text())["offload"]


@pytest.fixture(scope="module")
def qwen2_moe(tmp_path_factory):
    """Qwen2-MoE: a shared expert (a dense FFN that stays resident) beside the routed ones."""
    return save_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("hf") / "qwen2_moe")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(np.random.default_rng(0).choice(["a", "b c", "the", "dog.", "xyz", "Hello"], 3000)))
    return path


@pytest.mark.parametrize("arch, recipe, mode", [("mixtral", "fp16", "sparse"), ("mixtral", "fp16", "stream"),
                                                ("qwen2_moe", "fp32", "sparse"), ("qwen2_moe", "fp32", "stream")])
def test_cold_experts_compute_what_the_resident_build_computes(arch, recipe, mode, mixtral, qwen2_moe, tmp_path):
    """Without a routing profile: no expert resident in sparse mode either, every beyond the minimum a cache
    slot. The outputs are identical, bit for bit, to the build that holds every expert (same kernels, same bytes,
    same order of the sums); stream mode reads every routed expert each call, sparse mode reuses cached ones."""
    hf = {"mixtral": mixtral, "qwen2_moe": qwen2_moe}[arch]
    dense = edgec.load(edgec.build(hf, tmp_path / "dense", backend="c", recipe=recipe))
    art = edgec.build(hf, tmp_path / mode, backend="c", recipe=recipe, memory_budget="70%", offload=mode)
    meta = offload_meta(art)
    plan = meta["plan"]
    assert plan["kind"] == "experts" and plan["mode"] == mode and plan["cold_experts"] == 8 and not plan["profiled"]
    assert plan["resident_mb"] + plan["cache_mb"] <= plan["budget_mb"] + 1e-6
    assert (art / "model" / "cold.bin").stat().st_size == meta["bytes"] > 0
    assert plan["cold_file_mb"] == round(meta["bytes"] / 1e6, 3)
    model = edgec.load(art)
    np.testing.assert_array_equal(model.logits(IDS), dense.logits(IDS))
    assert model.generate(IDS, 16) == dense.generate(IDS, 16)
    s = model.executor.cold_stats()
    assert s["moe_calls"] > 0 and s["experts_resident"] == 0 and s["bundles_read"] > 0 and s["direct"] == 1
    assert s["bytes_read"] == s["bundles_read"] * plan["slot_bytes"] and plan["slot_bytes"] % 4096 == 0
    if mode == "stream":
        assert s["cache_hits"] == 0 and s["bundles_read"] == s["experts_computed"]
    else:
        assert s["cache_hits"] > 0 and s["bundles_read"] + s["cache_hits"] == s["experts_computed"]


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    """GPT-OSS: a biased router, biased experts and the clamped SwiGLU."""
    return save_tiny_moe("gpt_oss", tmp_path_factory.mktemp("hf") / "gpt_oss")


@pytest.mark.parametrize("recipe, mode", [("fp16", "sparse"), ("fp32", "stream")])
def test_cold_experts_with_biases_and_clamped_swiglu_compute_what_the_resident_build_computes(recipe, mode, gpt_oss,
                                                                                              tmp_path):
    """GPT-OSS's experts read cold through the expert slots: the biases (fp16 ones with the fp16 recipe) stay
    resident, every expert's, and the logits and greedy tokens are those of the build that holds every expert."""
    dense_art = edgec.build(gpt_oss, tmp_path / "dense", backend="c", recipe=recipe)
    art = edgec.build(gpt_oss, tmp_path / mode, backend="c", recipe=recipe, memory_budget="70%", offload=mode)
    plan = offload_meta(art)["plan"]
    assert plan["kind"] == "experts" and plan["cold_experts"] == 8
    src = (art / "model" / "src" / "model.c").read_text()
    assert src.count("EC_MOE_CLAMPED_SWIGLU") == 2 and ("{EC_F16, ((const uint16_t *)" in src) == (recipe == "fp16")
    dense, model = edgec.load(dense_art), edgec.load(art)
    np.testing.assert_array_equal(model.logits(IDS), dense.logits(IDS))
    assert model.generate(IDS, 16) == dense.generate(IDS, 16)
    s = model.executor.cold_stats()
    assert s["moe_calls"] > 0 and s["experts_resident"] == 0 and s["bundles_read"] > 0


def test_cold_experts_under_a_grouped_sigmoid_router_compute_what_the_resident_build_computes(tmp_path):
    """DeepSeek-V3 (sigmoid scores, a score bias, grouped top-k, routed scaling) with a memory budget: the score bias
    stays resident with the router, and the greedy tokens are those of the build that holds every expert."""
    hf = save_tiny_moe("deepseek_v3", tmp_path / "hf")
    dense = edgec.load(edgec.build(hf, tmp_path / "dense", backend="c", recipe="fp16"))
    art = edgec.build(hf, tmp_path / "sparse", backend="c", recipe="fp16", memory_budget="70%")
    plan = offload_meta(art)["plan"]
    assert plan["kind"] == "experts" and plan["cold_experts"] > 0
    assert (art / "model" / "src" / "model.c").read_text().count("EC_MOE_SIGMOID") == 2
    model = edgec.load(art)
    assert model.generate(IDS, 16) == dense.generate(IDS, 16)
    np.testing.assert_array_equal(model.logits(IDS), dense.logits(IDS))
    s = model.executor.cold_stats()
    assert s["moe_calls"] > 0 and s["bundles_read"] > 0


def test_the_most_often_routed_experts_stay_resident(qwen2_moe, calib, tmp_path):
    """With calibration text the routing profile ranks the experts: the plan keeps the most often routed ones (across
    both layers) resident, and the run computes them from memory; outputs equal the resident build's."""
    art = edgec.build(qwen2_moe, tmp_path / "prof", backend="c", recipe="fp32", memory_budget="75%", calib=calib,
                      calib_samples=8, calib_seqlen=64)
    plan = offload_meta(art)["plan"]
    prof = json.loads((art / "activations.json").read_text())["experts"]
    assert plan["profiled"] and plan["hot_experts"] >= 1
    ranked = sorted(((-r, i, e) for i, p in enumerate(prof) for e, r in enumerate(p["routed"])))
    assert sorted((i, e) for _, i, e in ranked[:plan["hot_experts"]]) == \
        sorted((i, e) for i, layer in enumerate(plan["layers"]) for e in layer["hot"])
    dense = edgec.load(edgec.build(qwen2_moe, tmp_path / "dense", backend="c", recipe="fp32"))
    model = edgec.load(art)
    np.testing.assert_array_equal(model.logits(IDS), dense.logits(IDS))
    s = model.executor.cold_stats()
    assert 0 < s["experts_resident"] < s["experts_computed"]
    assert s["experts_resident"] + s["cache_hits"] + s["bundles_read"] == s["experts_computed"]


def test_a_routing_trace_drives_offload_and_stream_alike(mixtral, c_mixtral, tmp_path):
    """The same trace through edgec-run: the all-resident, offloaded and streaming builds give the same tokens; the
    stream build reads every routed expert of every call, the offloaded one fewer."""
    ids = np.stack([np.stack([RNG.permutation(4)[:2] for _ in range(2)]) for _ in range(64)])
    trace = write_routing_trace(tmp_path / "trace.bin", ids, 4)
    env = {**__import__("os").environ, TRACE_ENV: str(trace)}
    sparse = edgec.build(mixtral, tmp_path / "sparse", backend="c", recipe="fp16", memory_budget="80%")
    stream = edgec.build(mixtral, tmp_path / "stream", backend="c", recipe="fp16", memory_budget="80%",
                         offload="stream")
    want, _ = run_ids(c_mixtral, env=env)
    assert want != run_ids(c_mixtral)[0]  # the trace, not the router, chose the experts
    got_sparse, err_sparse = run_ids(sparse, "--stats", env=env)
    got_stream, err_stream = run_ids(stream, "--stats", env=env)
    assert got_sparse == got_stream == want
    assert "experts: " in err_sparse and "cache hits" in err_stream
    read = [int(e.split("experts: ")[1].split(" bytes")[0]) for e in (err_sparse, err_stream)]
    assert 0 < read[0] < read[1]
    bad = write_routing_trace(tmp_path / "bad.bin", ids[:, :1], 4)
    proc = subprocess.run([str(sparse / "model" / "edgec-run"), str(sparse), "--ids", "5,6", "-n", "2"],
                          capture_output=True, text=True, timeout=60, env={**env, TRACE_ENV: str(bad)})
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "routing trace" in proc.stderr and "EDGEC_MOE_TRACE" in proc.stderr


def test_budget_below_the_resident_minimum_fails_naming_it(mixtral, tmp_path):
    with pytest.raises(EdgecError, match="below the resident minimum of .* expert slots") as err:
        edgec.build(mixtral, tmp_path / "x", backend="c", recipe="fp16", memory_budget="20%")
    assert "\n" not in str(err.value) and not (tmp_path / "x").exists()


def test_gpu_device_reports_the_expert_split(mixtral, calib, tmp_path):
    if not CROSS:
        pytest.skip("needs gcc-aarch64-linux-gnu (.ci/run installs it)")
    art = edgec.build(mixtral, tmp_path / "jetson", device="jetson-orin-nano", backend="c", recipe="fp32",
                      memory_budget="80%", calib=calib, calib_samples=8, calib_seqlen=64)
    split, plan = offload_meta(art)["gpu_split"], offload_meta(art)["plan"]
    assert split["device"] == "jetson-orin-nano" and split["estimated"]
    assert [(s["gpu_experts"], s["cpu_experts"]) for s in split["layers"]] == \
        [(len(p["hot"]), p["cold"]) for p in plan["layers"]]
    assert sum(s["gpu_experts"] for s in split["layers"]) == plan["hot_experts"] > 0
    assert split["gpu_bytes_per_token_mb"] > 0 and split["cpu_bytes_per_token_mb"] > 0


def test_a_damaged_cold_file_is_refused(mixtral, tmp_path):
    art = edgec.build(mixtral, tmp_path / "off", backend="c", recipe="fp16", memory_budget="70%")
    cold = art / "model" / "cold.bin"
    cold.write_bytes(cold.read_bytes()[:4096])
    proc = subprocess.run([str(art / "model" / "edgec-run"), str(art), "--ids", "5,17,33", "-n", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cannot read the cold weights" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not (QEMU and CROSS), reason="needs qemu-user and gcc-aarch64-linux-gnu (.ci/run installs them)")
def test_aarch64_cold_experts_under_qemu_match_x86(mixtral, c_mixtral, tmp_path):
    art = edgec.build(mixtral, tmp_path / "arm", device="rpi5", backend="c", recipe="fp16", memory_budget="70%")
    got, err = run_ids(art, "--stats", runner=[QEMU])
    assert got == run_ids(c_mixtral)[0] and "experts: " in err


# ----------------------------------------------------------------------------- the planner
def _expert_profile(routed, tokens=100, top_k=2):
    from edgec.activations import ExpertLayerProfile

    return ExpertLayerProfile("x", tokens, top_k, np.asarray(routed, np.int64))


def test_planner_ranks_experts_across_layers_by_routing_frequency():
    from edgec.offload import ExpertCost, plan_experts

    costs = [ExpertCost(f"l{i}", 4, 2, 4096, 4000, 100) for i in range(2)]
    profiles = [_expert_profile([90, 10, 60, 40]), _expert_profile([20, 80, 50, 50])]
    other = 10_000
    # the minimum: other + routers + 2 slots; then three experts' worth: the three most routed of both layers
    plan = plan_experts(costs, other, other + 200 + 2 * 4096 + 3 * 4000 + 10, "sparse", profiles)
    assert [p.hot.tolist() for p in plan.layers] == [[0, 2], [1]] and plan.slots == 2
    assert plan.layers[0].expected_cold == pytest.approx(0.5) and plan.layers[1].expected_cold == pytest.approx(1.2)
    assert plan.resident + plan.cache <= plan.budget
    # leftover bytes that no further expert fits in become slots; without a profile all of them do
    plan = plan_experts(costs, other, other + 200 + 2 * 4096 + 3 * 4096, "sparse")
    assert sum(len(p.hot) for p in plan.layers) == 0 and plan.slots == 5 and plan.notes
    # stream: no expert resident, one token's slots, whatever the budget
    plan = plan_experts(costs, other, "90%", "stream", profiles)
    assert sum(len(p.hot) for p in plan.layers) == 0 and plan.slots == 2
    assert plan.expected_read_per_token() == pytest.approx(2 * 2 * 4096)
    # everything fits: every expert resident, no cache
    plan = plan_experts(costs, other, "100%", "sparse", profiles)
    assert all(len(p.cold) == 0 for p in plan.layers) and plan.cache == 0
    with pytest.raises(EdgecError, match="resident minimum"):
        plan_experts(costs, other, other + 200 + 4096, "sparse", profiles)
