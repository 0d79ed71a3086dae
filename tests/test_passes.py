"""Every pass against the reference interpreter: on small hand-built graphs
(exact patterns and near misses) and on tiny llama / gpt_neox / gemma models.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from edgec.errors import EdgecError
from edgec.ir import Graph, VerifyError, interpret, verify
from edgec.ir.ops import INT_MAX
from edgec.passes import CANONICALIZE, LOWER, RAISE, PassManager, PassRecord, get_pass, list_passes, register_pass
from edgec.passes import registry as pass_registry
from helpers import run_pass

F32 = "float32"
RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def feeds_for(graph: Graph, seq: int = 5, past: int = 0) -> dict:
    out = {}
    for v in graph.inputs:
        shape = [d if isinstance(d, int) else {"seq": seq, "past": past}[d] for d in v.shape]
        out[v.name] = randn(*shape) if v.dtype == F32 else np.zeros(shape, v.dtype)
    return out


def assert_same_outputs(before: Graph, after: Graph, feeds: dict, atol=1e-6):
    a, b = interpret(before, feeds), interpret(after, feeds)
    assert len(a) == len(b)
    for (na, va), (nb, vb) in zip(a.items(), b.items()):
        assert va.shape == vb.shape, (na, nb)
        np.testing.assert_allclose(vb, va, rtol=1e-5, atol=atol, err_msg=f"{na} vs {nb}")


# ============================================================== dce
def test_dce_removes_dead_nodes_and_weights_only():
    g = Graph()
    x = g.add_input("x", F32, (2, 4))
    unused_in = g.add_input("unused", F32, (3,))
    w1 = g.add_weight("w1", randn(4))
    w2 = g.add_weight("w2", randn(4))
    w3 = g.add_weight("w3", randn(4))  # read by no node, but a graph output
    g.add_weight("w4", randn(4))       # read by nothing at all
    live = g.op("add", x, w1)
    dead = g.op("neg", g.op("mul", x, w2))
    g.op("exp", dead)
    n = g.add_node("attention", [g.op("reshape", live, shape=[1, 1, 2, 4])] * 3, {"scale": 0.5})
    g.outputs = [n.outputs[0], w3]
    before = copy.deepcopy(g)
    assert run_pass(g, "dce").counts == {"removed_nodes": 3, "removed_weights": 2}
    assert [nd.op for nd in g.nodes] == ["add", "reshape", "attention"]
    assert set(g.weight_values) == {"w1", "w3"} and set(g.weights) == {"w1", "w3"}
    assert [v.name for v in g.inputs] == ["x", "unused"] and unused_in in g.inputs
    assert_same_outputs(before, g, feeds_for(g))
    assert run_pass(g, "dce").counts == {"removed_nodes": 0, "removed_weights": 0}


# ============================================================== fold_constants
def test_fold_constants_folds_constant_subgraphs():
    g = Graph()
    x = g.add_input("x", F32, (2, 4))
    w = g.add_weight("norm.weight", randn(4))
    one = g.op("const", value=1.0, dtype=F32)
    wp1 = g.op("add", w, one)                     # Gemma's (1 + w)
    chain = g.op("exp", g.op("neg", wp1))         # folds transitively
    two = g.op("add", g.op("const", value=2.0, dtype=F32), g.op("const", value=3.0, dtype=F32))
    y = g.op("mul", g.op("mul", x, wp1), g.op("add", chain, two))
    g.outputs = [y]
    before = copy.deepcopy(g)
    assert run_pass(g, "fold_constants").counts == {"folded_nodes": 5}
    run_pass(g, "dce")
    assert g.op_counts() == {"mul": 2}
    folded = g.weight(g.weight_values["norm.weight.add"])
    np.testing.assert_allclose(folded, before.weight(before.weight_values["norm.weight"]) + 1.0, rtol=1e-6)
    assert "norm.weight" not in g.weights
    assert_same_outputs(before, g, feeds_for(g))


def test_fold_constants_leaves_growing_expand_alone():
    g = Graph()
    x = g.add_input("x", F32, (8, 4))
    w = g.add_weight("w", randn(1, 4))
    e = g.op("expand", w, shape=[8, 4])
    g.outputs = [g.op("add", x, e)]
    before = copy.deepcopy(g)
    assert run_pass(g, "fold_constants").counts == {"folded_nodes": 0}
    assert g.op_counts() == {"add": 1, "expand": 1}
    assert g.weights.total_bytes() == 16
    assert_same_outputs(before, g, feeds_for(g))


def test_fold_constants_ignores_nodes_with_runtime_inputs():
    g = Graph()
    x = g.add_input("x", F32, (4,))
    w = g.add_weight("w", randn(4))
    g.outputs = [g.op("add", x, w)]
    assert run_pass(g, "fold_constants").counts == {"folded_nodes": 0}


# ============================================================== raise_rms_norm
def rms_graph(*, axis=-1, exponent=2.0, keepdim=True, other_x=False, w_is_input=False, w_first=True):
    g = Graph()
    x = g.add_input("x", F32, (1, "seq", 8))
    x2 = g.add_input("x2", F32, (1, "seq", 8)) if other_x else x
    w = g.add_input("w", F32, (8,)) if w_is_input else g.add_weight("w", randn(8) + 1)
    p = g.op("pow", x2, g.op("const", value=exponent, dtype=F32))
    m = g.op("mean", p, axes=[axis], keepdim=keepdim)
    r = g.op("rsqrt", g.op("add", m, g.op("const", value=1e-5, dtype=F32)))
    n = g.op("mul", x, r)
    g.outputs = [g.op("mul", w, n) if w_first else g.op("mul", n, w)]
    return g


@pytest.mark.parametrize("w_first", [True, False])
def test_raise_rms_norm_exact_pattern(w_first):
    g = rms_graph(w_first=w_first)
    before = copy.deepcopy(g)
    assert run_pass(g, "raise_rms_norm").counts == {"rms_norm": 1}
    run_pass(g, "dce")
    assert g.op_counts() == {"rms_norm": 1}
    assert g.nodes[0].inputs == [g.inputs[0], g.weight_values["w"]]
    assert g.nodes[0].attrs["eps"] == pytest.approx(1e-5)
    assert_same_outputs(before, g, feeds_for(g))


@pytest.mark.parametrize("kw", [dict(axis=0), dict(axis=1), dict(exponent=3.0), dict(other_x=True),
                                dict(w_is_input=True)], ids=str)
def test_raise_rms_norm_near_misses(kw):
    g = rms_graph(**kw)
    counts = g.op_counts()
    assert run_pass(g, "raise_rms_norm").counts == {"rms_norm": 0}
    assert g.op_counts() == counts


# ============================================================== raise_rotary
def rotate_half_graph(g, x, d, split=None, swap=False, neg_first_half=False):
    h = d // 2 if split is None else split
    lo = g.op("slice", x, axis=-1, start=0, end=h)
    hi = g.op("slice", x, axis=-1, start=h, end=INT_MAX)
    if neg_first_half:
        return g.op("concat", hi, g.op("neg", lo), axis=-1)
    parts = (lo, g.op("neg", hi)) if swap else (g.op("neg", hi), lo)
    return g.op("concat", *parts, axis=-1)


def rotary_graph(rot_dim=8, **kw):
    g = Graph()
    x = g.add_input("x", F32, (1, 2, "seq", 8))
    cos = g.add_input("cos", F32, (1, 1, "seq", rot_dim))
    sin = g.add_input("sin", F32, (1, 1, "seq", rot_dim))
    xr = x if rot_dim == 8 else g.op("slice", x, axis=3, start=0, end=rot_dim)
    core = g.op("add", g.op("mul", xr, cos), g.op("mul", rotate_half_graph(g, xr, rot_dim, **kw), sin))
    if rot_dim < 8:
        core = g.op("concat", core, g.op("slice", x, axis=3, start=rot_dim, end=INT_MAX), axis=3)
    g.outputs = [core]
    return g


def test_raise_rotary_full():
    g = rotary_graph()
    before = copy.deepcopy(g)
    assert run_pass(g, "raise_rotary").counts == {"rotary": 1, "partial": 0}
    run_pass(g, "dce")
    assert g.op_counts() == {"rotary": 1}
    assert g.nodes[0].inputs == g.inputs
    assert_same_outputs(before, g, feeds_for(g))


def test_raise_rotary_partial():
    g = rotary_graph(rot_dim=4)
    before = copy.deepcopy(g)
    assert run_pass(g, "raise_rotary").counts == {"rotary": 1, "partial": 1}
    run_pass(g, "dce")
    assert g.op_counts() == {"rotary": 1}
    assert g.nodes[0].inputs == g.inputs
    assert_same_outputs(before, g, feeds_for(g))


@pytest.mark.parametrize("kw", [dict(split=3), dict(split=5), dict(swap=True), dict(neg_first_half=True)],
                         ids=str)
def test_raise_rotary_near_misses(kw):
    g = rotary_graph(**kw)
    counts = g.op_counts()
    assert run_pass(g, "raise_rotary").counts == {"rotary": 0, "partial": 0}
    assert g.op_counts() == counts


# ============================================================== raise_glu
def glu_graph(act="silu", approximate="none", swap=False, second_user=False, u_shape=(1, "seq", 16)):
    g = Graph()
    gate = g.add_input("gate", F32, (1, "seq", 16))
    up = g.add_input("up", F32, u_shape)
    a = g.op(act, gate, approximate=approximate) if act == "gelu" else g.op(act, gate)
    y = g.op("mul", up, a) if swap else g.op("mul", a, up)
    g.outputs = [g.op("add", y, a) if second_user else y]
    return g


@pytest.mark.parametrize("act, approximate, expect", [("silu", "none", "silu"), ("gelu", "none", "gelu"),
                                                      ("gelu", "tanh", "gelu_tanh"), ("relu", "none", "relu")])
@pytest.mark.parametrize("swap", [False, True])
def test_raise_glu_exact_pattern(act, approximate, expect, swap):
    g = glu_graph(act, approximate, swap)
    before = copy.deepcopy(g)
    assert run_pass(g, "raise_glu").counts == {"glu": 1}
    run_pass(g, "dce")
    assert g.op_counts() == {"glu": 1}
    assert g.nodes[0].attrs == {"act": expect, "threshold": 0.0}
    assert g.nodes[0].inputs == g.inputs
    assert_same_outputs(before, g, feeds_for(g))


@pytest.mark.parametrize("kw", [dict(second_user=True), dict(act="tanh"), dict(act="sigmoid"),
                                dict(u_shape=(1, 1, 16))], ids=str)
def test_raise_glu_near_misses(kw):
    g = glu_graph(**kw)
    counts = g.op_counts()
    assert run_pass(g, "raise_glu").counts == {"glu": 0}
    assert g.op_counts() == counts


# ============================================================== kv_cache (hand-built)
def attention_graph(layers=2, window=0):
    g = Graph()
    h = g.add_input("x", F32, (1, "seq", 16))
    for i in range(layers):
        def proj(heads, nm):
            w = g.add_weight(f"l{i}.{nm}", randn(heads * 4, 16) * 0.3)
            return g.op("permute", g.op("reshape", g.op("linear", h, w), shape=[1, -1, heads, 4]),
                        perm=[0, 2, 1, 3])
        o = g.op("attention", proj(4, "q"), proj(2, "k"), proj(2, "v"), scale=0.5, window=window)
        h = g.op("add", h, g.op("reshape", o, shape=[1, -1, 16]))
    g.outputs = [h]
    return g


def run_chunked(graph: Graph, full_feeds: dict, chunks: list[int], seq_inputs: tuple[str, ...]):
    """Run `graph` (after kv_cache) over the sequence in chunks, carrying present -> past."""
    past = {v.name: np.zeros([0 if d == "past" else d for d in v.shape], v.dtype)
            for v in graph.inputs if v.name.startswith("past_")}
    outs, start = [], 0
    for n in chunks:
        feeds = {k: v[:, start:start + n] for k, v in full_feeds.items() if k in seq_inputs}
        res = interpret(graph, {**feeds, **past})
        outs.append(res)
        past = {k.replace("present_", "past_"): v for k, v in res.items() if k.startswith("present_")}
        start += n
    return outs


@pytest.mark.parametrize("window", [0, 3])
def test_kv_cache_hand_built_chunks_equal_full_run(window):
    g = attention_graph(window=window)
    before = copy.deepcopy(g)
    assert run_pass(g, "kv_cache").counts == {"cached_layers": 2, "bits": 32}
    assert g.facts.kv_layers == 2
    assert [v.name for v in g.inputs] == ["x", "past_key.0", "past_value.0", "past_key.1", "past_value.1"]
    assert [v.name for v in g.outputs][1:] == ["present_key.0", "present_value.0", "present_key.1",
                                               "present_value.1"]
    assert g.inputs[1].shape == (1, 2, "past", 4)
    assert g.outputs[1].shape == (1, 2, "past+seq", 4)
    x = randn(1, 9, 16)
    ref = interpret(before, {"x": x})[before.outputs[0].name]
    outs = run_chunked(g, {"x": x}, [4, 1, 4], ("x",))
    got = np.concatenate([o[g.outputs[0].name] for o in outs], axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert outs[-1]["present_key.1"].shape == (1, 2, 9, 4)


# ============================================================== tiny models
TINY = ["llama", "gpt_neox", "gemma"]
IDS = np.array([[5, 17, 33, 8, 41, 2, 60, 12, 9, 27]])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from edgec.frontend import import_model
    from tiny import save_tiny

    graphs = {}
    for arch in TINY:
        folder = save_tiny(arch, tmp_path_factory.mktemp(arch) / "hf")
        graphs[arch] = import_model(str(folder)).graph
    return graphs


def model_feeds(graph, ids=IDS, start=0):
    feeds = {"input_ids": ids, "position_ids": np.arange(start, start + ids.shape[1])[None]}
    for v in graph.inputs:
        if v.name.startswith("past_"):
            feeds[v.name] = np.zeros([0 if d == "past" else d for d in v.shape], v.dtype)
    return feeds


def pipeline(graph: Graph, passes) -> Graph:
    g = copy.deepcopy(graph)
    PassManager().run(g, passes)
    return g


@pytest.fixture(scope="module")
def raised(imported):
    return {arch: pipeline(g, CANONICALIZE + RAISE) for arch, g in imported.items()}


@pytest.mark.parametrize("arch", TINY)
def test_each_pass_preserves_model_outputs(imported, arch):
    g = copy.deepcopy(imported[arch])
    verify(g)
    feeds = model_feeds(g)
    ref = interpret(g, feeds)["logits"]
    for name, opts in CANONICALIZE + RAISE:
        run_pass(g, name, **opts)
        out = interpret(g, feeds)["logits"]
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5, err_msg=f"after {name}")


EXPECT_RAISED = {"llama": {"rms_norm": 5, "rotary": 4, "glu": 2},
                 "gpt_neox": {"rotary": 4, "layer_norm": 5},
                 "gemma": {"rms_norm": 5, "rotary": 4, "glu": 2}}


@pytest.mark.parametrize("arch", TINY)
def test_raising_consumes_the_whole_pattern(raised, arch):
    ops = raised[arch].op_counts()
    for op, n in EXPECT_RAISED[arch].items():
        assert ops.get(op) == n, (op, ops)
    # nothing of the traced arithmetic is left behind
    leftovers = ("pow", "rsqrt", "mean", "neg", "silu") + (() if arch == "gpt_neox" else ("gelu",))
    for leftover in leftovers:  # gpt_neox's MLP is an ungated gelu
        assert leftover not in ops, (leftover, ops)
    # and no node computes on constants only (fold_constants got them)
    for n in raised[arch].nodes:
        if n.op not in ("const", "expand"):
            assert not all(v.kind == "weight" or (v.producer and v.producer.op == "const")
                           for v in n.inputs) or not n.inputs, n.op


def test_fold_constants_on_gemma_folds_one_plus_weight(imported):
    g = copy.deepcopy(imported["gemma"])
    assert run_pass(g, "fold_constants")["folded_nodes"] >= 5  # five (1 + norm.weight)
    run_pass(g, "dce")
    assert sum(1 for n in g.nodes if n.op == "add" and any(v.kind == "weight" for v in n.inputs)) == 0
    assert any(name.endswith("layernorm.weight.add") for name in g.weight_values)


@pytest.mark.parametrize("arch", TINY)
def test_kv_cache_chunks_equal_full_run(raised, arch):
    g = copy.deepcopy(raised[arch])
    before_outputs = [v.name for v in g.outputs]
    assert run_pass(g, "kv_cache").counts == {"cached_layers": 2, "bits": 32}
    names_in = [v.name for v in g.inputs]
    names_out = [v.name for v in g.outputs]
    for i in range(2):
        assert f"past_key.{i}" in names_in and f"past_value.{i}" in names_in
        assert f"present_key.{i}" in names_out and f"present_value.{i}" in names_out
    assert names_out[:len(before_outputs)] == before_outputs
    full = interpret(g, model_feeds(g))
    assert full["present_key.0"].shape[2] == IDS.shape[1]
    outs = run_chunked(g, {"input_ids": IDS, "position_ids": np.arange(IDS.shape[1])[None]}, [6, 1, 3],
                       ("input_ids", "position_ids"))
    got = np.concatenate([o["logits"] for o in outs], axis=1)
    np.testing.assert_allclose(got, full["logits"], rtol=1e-4, atol=1e-5)
    for k in full:
        if k.startswith("present_"):
            np.testing.assert_allclose(outs[-1][k], full[k], rtol=1e-4, atol=1e-5)
    # and the cached graph without past equals the uncached one
    np.testing.assert_allclose(full["logits"], interpret(raised[arch], model_feeds(raised[arch]))["logits"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", TINY)
def test_fp16_weights(raised, arch):
    g = copy.deepcopy(raised[arch])
    before = g.weights.total_bytes()
    expect = sum(g.weights.info(n).nbytes // (2 if v.rank >= 2 and v.dtype == F32 else 1)
                 for n, v in g.weight_values.items())
    matrices = sum(1 for v in g.weight_values.values() if v.rank >= 2 and v.dtype == F32)
    result = run_pass(g, "fp16_weights")
    for name, v in g.weight_values.items():
        # matrices are stored fp16; vectors/scalars (norms, biases, inv_freq) stay fp32
        assert v.dtype == ("float16" if v.rank >= 2 else "float32"), (name, v)
        assert g.weights.info(name).dtype == v.dtype
        assert np.asarray(g.weight(v)).dtype == np.dtype(v.dtype)
    assert any("inv_freq" in name for name in g.weight_values)
    after = g.weights.total_bytes()
    assert after == expect
    assert result.counts == {"fp16_weights": matrices, "bytes_before": before, "bytes_after": after}
    assert abs(after / before - 0.5) < 0.02, (before, after)  # vectors are ~1% of a tiny model
    verify(g)
    ref = interpret(raised[arch], model_feeds(raised[arch]))["logits"]
    out = interpret(g, model_feeds(g))["logits"]
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-2
    assert np.abs(out - ref).max() > 0  # the weights really changed
    # far positions: an fp16 inv_freq would put a position-proportional error on RoPE angles
    far = {"input_ids": IDS, "position_ids": np.arange(3000, 3000 + IDS.shape[1])[None]}
    err = np.abs(interpret(g, far)["logits"] - interpret(raised[arch], far)["logits"]).max()
    assert err < 1e-2, err
    # and the lowered fp16 graph still works with the cache
    run_pass(g, "kv_cache")
    np.testing.assert_allclose(interpret(g, model_feeds(g))["logits"], out, rtol=1e-5, atol=1e-6)


def test_fp16_weights_hand_built_keeps_non_float_and_unused():
    g = Graph()
    x = g.add_input("x", F32, (2, 4))
    w = g.add_weight("w", randn(3, 4))
    ids = g.add_weight("ids", np.array([0, 1], np.int64))
    table = g.add_weight("table", randn(5, 4))
    bias = g.add_weight("bias", randn(3))
    g.add_weight("unused", randn(4, 4))
    emb = g.op("slice", g.op("embedding", table, ids), axis=1, start=0, end=3)
    y = g.op("add", g.op("linear", x, w, bias), emb)
    g.outputs = [y]
    before = copy.deepcopy(g)
    assert run_pass(g, "fp16_weights")["fp16_weights"] == 2
    assert {n: v.dtype for n, v in g.weight_values.items()} == {"ids": "int64", "w.fp16": "float16",
                                                                "table.fp16": "float16", "bias": "float32"}
    assert [n.op for n in g.nodes[:2]] == ["cast", "cast"]
    assert_same_outputs(before, g, feeds_for(g), atol=1e-2)


# ============================================================== PassManager
@pytest.fixture
def temp_passes():
    """Register passes for one test and remove them afterwards."""
    added = []

    def add(name, fn, **options):
        register_pass(name, **options)(fn)
        added.append(name)

    yield add
    for name in added:
        pass_registry._PASSES.pop(name, None)


def small_graph():
    g = Graph()
    x = g.add_input("x", F32, (2, 4))
    w = g.add_weight("w", randn(4))
    g.add_weight("unused", randn(4))
    g.op("neg", x)
    g.outputs = [g.op("mul", x, g.op("add", w, g.op("const", value=1.0, dtype=F32)))]
    return g


def test_pass_manager_records_and_dumps(tmp_path):
    messages = []
    pm = PassManager(progress=messages.append, dump_dir=tmp_path / "dump")
    g = small_graph()
    texts = []
    for name, opts in CANONICALIZE:
        pm.run(g, [(name, opts)], phase="canon")
        texts.append(str(g))
    assert [r.name for r in pm.records] == ["dce", "fold_constants", "dce"]
    assert all(isinstance(r, PassRecord) for r in pm.records)
    assert [r.counts for r in pm.records] == [{"removed_nodes": 1, "removed_weights": 1}, {"folded_nodes": 1},
                                              {"removed_nodes": 1, "removed_weights": 1}]
    assert [r.nodes for r in pm.records] == [3, 2, 1]
    for r in pm.records:
        assert isinstance(r.seconds, float) and 0 <= r.seconds < 5
        assert r.options == {}
        assert set(r.to_dict()) == {"pass", "options", "summary", "counts", "seconds", "nodes_after"}
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert files == ["01-dce.txt", "02-fold_constants.txt", "03-dce.txt"]
    assert [(tmp_path / "dump" / f).read_text() for f in files] == texts
    assert len(messages) == 3 and all(m.startswith("canon: ") for m in messages)
    assert all(r.summary for r in pm.records) and f"fold_constants: {pm.records[1].summary} (" in messages[1]


def test_pass_manager_verifies_after_each_pass(temp_passes):
    def broken(graph):
        """Corrupt a recorded shape."""
        graph.nodes[-1].outputs[0].shape = (7,)
        return "broke it"

    temp_passes("test_broken_pass", broken)
    pm = PassManager()
    with pytest.raises(VerifyError, match="recorded"):
        pm.run(small_graph(), [("dce", {}), ("test_broken_pass", {}), ("dce", {})])
    assert [r.name for r in pm.records] == ["dce"]


def test_pass_manager_options(temp_passes):
    seen = []

    def opt_pass(graph, factor=2, label="x"):
        seen.append((factor, label))

    temp_passes("test_opt_pass", opt_pass, factor=2, label="x")  # no docstring, returns None
    assert list_passes()["test_opt_pass"].doc == ""
    pm = PassManager()
    pm.run(small_graph(), [("test_opt_pass", {"factor": 5})])
    assert seen == [(5, "x")]
    assert pm.records[0].options == {"factor": 5, "label": "x"} and pm.records[0].summary == ""
    with pytest.raises(EdgecError, match="no option"):
        pm.run(small_graph(), [("test_opt_pass", {"nope": 1})])
    with pytest.raises(EdgecError, match="no option"):
        pm.run(small_graph(), [("dce", {"aggressive": True})])


def test_unknown_pass_raises():
    with pytest.raises(EdgecError, match="unknown pass 'frobnicate'"):
        PassManager().run(small_graph(), [("frobnicate", {})])
    with pytest.raises(EdgecError):
        get_pass("frobnicate")


def test_registry_lists_the_builtin_passes():
    names = set(list_passes())
    assert {"dce", "fold_constants", "raise_rms_norm", "raise_rotary", "raise_glu", "kv_cache",
            "fp16_weights"} <= names
    assert all(p.doc for n, p in list_passes().items() if not n.startswith("test_"))
    assert LOWER == [("kv_cache", {})]
