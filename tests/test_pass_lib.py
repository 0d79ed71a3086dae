"""The analyses the passes share (passes/lib): FFNs in every form with channel permutation and
slicing, and the streaming activation statistics."""
import copy
import tracemalloc

import numpy as np
import pytest

from edgec.calibration import run_calibration
from edgec.errors import EdgecError
from edgec.ir import Graph, interpret, verify
from edgec.ir.weight_source import weight_source
from edgec.passes import CANONICALIZE, FUSE, RAISE, PassManager, list_passes
from edgec.passes.lib.activations import Stats, collect, collect_sequential
from edgec.passes.lib.ffn import find_ffns, take_channels
from edgec.passes.lib.linears import dense_weight
from helpers import Calib, logits, run_pass
from tiny import save_tiny

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lib")
    return {arch: save_tiny(arch, root / arch) for arch in ("llama", "phi3", "gpt2", "opt")}


def _scaled_down_inputs(graph):
    """An explicit mul(h, s[I]) before every down projection (AWQ / SmoothQuant insert these)."""
    for n in [n for n in graph.nodes if n.op == "linear" and "down_proj" in n.inputs[1].name]:
        h = n.inputs[0]
        mul = graph.make_node("mul", [h, graph.add_weight("s", RNG.uniform(0.5, 2, h.shape[-1]).astype("float32"))])
        graph.insert_before(n, mul)
        n.inputs[0] = mul.output


# form -> (model, phases and passes after import, sorted (op, weight form, part sizes, FFN parts, cut ops) of
# the producers, the down projection's weight form)
FORMS = {
    "act(gate) * up": ("llama", [CANONICALIZE], [("linear", "plain", (128,), (0,), ())] * 2, "plain"),
    "glu": ("llama", [CANONICALIZE, RAISE], [("linear", "plain", (128,), (0,), ())] * 2, "plain"),
    "fused gate_up, split": ("llama", [CANONICALIZE, RAISE, FUSE],
                             [("linear", "plain", (128, 128), (0, 1), ("split",))], "plain"),
    "fused gate_up, slices": ("phi3", [CANONICALIZE, RAISE],
                              [("linear", "plain", (128, 128), (0, 1), ("slice", "slice"))], "plain"),
    "gelu_new with reshapes": ("gpt2", [CANONICALIZE, RAISE], [("linear", "plain", (256,), (0,), ())], "plain"),
    "relu with biases": ("opt", [CANONICALIZE, RAISE], [("linear", "plain", (128,), (0,), ())], "plain"),
    "fp16, fused": ("llama", [CANONICALIZE, RAISE, [("fp16_weights", {})], FUSE],
                    [("linear", "cast", (128, 128), (0, 1), ("split",))], "cast"),
    "int4 per channel, fused": ("llama", [CANONICALIZE, RAISE, [("quantize", {"bits": 4, "group_size": 0})], FUSE],
                                [("linear", "packed", (128, 128), (0, 1), ("split",))], "packed"),
    "int4 g32": ("llama", [CANONICALIZE, RAISE, [("quantize", {"bits": 4, "group_size": 32})]],
                 [("linear", "packed", (128,), (0,), ())] * 2, "packed"),
    "w8a8, fused": ("llama", [CANONICALIZE, RAISE, "smoothquant", FUSE],
                    [("linear_w8a8", "w8a8", (128, 128), (0, 1), ("split",))], "w8a8"),
    "scaled down input": ("llama", [CANONICALIZE, RAISE, _scaled_down_inputs],
                          [("linear", "plain", (128,), (0,), ())] * 2, "plain"),
}


@pytest.fixture(scope="module")
def build(folders):
    """build(form): a fresh copy of the tiny model of that form (each form is made once)."""
    from edgec.frontend import import_model

    made = {}

    def make(form):
        if form not in made:
            arch, phases, _, _ = FORMS[form]
            graph = import_model(str(folders[arch])).graph
            for phase in phases:
                if callable(phase):
                    phase(graph)
                elif isinstance(phase, str):
                    run_pass(graph, phase, ctx=Calib())
                else:
                    PassManager().run(graph, phase)
            made[form] = graph
        return copy.deepcopy(made[form])

    return make


def form_of(node):
    return "w8a8" if node.op == "linear_w8a8" else weight_source(node.inputs[1]).form


