"""weight_source (which stored form feeds a linear) and the quantized layout's one owner (edgec.ir.quant)."""
from __future__ import annotations

import numpy as np
import pytest

from edgec.ir import Graph, weight_source
from edgec.ir.quant import (PackedLayout, QuantSpec, code_at, effective_group, pack, quantize_rtn, unpack,
                            word)
from edgec.ir.weight_source import read_as_weight_only

R = np.random.default_rng(0)


def _graph():
    g = Graph()
    x = g.add_input("x", "float32", (1, "seq", 8))
    w = g.add_weight("w", R.standard_normal((4, 8)).astype("float32"))
    w16 = g.add_weight("w16", R.standard_normal((4, 8)).astype("float16"))
    p, s, z = quantize_rtn(R.standard_normal((4, 8)).astype("float32"), QuantSpec(4, 4, False))
    dq = g.op("dequantize", g.add_weight("p", p), g.add_weight("s", s), g.add_weight("z", z),
              bits=4, group_size=4, k=8)
    cast = g.op("cast", w16, dtype="float32")
    computed = g.op("mul", w, w)
    g.outputs = [g.op("linear", x, v) for v in (w, cast, dq, computed)]
    return g, w, cast, dq, computed


def test_forms_stored_tensors_and_keys():
    g, w, cast, dq, computed = _graph()
    plain = weight_source(w)
    assert plain.form == "plain" and plain.stored == (w,) and plain.node is None and plain.key == ("plain", "float32")
    c = weight_source(cast)
    assert c.form == "cast" and [v.name for v in c.stored] == ["w16"] and c.node is cast.producer
    assert c.key == ("cast", "float16", "float32")
    q = weight_source(dq)
    assert q.form == "packed" and [v.name for v in q.stored] == ["p", "s", "z"] and q.node is dq.producer
    assert q.layout == PackedLayout(4, 4, 8) and q.key == ("packed", PackedLayout(4, 4, 8), 3) and q.mins is None
    assert weight_source(computed) is None
    users = g.users()
    assert all(read_as_weight_only(v, users[v]) for v in (cast, dq))
    assert not read_as_weight_only(w, users[w])  # also read by the mul


@pytest.mark.parametrize("group_size, k, want", [(0, 10, 10), (-1, 10, 10), (4, 10, 4), (128, 10, 10)])
def test_group_rule(group_size, k, want):
    assert effective_group(group_size, k) == want
    assert QuantSpec(4, group_size).check(k) == want
    lay = PackedLayout.of(4, group_size, k)
    assert lay.kp == -(-k // want) * want and lay.groups * want == lay.kp and lay.row_bytes == lay.kp // 2


def test_float_minima_are_a_form_of_their_own():
    """An imported block format with minima (ggml Q4_1) never merges with one without."""
    g = Graph()
    x = g.add_input("x", "float32", (1, "seq", 8))
    p, s, z = g.add_weight("p", np.zeros((6, 4), np.uint8)), g.add_weight("s", np.ones((6, 2), np.float32)), \
        g.add_weight("z", np.zeros((6, 2), np.uint8))
    m = g.add_weight("m", np.ones((6, 2), np.float32))
    with_min = g.op("dequantize", p, s, z, m, bits=4, group_size=4, k=8)
    without = g.op("dequantize", p, s, z, bits=4, group_size=4, k=8)
    g.outputs = [g.op("linear", x, with_min), g.op("linear", x, without)]
    a, b = weight_source(with_min), weight_source(without)
    assert a.mins is m and b.mins is None and a.key != b.key and a.layout == b.layout


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_bit_order_matches_pack(bits):
    """code_at / word describe the layout pack() writes (what the backends' kernels read)."""
    k = 24
    q = R.integers(0, 1 << bits, (3, k)).astype(np.uint8)
    packed = pack(q, bits)
    np.testing.assert_array_equal(unpack(packed, bits, k), q)
    mask = (1 << bits) - 1
    idx = np.arange(k)
    at, shift = code_at(idx, bits)
    pair = packed[:, at].astype(np.int32) | (packed[:, np.minimum(at + 1, packed.shape[1] - 1)].astype(np.int32) << 8)
    np.testing.assert_array_equal((pair >> shift) & mask, q)
    c, v = word(bits)
    words = (packed.reshape(3, -1, c).astype(np.int64) * 256 ** np.arange(c)).sum(-1)
    codes = (words[..., None] // (1 << bits) ** np.arange(v)) % (1 << bits)
    np.testing.assert_array_equal(codes.reshape(3, k), q)
