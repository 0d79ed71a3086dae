"""One small graph per IR op, run by every backend's tests against the reference interpreter.

A case builds (graph, [feeds, ...]); every feed dict is run on the same compiled model,
which is how symbolic dims are exercised at several sizes. Shapes stay tiny: each case is
compiled once per backend (test_conformance.py) and by the ONNX target's opset tests.
"""
from __future__ import annotations

import zlib

import numpy as np

from edgec.ir import Graph

R = np.random.default_rng(0)
CASES: dict[str, callable] = {}


def rand(*shape, dtype="float32", lo=-1.0, hi=1.0):
    return R.uniform(lo, hi, shape).astype(dtype)


def assert_outputs_match(name: str, graph: Graph, want: dict, got: dict) -> None:
    """A backend's outputs (`got`) equal the interpreter's (`want`): dtype, shape, and values
    within 1e-5 (2e-3 for float16), relative and absolute."""
    for out in graph.outputs:
        w, r = want[out.name], got[out.name]
        assert r.dtype == w.dtype, (name, out.name, r.dtype, w.dtype)
        assert r.shape == w.shape, (name, out.name, r.shape, w.shape)
        tol = 2e-3 if w.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(r, w, rtol=tol, atol=tol, err_msg=f"{name}: {out.name}")


def case(name):
    """Register a case; its random draws (rand, R) restart from a seed of its own name at every build, so a
    case is the same graph and feeds whichever cases ran before it."""
    def deco(fn):
        def build():
            R.bit_generator.state = np.random.default_rng(zlib.crc32(name.encode())).bit_generator.state
            return fn()

        CASES[name] = build
        return fn

    return deco


def x_input(g, name="x", last=8):
    return g.add_input(name, "float32", (1, "seq", last))


def seq_feeds(name="x", last=8, lo=-1.0, hi=1.0, **extra):
    return [{name: rand(1, s, last, lo=lo, hi=hi), **extra} for s in (1, 5)]


for _op in ("add", "sub", "mul", "div", "pow", "maximum"):
    @case(_op)
    def _binary(op=_op):
        g = Graph()
        x = x_input(g)
        y = g.add_input("y", "float32", (1, "seq", 8))
        w = g.add_weight("w", rand(8, lo=0.5, hi=2.0))  # broadcast against a weight too
        a = g.op(op, x, y)
        g.outputs = [g.op(op, a, w)]
        pos = op == "pow"  # pow of negative base to a fractional exponent is nan
        return g, [{"x": rand(1, s, 8, lo=0.1 if pos else -1), "y": rand(1, s, 8, lo=0.5 if pos else -1)}
                   for s in (1, 4)]


for _op in ("neg", "sqrt", "rsqrt", "exp", "tanh", "sin", "cos", "relu", "sigmoid", "silu"):
    @case(_op)
    def _unary(op=_op):
        g = Graph()
        x = x_input(g)
        g.outputs = [g.op(op, x)]
        pos = op in ("sqrt", "rsqrt")
        return g, seq_feeds(lo=0.1 if pos else -3.0, hi=3.0)


@case("quantized_ops")
def _quantized_ops():
    """dequantize (4-bit g4, 3-bit per-channel, and 4-bit g4 with searched ranges: negative scales)
    feeding linears, W8A8 and int8 rows."""
    from edgec.ir.quant import QuantSpec, quantize_rtn

    g = Graph()
    x = x_input(g)
    outs = []
    for spec, search in ((QuantSpec(4, 4, False), False), (QuantSpec(3, 0, True), False), (QuantSpec(4, 4, True), True)):
        p, sc, z = quantize_rtn(rand(6, 8), spec, search=search)
        assert not search or (sc < 0).any()  # the case covers the sign-carrying scales it is for
        w = g.op("dequantize", g.add_weight("p", p), g.add_weight("s", sc), g.add_weight("z", z),
                 bits=spec.bits, group_size=spec.group_size, k=8)
        outs.append(g.op("linear", x, w))
    wq = R.integers(-127, 128, (6, 8)).astype("int8")
    outs.append(g.op("linear_w8a8", x, g.add_weight("wq", wq), g.add_weight("ws", rand(6, lo=0.01, hi=0.02))))
    q = g.add_node("quantize_rows", [x]).outputs
    outs.append(g.op("dequantize_rows", *q))
    g.outputs = outs
    return g, seq_feeds()