def describe(ffn):
    return sorted((p.linear.op, form_of(p.linear), tuple(p.sizes), tuple(sorted(p.parts)),
                   tuple(c.op for c in p.cut)) for p in ffn.producers)


def test_lib_registers_no_pass():
    assert not [p.name for p in list_passes().values() if p.fn.__module__.startswith("edgec.passes.lib")]


# ----------------------------------------------------------------------------- FFNs
@pytest.mark.parametrize("form", FORMS)
def test_find_ffns_in_every_form(build, form):
    graph = build(form)
    ffns = find_ffns(graph)
    _, _, producers, down = FORMS[form]
    assert len(ffns) == 2
    for ffn in ffns:
        assert describe(ffn) == producers and form_of(ffn.down) == down
        assert ffn.hidden is ffn.down.inputs[0] and ffn.size == ffn.hidden.shape[-1]
        assert (ffn.glu is not None) == (form not in ("act(gate) * up", "gelu_new with reshapes", "relu with biases"))
        assert len(ffn.channel_weights) == (form == "scaled down input")


def test_no_ffn_in_a_low_rank_pair_or_when_the_middle_leaks(build):
    graph = build("glu")
    run_pass(graph, "svd", rank=8, targets=["down_proj"])  # down -> linear(linear(h, B), A)
    ffns = find_ffns(graph)  # B reads the channels; A reads B's rank-8 output, which is no FFN
    assert len(ffns) == 2 and all(f.down.inputs[1].name.endswith("lowrank_b") for f in ffns)
    graph = build("glu")
    glu = next(n for n in graph.nodes if n.op == "glu")
    graph.outputs.append(glu.output)  # something outside reads the middle
    assert len(find_ffns(graph)) == 1


