"""Attention sinks (the `attention` op's `sinks`: one logit per query head in each row's softmax) in the
C runtime's every attention path: prefill (>= 8 queries: keys transposed) and decode, over an in-place
KV cache stored as float32, fp16 (backend option kv_cache=fp16) and int8 (quantize_rows / dequantize_rows
around the attention, which the kernel does itself), threaded over the heads. The float32 cache without
a past and with one is also in test_conformance.py (cases attention_sinks, attention_past_gqa_window_sinks).

Every path computes in float32 from the same cache values as the interpreter (fp16 feeds are fp16-exact
here, int8 codes are the interpreter's bit for bit), so outputs agree to float32 rounding: 1e-5."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgec.backends import get_backend
from edgec.devices import get_device
from edgec.ir import Graph, interpret
from edgec.passes import PassManager

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                reason="needs a C compiler")

H, KV, D, DV = 4, 2, 16, 8
SINKS = (-2.0, 0.5, 3.0, 6.0)  # around the scores' range; the last head's rows mostly sink
STEPS = ((0, 12), (12, 1), (13, 9), (22, 1))  # (past rows, new rows): prefill and decode, on a past or not
R = np.random.default_rng(7)


def rand(*shape, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, shape).astype(np.float32)


def half(x):
    return x.astype(np.float16).astype(np.float32)


def build_and_open(graph: Graph, out_dir: Path, **options):
    be, device = get_backend("c"), get_device("host")
    graph = copy.deepcopy(graph)
    PassManager().run(graph, list(be.prelower), "prelower")
    be.compile(graph, out_dir, device, be.resolve(be.check(device, None, options)))
    return be.open(out_dir, threads=2)


def float_graph(window: int) -> Graph:
    g = Graph()
    q = g.add_input("q", "float32", (1, H, "seq", D))
    k = g.add_input("k", "float32", (1, KV, "seq", D))
    v = g.add_input("v", "float32", (1, KV, "seq", DV))
    pk = g.add_input("past_k", "float32", (1, KV, "past", D))
    pv = g.add_input("past_v", "float32", (1, KV, "past", DV))
    node = g.add_node("attention", [q, k, v, pk, pv], {"scale": D ** -0.5, "window": window, "sinks": SINKS})
    g.outputs = list(node.outputs)
    return g


def int8_graph(window: int) -> Graph:
    """The int8 cache of recipe int8-kv around one attention: new rows quantized, pasts int8 + scales."""
    g = Graph()
    q = g.add_input("q", "float32", (1, H, "seq", D))
    outs, reads = [], []
    for name, dim in (("k", D), ("v", DV)):
        rows = g.add_input(name, "float32", (1, KV, "seq", dim))
        pq = g.add_input(f"past_{name}", "int8", (1, KV, "past", dim))
        ps = g.add_input(f"past_{name}_scale", "float32", (1, KV, "past", 1))
        nq, ns = g.add_node("quantize_rows", [rows], {}).outputs
        reads.append((g.op("dequantize_rows", nq, ns), g.op("dequantize_rows", pq, ps)))
        outs += [g.op("concat", pq, nq, axis=2), g.op("concat", ps, ns, axis=2)]
    (k, pk), (v, pv) = reads
    node = g.add_node("attention", [q, k, v, pk, pv], {"scale": D ** -0.5, "window": window, "sinks": SINKS})
    g.outputs = [node.outputs[0], *outs]
    return g


def check_steps(graph: Graph, ex, form: str) -> None:
    """STEPS through the compiled graph, each fed the interpreter's presents of the step before (the graph's
    past inputs and its present outputs come in the same order)."""
    pasts = [v for v in graph.inputs if v.name.startswith("past")]
    past = {v.name: np.zeros([0 if d == "past" else d for d in v.shape], v.dtype) for v in pasts}
    out, presents = graph.outputs[0].name, [v.name for v in graph.outputs[1:]]
    for p, s in STEPS:
        feeds = {"q": rand(1, H, s, D), "k": rand(1, KV, s, D), "v": rand(1, KV, s, DV, lo=-1, hi=1)}
        if form == "f16":  # values an fp16 cache holds exactly: its rounding is then no error
            feeds = {n: half(x) for n, x in feeds.items()}
        want, got = interpret(graph, feeds | past), ex.run(feeds | past)
        assert got[out].shape == want[out].shape == (1, s, H, DV)
        np.testing.assert_allclose(got[out], want[out], rtol=1e-5, atol=1e-5, err_msg=f"{form} p={p} s={s}")
        past = {v.name: want[n] for v, n in zip(pasts, presents)}
        assert all(x.shape[2] == p + s for x in past.values())


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("form", ["f32", "f16", "i8"])
def test_sinks_in_every_cache_form(form, window, tmp_path):
    graph = int8_graph(window) if form == "i8" else float_graph(window)
    ex = build_and_open(graph, tmp_path / "m", **({"kv_cache": "fp16"} if form == "f16" else {}))
    src = (tmp_path / "m" / "src" / "model.c").read_text()
    kernel = {"f32": "ec_attention_f32(", "f16": "ec_attention_f16(", "i8": "ec_attention_i8("}[form]
    assert src.count(kernel) == 1 and "static const float sinks_" in src
    check_steps(graph, ex, form)


def test_no_sinks_passes_null(tmp_path):
    g = float_graph(0)
    g.nodes[-1].attrs["sinks"] = ()
    build_and_open(g, tmp_path / "m")
    src = (tmp_path / "m" / "src" / "model.c").read_text()
    assert "sinks_" not in src and ", NULL);" in src