@case("quantized_source_forms")
def _quantized_source_forms():
    """dequantize in the forms only imported ggml blocks make: float minima, 5- and 6-bit codes;
    read by linears, by an embedding (a tied table) and as a graph output."""
    from edgec.ir.quant import pack

    g = Graph()
    x = x_input(g)
    ids = g.add_input("ids", "int64", (1, "seq"))
    outs = []
    for bits, group, zero, mins in ((4, 4, 0, True), (5, 8, 16, False), (6, 4, 32, True), (5, 4, 0, True)):
        q = R.integers(0, 1 << bits, (6, 8))
        ins = [g.add_weight(f"p{bits}{group}", pack(q, bits)), g.add_weight(f"s{bits}{group}", rand(6, 8 // group)),
               g.add_weight(f"z{bits}{group}", np.full((6, 8 // group), zero, np.uint8))]
        if mins:
            ins.append(g.add_weight(f"m{bits}{group}", rand(6, 8 // group)))
        w = g.op("dequantize", *ins, bits=bits, group_size=group, k=8)
        outs.append(g.op("linear", x, w))
        if bits == 4:
            outs.append(g.op("embedding", w, ids))
        if bits == 6:
            outs.append(w)
    g.outputs = outs
    return g, [{"x": rand(1, s, 8), "ids": R.integers(0, 6, (1, s))} for s in (1, 5)]


@case("quantized_fp16_scales")
def _quantized_fp16_scales():
    """dequantize with float16 scales and minima (scales = "fp16", imported Q4_0 .. Q8_0 blocks): 4- and
    8-bit codes, a float minimum, an embedding over a tied table and a graph output; each backend widens
    the float16 exactly. (Groups of 8: ONNX's standard-op path, exact; MatMulNBits with float16 scales,
    whose accuracy level 4 is not exact, is checked in test_quantize.py.)"""
    from edgec.ir.quant import QuantSpec, pack, quantize_rtn

    g = Graph()
    x = x_input(g, last=32)
    ids = g.add_input("ids", "int64", (1, "seq"))
    outs = []
    for spec in (QuantSpec(4, 8, False, "float16"), QuantSpec(8, 8, True, "float16")):
        p, sc, z = quantize_rtn(rand(6, 32), spec)
        w = g.op("dequantize", g.add_weight(f"p{spec.bits}", p), g.add_weight(f"s{spec.bits}", sc.astype("float16")),
                 g.add_weight(f"z{spec.bits}", z), bits=spec.bits, group_size=spec.group_size, k=32)
        outs.append(g.op("linear", x, w))
    q = R.integers(0, 16, (6, 32))
    ins = [g.add_weight("pm", pack(q, 4)), g.add_weight("sm", rand(6, 4, lo=0.01, hi=0.1).astype("float16")),
           g.add_weight("zm", np.zeros((6, 4), np.uint8)), g.add_weight("mm", rand(6, 4).astype("float16"))]
    w = g.op("dequantize", *ins, bits=4, group_size=8, k=32)
    outs += [g.op("linear", x, w), g.op("embedding", w, ids), w]
    g.outputs = outs
    return g, [{"x": rand(1, s, 32), "ids": R.integers(0, 6, (1, s))} for s in (1, 5)]


@case("fused_ops")
def _fused_ops():
    """add_rms_norm, rotary_cached (full and partial) and split; contrib-op lowerings in lower_fused.py."""
    g = Graph()
    x = x_input(g, last=16)
    skip = g.add_input("skip", "float32", (1, "seq", 16))
    pos = g.add_input("pos", "int64", (1, "seq"))
    normed, total = g.add_node("add_rms_norm", [x, skip, g.add_weight("w", rand(16, lo=0.5, hi=1.5))]).outputs
    heads = g.op("permute", g.op("reshape", normed, shape=[1, -1, 2, 8]), perm=[0, 2, 1, 3])
    outs = [normed, total, *g.add_node("split", [total], {"sizes": [4, 12]}).outputs]
    for r in (8, 4):
        tables = [g.add_weight(f"{f}{r}", rand(12, r // 2)) for f in ("cos", "sin")]
        outs.append(g.op("rotary_cached", heads, pos, *tables))
    g.outputs = outs
    return g, [{"x": rand(1, s, 16), "skip": rand(1, s, 16), "pos": R.integers(0, 12, (1, s))} for s in (1, 5)]


@case("const")
def _const():
    g = Graph()
    x = x_input(g)
    c = g.op("const", value=[0.5, -1.0, 2.0, 0.0, 1.0, 3.0, -2.0, 0.25], dtype="float32")
    two = g.op("const", value=2, dtype="int64")
    g.outputs = [g.op("mul", x, c), g.op("add", two, two)]
    return g, seq_feeds()


for _a in ("none", "tanh"):
    @case(f"gelu_{_a}")
    def _gelu(a=_a):
        g = Graph()
        g.outputs = [g.op("gelu", x_input(g), approximate=a)]
        return g, seq_feeds(lo=-4, hi=4)


@case("cast_fp16_weights")
def _cast_fp16():
    """fp16 weights kept fp16 on disk, cast to fp32 in the graph (weight-only compression)."""
    g = Graph()
    x = x_input(g)
    w16 = g.add_weight("w16", rand(4, 8, dtype="float16"))
    b16 = g.add_weight("b16", rand(4, dtype="float16"))
    w = g.op("cast", w16, dtype="float32")
    b = g.op("cast", b16, dtype="float32")
    y = g.op("linear", x, w, b)
    back = g.op("cast", g.op("cast", y, dtype="float16"), dtype="float32")
    g.outputs = [y, back, g.op("cast", x, dtype="int64")]
    return g, seq_feeds(lo=-3, hi=3)


@case("mean")
def _mean():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("mean", x, axes=[-1], keepdim=True), g.op("mean", x, axes=[0, 2])]
    return g, seq_feeds()


@case("sum")
def _sum():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("sum", x, axes=[-1], keepdim=True), g.op("sum", x, axes=[0, 2])]
    return g, seq_feeds()


@case("topk")
def _topk():
    g = Graph()
    x = x_input(g)
    g.outputs = list(g.add_node("topk", [x], {"k": 3}).outputs)
    return g, seq_feeds()


def _experts_weights(g, experts=4, hidden=8, inter=3, prefix=""):
    return (g.add_weight(f"{prefix}gate_up", rand(experts, 2 * inter, hidden)),
            g.add_weight(f"{prefix}down", rand(experts, hidden, inter)))


@case("moe")
def _moe():
    """Router and experts; several tokens so that prefill groups reach several experts."""
    g = Graph()
    x = g.add_input("x", "float32", ("seq", 8))
    gate_up, down = _experts_weights(g)
    router = g.add_weight("router", rand(4, 8, lo=-3, hi=3))
    g.outputs = [g.op("moe", x, router, gate_up, down, top_k=2),
                 g.op("moe", x, router, gate_up, down, top_k=1, normalize=False, act="gelu_tanh")]
    return g, [{"x": rand(s, 8)} for s in (1, 6)]


@case("moe_routers")
def _moe_routers():
    """The other router kinds: DeepSeek-V3's (sigmoid, score bias, best 2 of 4 groups, renormalised,
    scaled), plain sigmoid top-k, and Phi-MoE's sparsemixer (two router rows 1% apart, so that both
    of its picks sometimes mix two experts)."""
    g = Graph()
    x = g.add_input("x", "float32", ("seq", 8))
    gate_up, down = _experts_weights(g, experts=8)
    router = g.add_weight("router", rand(8, 8, lo=-1.5, hi=1.5))
    bias = g.add_weight("bias", rand(8, lo=-0.3, hi=0.3))
    rows = rand(4, 8, lo=-3, hi=3)
    mixer = g.add_weight("mixer", np.concatenate([rows[:1] * 1.01, rows]))
    g.outputs = [g.op("moe", x, router, gate_up, down, bias, top_k=3, scoring="sigmoid", n_group=4, topk_group=2,
                      routed_scaling=2.5, biases=("score",)),
                 g.op("moe", x, router, gate_up, down, top_k=2, scoring="sigmoid", normalize=False),
                 g.op("moe", x, mixer, *_experts_weights(g, experts=5, prefix="mixer_"), top_k=2, scoring="sparsemixer",
                      normalize=False, jitter_eps=0.01)]
    return g, [{"x": rand(s, 8)} for s in (1, 6)]


@case("moe_biased")
def _moe_biased():
    """GPT-OSS's layer: a biased router, biased experts, the clamped SwiGLU (a limit the inputs reach)."""
    g = Graph()
    x = g.add_input("x", "float32", ("seq", 8))
    gate_up, down = _experts_weights(g)
    router = g.add_weight("router", rand(4, 8, lo=-3, hi=3))
    logit, gub, db = (g.add_weight(n, rand(*shape, lo=-1, hi=1)) for n, shape in
                      (("logit_bias", (4,)), ("gate_up_bias", (4, 6)), ("down_bias", (4, 8))))
    g.outputs = [g.op("moe", x, router, gate_up, down, logit, gub, db, top_k=2, act="clamped_swiglu", alpha=1.702,
                      limit=0.8, biases=("logit", "gate_up", "down")),
                 g.op("moe", x, router, gate_up, down, db, top_k=1, biases=("down",))]
    return g, [{"x": rand(s, 8, lo=-2, hi=2)} for s in (1, 6)]


@case("moe_experts")
def _moe_experts():
    g = Graph()
    x = g.add_input("x", "float32", ("seq", 8))
    index = g.add_input("index", "int64", ("seq", 2))
    weight = g.add_input("weight", "float32", ("seq", 2))
    gate_up, down = _experts_weights(g)
    gub, db = g.add_weight("gate_up_bias", rand(4, 6)), g.add_weight("down_bias", rand(4, 8))
    g.outputs = [g.op("moe_experts", x, index, weight, gate_up, down, act="silu"),
                 g.op("moe_experts", x, index, weight, gate_up, down, gub, db, act="clamped_swiglu", alpha=1.702,
                      limit=0.5)]
    return g, [{"x": rand(s, 8), "index": R.integers(0, 4, (s, 2)), "weight": rand(s, 2, lo=0, hi=1)}
               for s in (1, 6)]


# router ops (edgec/ir/ops_moe.py): what transformers' routers are imported as
@case("gather")
def _gather():
    g = Graph()
    x = g.add_input("x", "float32", ("seq", 6))
    index = g.add_input("index", "int64", ("seq", 2))
    g.outputs = [g.op("gather", x, index, axis=1)]
    return g, [{"x": rand(s, 6), "index": R.integers(0, 6, (s, 2))} for s in (1, 5)]


@case("scatter")
def _scatter():
    g = Graph()
    x = g.add_input("x", "float32", ("seq", 6))
    index = g.add_input("index", "int64", ("seq", 2))
    g.outputs = [g.op("scatter", x, index, axis=1, value=float("-inf")), g.op("scatter", x, index, axis=-1, value=1.0)]
    return g, [{"x": rand(s, 6), "index": R.integers(0, 6, (s, 2))} for s in (1, 5)]


def _above(g, x, threshold=0.25):
    return g.op("greater", x, g.op("const", value=threshold, dtype="float32"))


@case("greater")
def _greater_case():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("cast", _above(g, x), dtype="float32"),
                 g.op("cast", g.op("greater", x, g.add_weight("w", rand(8))), dtype="float32")]
    return g, seq_feeds()


@case("masked_fill")
def _masked_fill_case():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("masked_fill", x, _above(g, x), value=float("-inf"))]
    return g, seq_feeds()


@case("logical_not")
def _logical_not_case():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("cast", g.op("logical_not", _above(g, x)), dtype="float32")]
    return g, seq_feeds()


@case("full_like")
def _full_like_case():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("full_like", x, value=0.0), g.op("add", x, g.op("full_like", x, value=2.5))]
    return g, seq_feeds()


@case("abs")
def _abs_case():
    g = Graph()
    g.outputs = [g.op("abs", x_input(g))]
    return g, seq_feeds()


@case("softmax")
def _softmax():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("softmax", x), g.op("softmax", x, axis=1)]
    return g, seq_feeds(lo=-5, hi=5)


@case("reshape_permute_unsqueeze")
def _shapes():
    g = Graph()
    x = x_input(g)
    h = g.op("reshape", x, shape=[0, -1, 2, 4])  # [1, seq, 2, 4]
    p = g.op("permute", h, perm=[0, 2, 1, 3])  # [1, 2, seq, 4]
    u = g.op("unsqueeze", p, axis=2)  # [1, 2, 1, seq, 4]
    u2 = g.op("unsqueeze", p, axis=-1)
    back = g.op("reshape", g.op("permute", p, perm=[0, 2, 1, 3]), shape=[1, -1, 8])
    g.outputs = [u, u2, back]
    return g, seq_feeds()


@case("expand")
def _expand():
    g = Graph()
    x = g.add_input("x", "float32", (1, 2, "seq", 4))
    u = g.op("unsqueeze", x, axis=2)  # [1, 2, 1, seq, 4]
    e = g.op("expand", u, shape=[-1, -1, 3, -1, -1])
    w = g.add_weight("w", rand(4))
    g.outputs = [e, g.op("expand", w, shape=[2, 3, 4])]
    return g, [{"x": rand(1, 2, s, 4)} for s in (1, 3)]


@case("slice")
def _slice():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("slice", x, axis=-1, start=0, end=4),
                 g.op("slice", x, axis=2, start=4),  # end defaults to 2**63-1
                 g.op("slice", x, axis=1, start=0, end=1),
                 g.op("slice", x, axis=2, start=1, end=8, step=2),
                 g.op("slice", x, axis=-1, start=-3)]
    return g, seq_feeds()


@case("concat")
def _concat():
    g = Graph()
    past = g.add_input("past", "float32", (1, 2, "past", 4))
    new = g.add_input("new", "float32", (1, 2, "seq", 4))
    g.outputs = [g.op("concat", past, new, axis=2), g.op("concat", new, axis=0)]
    return g, [{"past": rand(1, 2, p, 4), "new": rand(1, 2, s, 4)} for p, s in ((0, 3), (4, 1))]


@case("concat_weight")
def _concat_weight():
    """A weight between two copies of an input, along the symbolic axis."""
    g = Graph()
    new = g.add_input("new", "float32", (1, 2, "seq", 4))
    w = g.add_weight("w", rand(1, 2, 3, 4))
    g.outputs = [g.op("concat", new, w, new, axis=-2)]
    return g, [{"new": rand(1, 2, s, 4)} for s in (3, 1)]


@case("embedding")
def _embedding():
    g = Graph()
    ids = g.add_input("ids", "int64", (1, "seq"))
    ids32 = g.add_input("ids32", "int32", ("seq",))
    table = g.add_weight("table", rand(11, 6))
    g.outputs = [g.op("embedding", table, ids), g.op("embedding", table, ids32)]
    return g, [{"ids": R.integers(0, 11, (1, s)), "ids32": R.integers(0, 11, (s,)).astype("int32")}
               for s in (1, 6)]


@case("matmul")
def _matmul():
    g = Graph()
    a = g.add_input("a", "float32", (1, 2, "seq", 4))
    b = g.add_input("b", "float32", (1, 2, 4, "seq"))
    w = g.add_weight("w", rand(4, 3))
    g.outputs = [g.op("matmul", a, b), g.op("matmul", a, w)]
    return g, [{"a": rand(1, 2, s, 4), "b": rand(1, 2, 4, s)} for s in (1, 3)]


@case("linear")
def _linear():
    g = Graph()
    x = x_input(g)
    w = g.add_weight("w", rand(4, 8))
    b = g.add_weight("b", rand(4))
    w2 = g.add_weight("w2", rand(3, 4))
    h = g.op("linear", x, w, b)
    g.outputs = [h, g.op("linear", h, w2), g.op("linear", x, w)]  # w reused by two linears
    return g, seq_feeds()


@case("linear_tied_embedding")
def _tied():
    """An lm_head sharing the embedding table: stored once, read by Gather and Gemm(transB)."""
    g = Graph()
    ids = g.add_input("ids", "int64", (1, "seq"))
    table = g.add_weight("table", rand(10, 8))
    h = g.op("embedding", table, ids)
    g.outputs = [g.op("linear", h, table)]
    return g, [{"ids": R.integers(0, 10, (1, s))} for s in (1, 4)]


@case("linear_computed_weight")
def _computed_weight():
    g = Graph()
    x = x_input(g)
    w = g.op("mul", g.add_weight("w", rand(4, 8)), g.add_weight("s", rand(4, 1)))
    g.outputs = [g.op("linear", x, w)]
    return g, seq_feeds()


@case("layer_norm")
def _layer_norm():
    g = Graph()
    x = x_input(g)
    w = g.add_weight("w", rand(8, lo=0.5, hi=1.5))
    b = g.add_weight("b", rand(8))
    g.outputs = [g.op("layer_norm", x), g.op("layer_norm", x, w),
                 g.op("layer_norm", x, w, b, eps=1e-3)]
    return g, seq_feeds(lo=-2, hi=2)


@case("rms_norm")
def _rms_norm():
    g = Graph()
    x = x_input(g)
    w = g.add_weight("w", rand(8, lo=0.5, hi=1.5))
    w16 = g.add_weight("w16", rand(8, lo=0.5, hi=1.5, dtype="float16"))
    x16 = g.add_input("x16", "float16", (1, "seq", 8))
    g.outputs = [g.op("rms_norm", x, w), g.op("rms_norm", x, w, eps=1e-2), g.op("rms_norm", x16, w16)]
    return g, [{"x": rand(1, s, 8, lo=-2, hi=2), "x16": rand(1, s, 8, lo=-2, hi=2, dtype="float16")}
               for s in (1, 5)]


@case("rotary")
def _rotary():
    g = Graph()
    x = g.add_input("x", "float32", (1, 2, "seq", 8))
    cos = g.add_input("cos", "float32", (1, 1, "seq", 8))
    sin = g.add_input("sin", "float32", (1, 1, "seq", 8))
    cos4 = g.add_input("cos4", "float32", (1, 1, "seq", 4))  # partial rotary (R < D)
    sin4 = g.add_input("sin4", "float32", (1, 1, "seq", 4))
    g.outputs = [g.op("rotary", x, cos, sin), g.op("rotary", x, cos4, sin4)]
    feeds = []
    for s in (1, 3):
        ang = rand(1, 1, s, 8, lo=0, hi=6)
        ang4 = rand(1, 1, s, 4, lo=0, hi=6)
        feeds.append({"x": rand(1, 2, s, 8), "cos": np.cos(ang), "sin": np.sin(ang),
                      "cos4": np.cos(ang4), "sin4": np.sin(ang4)})
    return g, feeds


for _act in ("silu", "gelu", "gelu_tanh", "relu"):
    @case(f"glu_{_act}")
    def _glu(act=_act):
        g = Graph()
        x = x_input(g)
        gate = g.op("linear", x, g.add_weight("wg", rand(6, 8)))
        up = g.op("linear", x, g.add_weight("wu", rand(6, 8)))
        g.outputs = [g.op("glu", gate, up, act=act)]
        return g, seq_feeds(lo=-2, hi=2)


for _act in ("silu", "gelu_tanh"):
    @case(f"glu_{_act}_threshold")
    def _glu_threshold(act=_act):
        """CATS: about half of act(gate) under the threshold is zeroed."""
        g = Graph()
        gate, up = x_input(g, "gate"), x_input(g, "up")
        g.outputs = [g.op("glu", gate, up, act=act, threshold=0.3)]
        return g, [{"gate": rand(1, s, 8, lo=-2, hi=2), "up": rand(1, s, 8)} for s in (1, 5)]


@case("sparsify")
def _sparsify():
    g = Graph()
    x = x_input(g)
    h = g.op("sparsify", x, threshold=0.5)  # about half of the values
    g.outputs = [g.op("linear", h, g.add_weight("w", rand(6, 8))), g.op("sparsify", x, threshold=0.0)]
    return g, seq_feeds()


def _attention_case(heads, kv, *, past, window=0, softcap=0.0, d=8, dv=8, sinks=False):
    def build():
        g = Graph()
        q = g.add_input("q", "float32", (1, heads, "seq", d))
        k = g.add_input("k", "float32", (1, kv, "seq", d))
        v = g.add_input("v", "float32", (1, kv, "seq", dv))
        attrs = {"scale": d ** -0.5, "window": window, "softcap": softcap}
        if sinks:  # one per head, around the scores' range: some rows mostly sink, some barely
            attrs["sinks"] = tuple(float(x) for x in np.linspace(-3.0, 4.0, heads))
        ins = [q, k, v]
        if past:
            ins += [g.add_input("past_k", "float32", (1, kv, "past", d)),
                    g.add_input("past_v", "float32", (1, kv, "past", dv))]
        node = g.add_node("attention", ins, attrs)
        g.outputs = list(node.outputs)
        feeds = []
        # 12+ queries: the C runtime's prefill path (keys transposed) beside its decode path
        for p, s in ((0, 5), (6, 1), (4, 3), (5, 12)) if past else ((0, 1), (0, 7), (0, 19)):
            f = {"q": rand(1, heads, s, d, lo=-2, hi=2), "k": rand(1, kv, s, d, lo=-2, hi=2),
                 "v": rand(1, kv, s, dv)}
            if past:
                f |= {"past_k": rand(1, kv, p, d, lo=-2, hi=2), "past_v": rand(1, kv, p, dv)}
            feeds.append(f)
        return g, feeds

    return build


for _name, _kw in {
    "attention": dict(heads=2, kv=2, past=False),
    "attention_gqa": dict(heads=4, kv=2, past=False),
    "attention_window": dict(heads=4, kv=2, past=False, window=3),
    "attention_softcap": dict(heads=2, kv=1, past=False, softcap=2.0),
    "attention_past": dict(heads=2, kv=2, past=True),
    "attention_past_gqa": dict(heads=4, kv=2, past=True, dv=4),
    "attention_past_gqa_window_softcap": dict(heads=4, kv=2, past=True, window=4, softcap=3.0),
    "attention_sinks": dict(heads=4, kv=2, past=False, sinks=True),
    "attention_past_gqa_window_sinks": dict(heads=4, kv=2, past=True, window=4, sinks=True),
}.items():
    case(_name)(_attention_case(**_kw))


@case("attention_fp16")
def _attention_fp16():
    g = Graph()
    names = ("q", "k", "v", "past_k", "past_v")
    shapes = ((1, 4, "seq", 8), (1, 2, "seq", 8), (1, 2, "seq", 8), (1, 2, "past", 8), (1, 2, "past", 8))
    ins = [g.add_input(n, "float16", s) for n, s in zip(names, shapes)]
    g.outputs = list(g.add_node("attention", ins, {"scale": 0.35}).outputs)
    return g, [{n: rand(*[3 if d == "past" else 2 if d == "seq" else d for d in s], dtype="float16")
                for n, s in zip(names, shapes)}]


# ----------------------------------------------------------------------------- pre-lowering forms
# made by the ONNX backend's PRELOWER passes (passes/gqa.py, passes/logits_rows.py)
def _gqa_case(packed: bool, sinks: bool = False):
    def build():
        heads, kv, d = 4, 2, 16  # GroupQueryAttention rotates heads of a multiple of 16 only
        g = Graph()
        widths = {"qkv": (heads + 2 * kv) * d} if packed else {"q": heads * d, "k": kv * d, "v": kv * d}
        ins = [x_input(g, n, w) for n, w in widths.items()]
        past = [g.add_input(n, "float32", (1, kv, "past", d)) for n in ("past_k", "past_v")]
        pos = g.add_input("position_ids", "int64", (1, "seq"))
        if packed:
            ins += [*past, pos, *(g.add_weight(n, rand(16, d // 2)) for n in ("cos", "sin"))]
        else:
            ins += [*past, pos]
        attrs = {"scale": d ** -0.5, "window": 3, **({"sinks": (-1.0, 0.5, 2.0, 3.0)} if sinks else {})}
        g.outputs = list(g.add_node("gqa_packed" if packed else "gqa", ins, attrs).outputs)
        feeds = [{**{n: rand(1, s, w) for n, w in widths.items()}, "past_k": rand(1, kv, p, d),
                  "past_v": rand(1, kv, p, d), "position_ids": np.arange(p, p + s)[None]} for p, s in ((0, 4), (5, 1))]
        return g, feeds

    return build


case("gqa")(_gqa_case(packed=False))
case("gqa_packed")(_gqa_case(packed=True))
case("gqa_sinks")(_gqa_case(packed=False, sinks=True))
case("gqa_packed_sinks")(_gqa_case(packed=True, sinks=True))


@case("last_rows")
def _last_rows():
    g = Graph()
    x = x_input(g)
    g.outputs = [g.op("last_rows", x, g.add_input("rows", "int64", (1,)), dim="rows")]
    return g, [{"x": rand(1, 5, 8), "rows": np.array([r])} for r in (1, 3, 5)]