def group_aligned(size, g):
    """A random permutation that moves whole groups of g (and shuffles inside each)."""
    return np.concatenate([grp * g + RNG.permutation(g) for grp in RNG.permutation(size // g)])


@pytest.mark.parametrize("form", FORMS)
def test_permuting_channels_keeps_the_output(build, form):
    graph = build(form)
    ref = logits(graph)
    for ffn in find_ffns(graph):
        size = ffn.size
        take_channels(graph, ffn, group_aligned(size, 32) if form == "int4 g32" else RNG.permutation(size))
        assert ffn.size == size
    verify(graph)
    assert len(find_ffns(graph)) == 2
    np.testing.assert_allclose(logits(graph), ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_permutation_that_splits_quantization_groups_is_refused(build):
    graph = build("int4 g32")
    before = str(graph)
    ffn = find_ffns(graph)[0]
    with pytest.raises(EdgecError, match="quantized in groups of 32.*whole groups of 32"):
        take_channels(graph, ffn, np.roll(np.arange(ffn.size), 1))
    assert str(graph) == before  # refused before anything changed
    with pytest.raises(EdgecError, match="distinct indices"):
        take_channels(graph, ffn, [0, 0, 1])


@pytest.mark.parametrize("form", FORMS)
def test_slicing_channels_matches_explicit_slices(build, form):
    graph = build(form)
    original = copy.deepcopy(graph)
    keep = RNG.permutation(find_ffns(graph)[0].size)[:40]  # any subset in any order
    if form == "int4 g32":  # whole groups only: groups 1 and 3, the second one reversed
        keep = np.concatenate([np.arange(32, 64), np.arange(127, 95, -1)])
    for ffn, old in zip(find_ffns(graph), find_ffns(original)):
        take_channels(graph, ffn, keep)
        assert ffn.size == len(keep)
        np.testing.assert_array_equal(dense_weight(graph, ffn.down), dense_weight(original, old.down)[:, keep])
        for p, q in zip(ffn.producers, old.producers):
            w, w0 = dense_weight(graph, p.linear), dense_weight(original, q.linear)
            for i, o in enumerate(p.offsets()):
                o0 = q.offsets()[i]
                want = w0[o0 + keep] if i in p.parts else w0[o0:o0 + q.sizes[i]]
                np.testing.assert_array_equal(w[o:o + p.sizes[i]], want)
            if len(p.linear.inputs) > 2 and p.linear.op == "linear":
                bias, bias0 = (np.asarray(g.weight(n.inputs[2])) for g, n in ((graph, p.linear), (original, q.linear)))
                np.testing.assert_array_equal(bias, bias0[q.rows(keep)])
    verify(graph)
    assert [f.size for f in find_ffns(graph)] == [len(keep)] * 2


def test_fused_producer_with_parts_of_other_users():
    """linear -> split [gate, up, other]: the FFN's parts move, the other part keeps its rows."""
    rng = np.random.default_rng(1)
    w = lambda *shape: g.add_weight("w", rng.standard_normal(shape).astype("float32"))  # noqa: E731
    g = Graph()
    x = g.add_input("x", "float32", (1, "seq", 8))
    gate, up, other = g.add_node("split", [g.op("linear", x, w(24 + 24 + 5, 8), w(53))], {"sizes": [24, 24, 5]}).outputs
    h = g.op("add", g.op("linear", g.op("glu", gate, up), w(6, 24)), g.op("linear", other, w(6, 5)))
    g.outputs = [g.op("linear", h, w(4, 6))]  # the logits projection is never a down
    feeds = {"x": rng.standard_normal((1, 7, 8)).astype("float32")}
    ref = interpret(g, feeds)[g.outputs[0].name]
    (ffn,) = find_ffns(g)
    assert describe(ffn) == [("linear", "plain", (24, 24, 5), (0, 1), ("split",))]
    take_channels(g, ffn, rng.permutation(24))
    verify(g)
    np.testing.assert_allclose(interpret(g, feeds)[g.outputs[0].name], ref, rtol=1e-5, atol=1e-5)
    before = np.asarray(g.weight(ffn.producers[0].linear.inputs[1]))
    take_channels(g, ffn, [3, 0])
    after = np.asarray(g.weight(ffn.producers[0].linear.inputs[1]))
    np.testing.assert_array_equal(after, before[[3, 0, 27, 24] + list(range(48, 53))])
    assert ffn.producers[0].cut[0].attrs["sizes"] == [2, 2, 5]
    verify(g)


@pytest.mark.parametrize("form", ["glu", "fused gate_up, slices", "gelu_new with reshapes", "relu with biases",
                                  "fp16, fused", "scaled down input"])
def test_sliced_model_equals_the_model_without_those_channels(build, form):
    """Channels whose down columns are zero add nothing: removing exactly them keeps the logits."""
    graph = build(form)
    size = find_ffns(graph)[0].size
    keep = np.sort(RNG.permutation(size)[:size // 2])
    for ffn in find_ffns(graph):
        stored = weight_source(ffn.down.inputs[1]).stored[0]
        w = np.array(graph.weight(stored))
        w[:, np.setdiff1d(np.arange(size), keep)] = 0
        graph.weights[stored.name] = w
    ref = logits(graph)
    for ffn in find_ffns(graph):
        take_channels(graph, ffn, keep)
    np.testing.assert_allclose(logits(graph), ref, rtol=0, atol=2e-5 * np.abs(ref).max())


# ----------------------------------------------------------------------------- activation statistics
ALL = dict(sum_sq=True, abs_sum=True, abs_max=True, hessian=True)


def reference(x, fire, fire_abs):
    x = x.astype(np.float64)
    return {"count": len(x), "sum_sq": (x * x).sum(0), "abs_sum": np.abs(x).sum(0), "abs_max": np.abs(x).max(0),
            "hessian": x.T @ x, "fired": ((np.abs(x) if fire_abs else x) > fire).sum(0)}


def check(stats, want):
    assert stats.count == want["count"]
    for name in ("sum_sq", "abs_sum", "abs_max", "hessian"):
        np.testing.assert_allclose(getattr(stats, name), want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(stats.fired, want["fired"])


def test_stats_equal_numpy_over_the_concatenated_rows():
    xs = [RNG.standard_normal((1, n, 12)).astype("float32") for n in (5, 1, 9)]
    xs[0] = np.maximum(xs[0], 0)  # exact zeros (ReLU) do not fire at threshold 0
    x = np.concatenate([a.reshape(-1, 12) for a in xs])
    for fire, fire_abs in ((0.0, False), (0.8, True)):
        s = Stats.of(xs, **ALL, fire=fire, fire_abs=fire_abs)
        check(s, reference(x, fire, fire_abs))
        np.testing.assert_allclose(s.norms, np.linalg.norm(x, axis=0), rtol=1e-6)
        np.testing.assert_allclose(s.rms, np.sqrt((x.astype(np.float64) ** 2).mean(0)), rtol=1e-6)
        np.testing.assert_allclose(s.mean_abs, np.abs(x).mean(0), rtol=1e-6)
        np.testing.assert_allclose(s.firing_rate, ((np.abs(x) if fire_abs else x) > fire).mean(0))
    only = Stats.of(xs, abs_max=True)
    assert only.sum_sq is None and only.hessian is None and only.fired is None and only.channels == 12
    with pytest.raises(EdgecError, match="12 channels got 5"):
        only.add(np.zeros((3, 5), "float32"))


@pytest.fixture(scope="module")
def llama(build):
    return build("glu")


def raw_inputs(graph, windows, values):
    """Every window's array of each value, by the lockstep runner (the reference)."""
    users = graph.users()
    first = {users[v][0]: v for v in values}
    got = {v: [] for v in values}
    run_calibration(graph, windows, lambda n: n in first,
                    lambda n, ins: got[first[n]].extend(s[n.inputs.index(first[n])] for s in ins))
    return {v: np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays]) for v, arrays in got.items()}


def test_collect_equals_numpy_over_all_windows(llama):
    windows = Calib(n=5, seqlen=24).windows()
    values = [f.hidden for f in find_ffns(llama)] + [n.inputs[0] for n in llama.nodes if n.op == "linear"][:1]
    stats = collect(llama, windows, {v: Stats(**ALL, fire=0.0) for v in values})
    raw = raw_inputs(llama, windows, values)
    for v in values:
        check(stats[v], reference(raw[v], 0.0, False))
        assert stats[v].count == 5 * 24


def test_collect_memory_does_not_grow_with_windows(llama):
    hidden = [f.hidden for f in find_ffns(llama)]

    def traced(run, n):
        windows = Calib(n=n, seqlen=32).windows()
        tracemalloc.start()
        kept = run(windows)
        now, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del kept
        return now, peak

    def stream(windows):
        return collect(llama, windows, {v: Stats(sum_sq=True, abs_max=True, fire=0.0) for v in hidden})

    def lockstep(windows):  # what every window's activations at once costs (the measure must see it)
        return run_calibration(llama, windows, lambda n: bool(n.inputs) and n.inputs[0] in hidden,
                               lambda n, ins: None)

    (kept4, peak4), (kept32, peak32) = traced(stream, 4), traced(stream, 32)
    assert peak32 < 1.3 * peak4 and kept32 < 1.3 * kept4 + 4096, (peak4, peak32, kept4, kept32)
    assert traced(lockstep, 32)[1] > 3 * traced(lockstep, 4)[1]


def test_collect_sequential_sees_compressed_layers_and_shares_inputs():
    rng = np.random.default_rng(0)
    g = Graph()
    ids = g.add_input("input_ids", "int64", (1, "seq"))
    g.add_input("position_ids", "int64", (1, "seq"))
    h = g.op("embedding", g.add_weight("emb", rng.standard_normal((10, 8)).astype("float32")), ids)
    a = g.op("linear", h, g.add_weight("wa", rng.standard_normal((8, 8)).astype("float32")))
    b = g.op("linear", h, g.add_weight("wb", rng.standard_normal((8, 8)).astype("float32")))
    out = g.op("linear", g.op("relu", g.op("add", a, b)), g.add_weight("wc", rng.standard_normal((4, 8)).astype("float32")))
    g.outputs = [out]
    windows = [np.array([1, 2, 3]), np.array([4, 5, 6, 7])]
    linears = [n for n in g.nodes if n.op == "linear"]
    seen = []

    def visit(node, stats):
        seen.append((node.inputs[1].name, stats))
        if node.inputs[1].name in ("wa", "wb"):  # "compress" the first two: zero them
            g.weights[node.inputs[1].name] = np.zeros((8, 8), np.float32)

    assert collect_sequential(g, windows, linears, visit, sum_sq=True, hessian=True) == 3
    assert [name for name, _ in seen] == ["wa", "wb", "wc"]
    assert seen[0][1] is seen[1][1] and seen[0][1].count == 7  # one Stats for the shared input
    emb = np.asarray(g.weights["emb"])[np.concatenate(windows)]
    np.testing.assert_allclose(seen[0][1].hessian, emb.T.astype(np.float64) @ emb, rtol=1e-5)
    assert seen[0][1].abs_max is None
    assert not seen[2][1].sum_sq.any() and not seen[2][1].hessian.any()  # wc saw the zeroed layers' output
