"""Unit tests of the IR: symbolic shapes, the op registry, the verifier, the
printer, the weight store and the interpreter.

Every registered op must have an entry in OP_CASES: its shape/dtype inference
is checked against the output of its numpy reference (on symbolic shapes,
evaluated with concrete bindings), so a new op without a test fails here.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgec.ir import Graph, Value, VerifyError, WeightStore, all_ops, format_graph, get_op, interpret, verify
from edgec.ir import shapes as S
from edgec.ir.ops import INT_MAX

RNG = np.random.default_rng(0)


# ============================================================== shapes
@pytest.mark.parametrize("a, b", [("past+seq", "seq+past"), (" seq + past ", "past+seq"),
                                  ("seq+2+past+1", "past+seq+3"), ("seq+0", "seq"), ("3+4", 7)])
def test_normalize_is_canonical(a, b):
    assert S.normalize(a) == S.normalize(b)


def test_normalize_values():
    assert S.normalize("seq+past") == "past+seq"
    assert S.normalize("1+seq") == "seq+1"
    assert S.normalize("3+4") == 7 and isinstance(S.normalize("3+4"), int)
    assert S.normalize(5) == 5
    assert S.normalize("seq+-1") == "seq+-1"


@pytest.mark.parametrize("bad", ["2*seq", "seq-1", "se q+", "(seq)", "seq+"])
def test_normalize_rejects_non_sums(bad):
    with pytest.raises(ValueError):
        S.normalize(bad)


def test_dim_add():
    assert S.dim_add("seq", "past") == "past+seq"
    assert S.dim_add("past", "seq") == S.dim_add("seq", "past")
    assert S.dim_add(0, "seq") == "seq"
    assert S.dim_add("seq", 0) == "seq"
    assert S.dim_add(3, 4) == 7 and isinstance(S.dim_add(3, 4), int)
    assert S.dim_add("seq+1", 2) == "seq+3"
    assert S.dim_add("seq+past", "past") == "past+past+seq"
    assert S.evaluate(S.dim_add("seq+1", "past+2"), {"seq": 5, "past": 7}) == 15
    assert S.symbols_of("past+seq+3") == {"past", "seq"}
    assert S.symbols_of(4) == set()


def test_is_static():
    assert S.is_static((1, 2, 3)) and S.is_static(())
    assert not S.is_static((1, "seq"))


@pytest.mark.parametrize("a, b, out", [
    ((1, "seq", 4), (8, 1, 1), (8, "seq", 4)),
    (("seq", 4), (4,), ("seq", 4)),
    ((1,), ("seq",), ("seq",)),
    (("seq", 1), (1, "past"), ("seq", "past")),
    ((2, 1, "seq"), (3, "seq"), (2, 3, "seq")),
    ((), (2, 3), (2, 3)),
])
def test_broadcast(a, b, out):
    assert S.broadcast(a, b) == out
    assert S.broadcast(b, a) == out


def test_broadcast_equal_sums_in_any_order():
    out = S.broadcast(("seq+past", 4), ("past+seq", 1))
    assert S.normalize(out[0]) == "past+seq" and out[1] == 4


@pytest.mark.parametrize("a, b", [(("seq", 4), ("past", 4)), ((3,), (4,)), (("seq",), (4,)),
                                  ((2, "seq"), (3, "seq"))])
def test_broadcast_incompatible(a, b):
    with pytest.raises(ValueError, match="broadcast"):
        S.broadcast(a, b)


@pytest.mark.parametrize("src, target, out", [
    ((1, "seq", 64), [1, -1, 4, 16], (1, "seq", 4, 16)),
    ((1, "seq", 4, 16), [1, -1, 64], (1, "seq", 64)),
    ((2, "seq", 64), [0, 0, 4, 16], (2, "seq", 4, 16)),
    ((2, "seq", 64), [0, -1, 16, 4], (2, "seq", 16, 4)),
    ((2, 3, 4), [0, -1], (2, 12)),
    ((2, 3, 4), [-1, 4], (6, 4)),
    ((2, 3, 4), [4, 6], (4, 6)),
    ((1, "seq", 8), [1, "seq", -1], (1, "seq", 8)),
    ((1, "past+seq", 8), [-1, 8], ("past+seq", 8)),
    ((0, 4), [-1, 2], (0, 2)),
])
def test_infer_reshape(src, target, out):
    assert S.infer_reshape(src, target) == out


@pytest.mark.parametrize("src, target", [
    ((2, 3), [-1, -1]),             # two -1
    ((2, 3), [-1, 4]),              # 6 not divisible by 4
    ((1, "seq", 64), [-1, 16]),     # would need 4*seq
    (("seq", "past", 4), [-1, 4]),  # would need seq*past
    ((1, "seq", 64), [1, "past", -1]),
    ((2, 3), [4, 4]),               # no -1 but a different element count
    ((2, 3), [2, 3, 1, 0]),         # 0 (copy) past the input rank
    ((1, "seq", 8), [1, 8, 1]),     # symbol dropped without a -1
])
def test_infer_reshape_errors(src, target):
    with pytest.raises(ValueError):
        S.infer_reshape(src, target)


# ============================================================== every op: inference vs reference
BIND = {"seq": 5, "past": 3}


def T(dtype, shape, kind="normal", hi=None):
    return (dtype, tuple(shape), kind, hi)


F32 = "float32"
X3 = T(F32, (1, "seq", 8))
POS = T(F32, (1, "seq", 8), "positive")

# op -> list of (input specs, attrs). Shapes may use the symbols in BIND.
OP_CASES: dict[str, list] = {
    "const": [([], {"value": [1.0, 2.0, 3.0], "dtype": F32}), ([], {"value": 2, "dtype": "int64"}),
              ([], {"value": [[True], [False]], "dtype": "bool"})],
    "add": [([X3, T(F32, (8,))], {}), ([T(F32, (1, "seq", 1)), T(F32, (4, 1, 8))], {}),
            ([T("int64", (2, 3)), T("int64", ())], {})],
    "sub": [([X3, X3], {})],
    "mul": [([X3, T(F32, ())], {}), ([T(F32, (2, 1, "seq")), T(F32, ("seq",))], {})],
    "div": [([X3, POS], {})],
    "pow": [([POS, T(F32, ())], {})],
    "maximum": [([X3, T(F32, (1, 1, 8))], {})],
    "neg": [([X3], {})], "sqrt": [([POS], {})], "rsqrt": [([POS], {})], "exp": [([X3], {})],
    "tanh": [([X3], {})], "sin": [([X3], {})], "cos": [([X3], {})], "relu": [([X3], {})],
    "sigmoid": [([X3], {})], "silu": [([X3], {})],
    "sparsify": [([X3], {"threshold": 0.5}), ([T("float16", (1, "seq", 8))], {"threshold": 0.0})],
    "gelu": [([X3], {}), ([X3], {"approximate": "tanh"})],
    "cast": [([X3], {"dtype": "float16"}), ([T("int64", (1, "seq"), "int", 9)], {"dtype": F32}),
             ([X3], {"dtype": "int32"})],
    "mean": [([X3], {"axes": [-1], "keepdim": True}), ([X3], {"axes": [0, 2]}),
             ([T(F32, (2, "seq", 4, 6))], {"axes": [1], "keepdim": False})],
    "softmax": [([X3], {}), ([X3], {"axis": 1})],
    "sum": [([X3], {"axes": [-1], "keepdim": True}), ([X3], {"axes": [0, 2]})],
    # mixture of experts (edgec/ir/ops_moe.py): 4 experts, hidden 8, expert FFN 3
    "topk": [([X3], {"k": 3}), ([T(F32, ("seq", 4))], {"k": 2, "axis": 1})],
    "moe_experts": [([T(F32, ("seq", 8)), T("int64", ("seq", 2), "int", 4), T(F32, ("seq", 2), "positive"),
                      T(F32, (4, 6, 8)), T(F32, (4, 8, 3))], {"act": "silu"})],
    "moe": [([T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))], {"top_k": 2}),
            ([X3, T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))],
             {"top_k": 1, "normalize": False, "act": "gelu_tanh"}),
            ([T(F32, ("seq", 8)), T(F32, (8, 8)), T(F32, (8, 6, 8)), T(F32, (8, 8, 3)), T(F32, (8,))],
             {"top_k": 3, "scoring": "sigmoid", "n_group": 4, "topk_group": 2, "routed_scaling": 2.5,
              "biases": ("score",)}),
            ([X3, T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))],
             {"top_k": 2, "scoring": "sparsemixer", "normalize": False, "jitter_eps": 0.01}),
            ([T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3)), T(F32, (4,)), T(F32, (4, 6)),
              T(F32, (4, 8))], {"top_k": 2, "act": "clamped_swiglu", "alpha": 1.702, "limit": 7.0,
                                "biases": ("logit", "gate_up", "down")})],
    # router ops
    "gather": [([T(F32, ("seq", 6)), T("int64", ("seq", 2), "int", 6)], {"axis": 1}),
               ([X3, T("int64", (1, "seq", 3), "int", 8)], {"axis": -1})],
    "scatter": [([T(F32, ("seq", 6)), T("int64", ("seq", 2), "int", 6)], {"axis": 1, "value": float("-inf")})],
    "masked_fill": [([X3, T("bool", (1, "seq", 8))], {"value": float("-inf")}),
                    ([X3, T("bool", ("seq", 1))], {"value": 0.0})],
    "greater": [([X3, T(F32, ())], {}), ([T(F32, ("seq", 1)), T(F32, ("seq", 4))], {})],
    "logical_not": [([T("bool", (1, "seq", 8))], {})],
    "full_like": [([X3], {"value": 0.0}), ([T("int64", (2, "seq"))], {"value": 1})],
    "abs": [([X3], {})],
    "reshape": [([T(F32, (1, "seq", 64))], {"shape": [1, -1, 4, 16]}),
                ([T(F32, (2, "seq", 4, 16))], {"shape": [0, 0, 64]}),
                ([T(F32, (2, 3, 4))], {"shape": [4, 6]})],
    "permute": [([T(F32, (1, "seq", 4, 16))], {"perm": [0, 2, 1, 3]}),
                ([T(F32, (2, 3, 4))], {"perm": [2, 0, 1]})],
    "unsqueeze": [([X3], {"axis": 1}), ([X3], {"axis": -1}), ([T(F32, ())], {"axis": 0})],
    "expand": [([T(F32, (1, 1, "seq", 8))], {"shape": [-1, 4, -1, -1]}),
               ([T(F32, (3, 1))], {"shape": [2, 3, 5]})],
    "slice": [([X3], {"axis": -1, "start": 2, "end": 6}), ([X3], {"axis": 1, "start": 0}),
              ([X3], {"axis": 1, "start": 1, "end": 3}), ([X3], {"axis": 2, "start": 4, "end": INT_MAX}),
              ([X3], {"axis": 2, "start": -3}), ([X3], {"axis": 2, "start": 0, "end": 8, "step": 2}),
              ([X3], {"axis": 2, "start": 6, "end": 2})],
    "concat": [([X3, X3], {"axis": -1}), ([T(F32, (1, "past", 8)), X3], {"axis": 1}),
               ([T(F32, (2, 3)), T(F32, (2, 1)), T(F32, (2, 4))], {"axis": 1})],
    "embedding": [([T(F32, (11, 8)), T("int64", (1, "seq"), "int", 11)], {})],
    "matmul": [([T(F32, (2, 4, "seq", 8)), T(F32, (2, 4, 8, "seq"))], {}),
               ([T(F32, (3, 5)), T(F32, (5, 2))], {}),
               ([T(F32, (1, 4, "seq", 8)), T(F32, (8, 6))], {})],
    "dequantize": [([T("uint8", (6, 4), "int", 256), T(F32, (6, 2), "positive"), T("uint8", (6, 2), "int", 16)],
                    {"bits": 4, "group_size": 4, "k": 8}),
                   ([T("uint8", (6, 3), "int", 256), T(F32, (6, 1), "positive"), T("uint8", (6, 1), "int", 8)],
                    {"bits": 3, "group_size": 0, "k": 8})],
    "quantize_rows": [([X3], {})],
    "dequantize_rows": [([T("int8", (1, "seq", 8)), T(F32, (1, "seq", 1), "positive")], {})],
    "linear_w8a8": [([X3, T("int8", (6, 8)), T(F32, (6,), "positive")], {}),
                    ([X3, T("int8", (6, 8)), T(F32, (6,), "positive"), T(F32, (6,))], {})],
    "linear": [([X3, T(F32, (6, 8))], {}), ([X3, T(F32, (6, 8)), T(F32, (6,))], {})],
    "layer_norm": [([X3], {}), ([X3, T(F32, (8,)), T(F32, (8,))], {"eps": 1e-6})],
    "rms_norm": [([X3, T(F32, (8,))], {})],
    "rotary": [([T(F32, (1, 4, "seq", 8)), T(F32, (1, 1, "seq", 8)), T(F32, (1, 1, "seq", 8))], {}),
               ([T(F32, (1, 4, "seq", 8)), T(F32, (1, 1, "seq", 4)), T(F32, (1, 1, "seq", 4))], {})],
    "glu": [([X3, X3], {}), ([X3, X3], {"act": "gelu"}), ([X3, X3], {"act": "gelu_tanh"}), ([X3, X3], {"act": "relu"}),
            ([X3, X3], {"threshold": 0.25})],
    # fused ops (edgec/ir/ops_fused.py)
    "add_rms_norm": [([X3, X3, T(F32, (8,))], {"eps": 1e-5})],
    "rotary_cached": [([T(F32, (1, 4, "seq", 8)), T("int64", (1, "seq"), "int", 16), T(F32, (16, 4)),
                        T(F32, (16, 4))], {}),
                      ([T(F32, (1, 4, "seq", 8)), T("int64", (1, "seq"), "int", 16), T(F32, (16, 2)),
                        T(F32, (16, 2))], {})],
    "split": [([T(F32, (1, "seq", 12))], {"sizes": [8, 2, 2]}), ([T(F32, (6, 4))], {"sizes": [1, 5], "axis": 0})],
    "attention": [
        ([T(F32, (1, 4, "seq", 8)), T(F32, (1, 2, "seq", 8)), T(F32, (1, 2, "seq", 6))], {"scale": 0.3}),
        ([T(F32, (1, 4, "seq", 8)), T(F32, (1, 2, "seq", 8)), T(F32, (1, 2, "seq", 8)),
          T(F32, (1, 2, "past", 8)), T(F32, (1, 2, "past", 8))], {"scale": 0.3, "window": 2}),
    ],
    # pre-lowering forms (passes/gqa.py, passes/logits_rows.py)
    "gqa": [([T(F32, (1, "seq", 32)), T(F32, (1, "seq", 16)), T(F32, (1, "seq", 16)), T(F32, (1, 2, "past", 8)),
              T(F32, (1, 2, "past", 8)), T("int64", (1, "seq"), "int", 8)], {"scale": 0.3, "window": 2})],
    "gqa_packed": [([T(F32, (1, "seq", 64)), T(F32, (1, 2, "past", 8)), T(F32, (1, 2, "past", 8)),
                     T("int64", (1, "seq"), "int", 16), T(F32, (16, 4)), T(F32, (16, 4))], {"scale": 0.3})],
    "last_rows": [([X3, T("int64", (1,), "int", 1)], {"dim": "seq"})],  # n = 0: every row, so the dim is seq
}


def _array(spec):
    dtype, shape, kind, hi = spec
    shape = tuple(S.evaluate(d, BIND) for d in shape)
    if kind == "int":
        return RNG.integers(0, hi, size=shape).astype(dtype)
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(-5, 5, size=shape).astype(dtype)
    a = RNG.standard_normal(shape).astype(dtype)
    return np.abs(a) + np.asarray(0.5, dtype) if kind == "positive" else a


def test_op_table_covers_every_registered_op():
    missing = set(all_ops()) - set(OP_CASES)
    assert not missing, f"ops without shape-inference test cases: {sorted(missing)}"
    assert not set(OP_CASES) - set(all_ops())


@pytest.mark.parametrize("op, idx", [(op, i) for op, cases in OP_CASES.items() for i in range(len(cases))])
def test_inference_matches_reference(op, idx):
    specs, attrs = OP_CASES[op][idx]
    opdef = get_op(op)
    attrs = opdef.complete_attrs(attrs)
    lo, hi = opdef.arity
    assert lo <= len(specs) <= hi
    values = [Value(f"in{i}", s[0], s[1], kind="input") for i, s in enumerate(specs)]
    inferred = opdef.infer(values, attrs)
    arrays = [_array(s) for s in specs]
    with np.errstate(all="ignore"):
        result = opdef.ref(*arrays, **attrs)
    results = result if isinstance(result, tuple) else (result,)
    assert len(results) == len(inferred)
    for (dtype, shape), r in zip(inferred, results):
        r = np.asarray(r)
        concrete = tuple(S.evaluate(d, BIND) for d in shape)
        assert concrete == r.shape, f"{op}: inferred {shape} -> {concrete}, reference gave {r.shape}"
        assert r.dtype.name == dtype, f"{op}: inferred {dtype}, reference gave {r.dtype}"


@pytest.mark.parametrize("op, specs, attrs", [
    ("add", [T(F32, (2,)), T("float16", (2,))], {}),
    ("add", [T(F32, ("seq",)), T(F32, ("past",))], {}),
    ("matmul", [T(F32, (2, 3)), T(F32, (4, 2))], {}),
    ("linear", [T(F32, (2, 3)), T(F32, (4, 2))], {}),
    ("permute", [X3], {"perm": [0, 0, 1]}),
    ("unsqueeze", [X3], {"axis": 5}),
    ("mean", [X3], {"axes": [3]}),
    ("concat", [X3, T(F32, (1, "seq"))], {"axis": 1}),
    ("rotary", [T(F32, (1, 4, "seq", 8)), T(F32, (1, 1, "seq", 10)), T(F32, (1, 1, "seq", 10))], {}),
    ("rotary", [T(F32, (1, 4, "seq", 8)), T(F32, (1, 1, "seq", 3)), T(F32, (1, 1, "seq", 3))], {}),
    ("glu", [X3, X3], {"act": "tanh"}),
    ("glu", [X3, X3], {"threshold": -0.1}),
    ("sparsify", [X3], {"threshold": float("nan")}),
    ("sparsify", [X3], {"threshold": True}),
    ("sparsify", [T("int64", (1, "seq"))], {"threshold": 0.5}),
    ("attention", [T(F32, (1, 3, "seq", 8)), T(F32, (1, 2, "seq", 8)), T(F32, (1, 2, "seq", 8))], {"scale": 1.0}),
    ("attention", [T(F32, (1, 4, "seq", 8)), T(F32, (1, 2, "seq", 8)), T(F32, (1, 2, "seq", 8)),
                   T(F32, (1, 2, "past", 8))], {"scale": 1.0}),
    ("expand", [T(F32, (3, 4))], {"shape": [3, 1]}),
    ("expand", [T(F32, (3, 4))], {"shape": [4]}),
    ("slice", [X3], {"axis": 1, "start": -2}),
    ("slice", [X3], {"axis": 1, "start": 4, "end": 2}),
    ("topk", [X3], {"k": 9}),
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))], {"top_k": 5}),
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))],
     {"top_k": 2, "scoring": "tanh"}),
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3)), T(F32, (3,))],
     {"top_k": 2, "scoring": "sigmoid", "biases": ("score",)}),                   # bias of 3 for 4 experts
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3)), T(F32, (4,))],
     {"top_k": 2}),                                                                # an input `biases` does not name
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3)), T(F32, (4, 5))],
     {"top_k": 2, "biases": ("gate_up",)}),                                        # gate_up bias of 5 for 2I = 6
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))],
     {"top_k": 2, "act": "clamped_swiglu"}),                                       # no limit
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3)), T(F32, (4,))],
     {"top_k": 2, "biases": ("bogus",)}),
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))],
     {"top_k": 2, "n_group": 3}),                                                  # 4 experts in 3 groups
    ("moe", [T(F32, ("seq", 8)), T(F32, (8, 8)), T(F32, (8, 6, 8)), T(F32, (8, 8, 3))],
     {"top_k": 3, "n_group": 4, "topk_group": 1}),                                # 3 of the kept group's 2
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))],
     {"top_k": 3, "scoring": "sparsemixer"}),                                      # sparsemixer picks 2
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))],
     {"top_k": 2, "routed_scaling": float("nan")}),
    ("gather", [T(F32, ("seq", 6)), T("int32", ("seq", 2))], {"axis": 1}),
    ("scatter", [T(F32, ("seq", 6)), T("int64", ("seq",))], {"axis": 0, "value": 1.0}),
    ("masked_fill", [X3, T(F32, (1, "seq", 8))], {"value": 0.0}),
    ("masked_fill", [T(F32, ("seq", 1)), T("bool", ("seq", 4))], {"value": 0.0}),   # the mask would grow x
    ("greater", [X3, T("float16", ())], {}),
    ("logical_not", [X3], {}),
    ("moe", [T(F32, ("seq", 8)), T(F32, (4, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 4))], {"top_k": 2}),
    ("moe", [T(F32, ("seq", 8)), T(F32, (3, 8)), T(F32, (4, 6, 8)), T(F32, (4, 8, 3))], {"top_k": 2}),
    ("moe_experts", [T(F32, ("seq", 8)), T("int64", ("seq", 2)), T(F32, ("seq", 2)), T(F32, (4, 6, 8)),
                     T(F32, (4, 8, 3))], {"act": "tanh"}),
])
def test_inference_rejects_bad_inputs(op, specs, attrs):
    opdef = get_op(op)
    values = [Value(f"in{i}", s[0], s[1], kind="input") for i, s in enumerate(specs)]
    with pytest.raises(ValueError):
        opdef.infer(values, opdef.complete_attrs(attrs))


def test_symbolic_inner_dims_compare_normalized():
    g = Graph()
    x = g.add_input("x", F32, (2, "seq+past"))
    y = g.add_input("y", F32, ("past+seq", 3))
    w = g.add_input("w", F32, (4, "past+seq"))
    assert g.op("matmul", x, y).shape == (2, 3)
    assert g.op("linear", x, w).shape == (2, 4)


def test_complete_attrs():
    with pytest.raises(ValueError, match="unknown attributes"):
        get_op("softmax").complete_attrs({"dim": 1})
    with pytest.raises(ValueError, match="missing attribute"):
        get_op("reshape").complete_attrs({})
    assert get_op("attention").complete_attrs({"scale": 0.5}) == {"scale": 0.5, "softcap": 0.0, "window": 0,
                                                                  "sinks": ()}
    with pytest.raises(KeyError, match="unknown IR op"):
        get_op("frobnicate")


# ============================================================== reference semantics vs torch
def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_rms_norm_matches_torch():
    x, w = _randn(2, 5, 16) * 3, _randn(16)
    ours = get_op("rms_norm").ref(x, w, eps=1e-6)
    theirs = F.rms_norm(_t(x), (16,), _t(w), eps=1e-6).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_layer_norm_matches_torch():
    x, w, b = _randn(2, 5, 16) * 3 + 1, _randn(16), _randn(16)
    ref = get_op("layer_norm").ref
    np.testing.assert_allclose(ref(x, w, b, eps=1e-5), F.layer_norm(_t(x), (16,), _t(w), _t(b), 1e-5).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref(x, eps=1e-5), F.layer_norm(_t(x), (16,), eps=1e-5).numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(approximate):
    x = np.linspace(-6, 6, 301, dtype=np.float32)
    ours = get_op("gelu").ref(x, approximate=approximate)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, F.gelu(_t(x), approximate=approximate).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act, fn", [("silu", F.silu), ("gelu", F.gelu), ("relu", F.relu),
                                     ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"))])
def test_glu_matches_torch(act, fn):
    g, u = _randn(2, 3, 16) * 2, _randn(2, 3, 16)
    ours = get_op("glu").ref(g, u, act=act)
    # atol 2e-6: torch's float32 erf differs from the reference's float64 one by ~1e-6 near gelu's zero
    np.testing.assert_allclose(ours, (fn(_t(g)) * _t(u)).numpy(), rtol=1e-5, atol=2e-6)


def test_glu_threshold_zeroes_small_activations_and_zero_is_off():
    g, u = _randn(2, 3, 16) * 2, _randn(2, 3, 16)
    ref = get_op("glu").ref
    plain = ref(g, u, act="silu")
    np.testing.assert_array_equal(ref(g, u, act="silu", threshold=0.0), plain)  # bit for bit
    a = (F.silu(_t(g))).numpy()
    cut = ref(g, u, act="silu", threshold=0.3)
    small = np.abs(a) <= np.float32(0.3)
    assert 0.2 < small.mean() < 0.8
    assert (cut[small] == 0).all()
    np.testing.assert_array_equal(cut[~small], plain[~small])


def test_sparsify_compares_in_float32():
    x = np.array([-0.3, 0.1, 0.2, -0.25, 0.0], np.float32)
    np.testing.assert_array_equal(get_op("sparsify").ref(x, threshold=0.2), x * [1, 0, 0, 1, 0])  # 0.2 itself: zeroed
    h = np.array([0.10009765625], np.float16)  # 0.10007 rounds to h in float16: a float16 comparison would zero it
    assert np.float16(0.10007) == h[0] and get_op("sparsify").ref(h, threshold=0.10007)[0] == h[0]


def _torch_rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _cos_sin(seq, rot_dim, base=10000.0):
    inv = 1.0 / base ** (np.arange(0, rot_dim, 2, dtype=np.float32) / rot_dim)
    freqs = np.arange(seq, dtype=np.float32)[:, None] * inv[None]
    emb = np.concatenate([freqs, freqs], -1)
    return np.cos(emb)[None, None].astype(np.float32), np.sin(emb)[None, None].astype(np.float32)


@pytest.mark.parametrize("rot_dim", [16, 4])
def test_rotary_matches_rotate_half(rot_dim):
    x = _randn(1, 3, 6, 16)
    cos, sin = _cos_sin(6, rot_dim)
    ours = get_op("rotary").ref(x, cos, sin)
    tx, tc, ts = _t(x), _t(cos), _t(sin)
    rot, rest = tx[..., :rot_dim], tx[..., rot_dim:]
    theirs = torch.cat([rot * tc + _torch_rotate_half(rot) * ts, rest], dim=-1).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    if rot_dim < 16:
        np.testing.assert_array_equal(ours[..., rot_dim:], x[..., rot_dim:])
    # position 0 is the identity (cos=1, sin=0)
    np.testing.assert_allclose(ours[:, :, 0], x[:, :, 0], atol=1e-6)


def _attn(q, k, v, scale, **kw):
    return get_op("attention").ref(q, k, v, scale=scale, softcap=kw.get("softcap", 0.0),
                                   window=kw.get("window", 0))


def _sdpa(q, k, v, scale, mask=None):
    out = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), attn_mask=None if mask is None else _t(mask),
                                         is_causal=mask is None, scale=scale, enable_gqa=True)
    return out.transpose(1, 2).numpy()  # [B, S, H, Dv]


@pytest.mark.parametrize("heads, kv_heads, dv", [(4, 4, 8), (4, 2, 8), (6, 1, 5)])
def test_attention_causal_gqa_matches_sdpa(heads, kv_heads, dv):
    q, k, v = _randn(2, heads, 7, 8), _randn(2, kv_heads, 7, 8), _randn(2, kv_heads, 7, dv)
    ours = _attn(q, k, v, 0.35)
    assert ours.shape == (2, 7, heads, dv)
    np.testing.assert_allclose(ours, _sdpa(q, k, v, 0.35), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [1, 3, 100])
def test_attention_window_matches_sdpa(window):
    q, k, v = _randn(1, 4, 9, 8), _randn(1, 2, 9, 8), _randn(1, 2, 9, 8)
    i, j = np.arange(9)[:, None], np.arange(9)[None]
    mask = (j <= i) & (j > i - window)
    ours = _attn(q, k, v, 0.25, window=window)
    np.testing.assert_allclose(ours, _sdpa(q, k, v, 0.25, mask), rtol=1e-5, atol=1e-5)
    if window == 1:  # each query sees only itself
        np.testing.assert_allclose(ours, np.repeat(v, 2, axis=1).swapaxes(1, 2), rtol=1e-6)


def test_attention_softcap_matches_torch():
    q, k, v = _randn(1, 4, 6, 8) * 4, _randn(1, 2, 6, 8) * 4, _randn(1, 2, 6, 8)
    cap, scale = 5.0, 0.5
    ours = _attn(q, k, v, scale, softcap=cap, window=4)
    tk, tv = _t(k).repeat_interleave(2, dim=1), _t(v).repeat_interleave(2, dim=1)
    s = _t(q) @ tk.transpose(-1, -2) * scale
    s = cap * torch.tanh(s / cap)
    i, j = torch.arange(6)[:, None], torch.arange(6)[None]
    s = s.masked_fill(~((j <= i) & (j > i - 4)), float("-inf"))
    theirs = (torch.softmax(s, -1) @ tv).transpose(1, 2).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # the cap is not a no-op on these scores
    assert np.abs(ours - _attn(q, k, v, scale, window=4)).max() > 1e-3


@pytest.mark.parametrize("window, softcap", [(0, 0.0), (3, 0.0), (0, 20.0)])
@pytest.mark.parametrize("past", [0, 1, 6])
def test_attention_with_past_equals_full_sequence(past, window, softcap):
    total = past + 4
    q, k, v = _randn(1, 4, total, 8), _randn(1, 2, total, 8), _randn(1, 2, total, 8)
    full = _attn(q, k, v, 0.3, window=window, softcap=softcap)
    out, pk, pv = get_op("attention").ref(q[:, :, past:], k[:, :, past:], v[:, :, past:],
                                          k[:, :, :past], v[:, :, :past], scale=0.3, softcap=softcap,
                                          window=window)
    np.testing.assert_allclose(out, full[:, past:], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pk, k)
    np.testing.assert_array_equal(pv, v)


# ============================================================== verifier
def _good_graph():
    g = Graph()
    x = g.add_input("x", F32, (1, "seq", 8))
    w = g.add_weight("w", RNG.standard_normal((4, 8)).astype(np.float32))
    h = g.op("linear", x, w)
    y = g.op("silu", h)
    z = g.op("softmax", y)
    g.outputs = [z]
    return g


def test_verify_accepts_good_graph():
    verify(_good_graph())


def _break_use_before_def(g):
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]


def _break_shape(g):
    g.nodes[1].outputs[0].shape = (1, "seq", 5)


def _break_dtype(g):
    g.nodes[2].outputs[0].dtype = "float16"


def _break_unknown_op(g):
    g.nodes[1].op = "frobnicate"


def _break_duplicate(g):
    g.nodes[2].outputs[0].name = g.nodes[0].outputs[0].name


def _break_duplicate_input_name(g):
    g.nodes[0].outputs[0].name = "x"


def _break_arity(g):
    g.nodes[1].inputs.append(g.inputs[0])


def _break_output(g):
    g.outputs = [Value("ghost", F32, (1,))]


def _break_foreign_value(g):
    g.nodes[1].inputs = [Value("linear", F32, (1, "seq", 4))]


def _break_producer(g):
    g.nodes[1].outputs[0].producer = g.nodes[0]


def _break_output_count(g):
    g.nodes[1].outputs.append(Value("extra", F32, (1, "seq", 4), producer=g.nodes[1]))


def _break_infer(g):
    g.nodes[2].attrs["axis"] = 7


@pytest.mark.parametrize("breaker, match", [
    (_break_use_before_def, "before it is defined"),
    (_break_shape, "recorded"),
    (_break_dtype, "recorded"),
    (_break_unknown_op, "unknown IR op"),
    (_break_duplicate, "defined twice"),
    (_break_duplicate_input_name, "defined twice"),
    (_break_arity, "2 inputs, expected 1..1"),
    (_break_output, "graph output"),
    (_break_foreign_value, "before it is defined"),
    (_break_producer, "wrong producer"),
    (_break_output_count, "outputs, inference says"),
    (_break_infer, "softmax"),
])
def test_verify_catches(breaker, match):
    g = _good_graph()
    breaker(g)
    with pytest.raises(VerifyError, match=match):
        verify(g)


def test_verify_accepts_equal_symbolic_sums():
    g = Graph()
    x = g.add_input("x", F32, (1, "seq+past"))
    y = g.op("neg", x)
    y.shape = (1, "past+seq")
    g.outputs = [y]
    verify(g)


# ============================================================== printer
GOLDEN = """\
graph(%x: float32[1, seq, 4], %past: float32[1, past, 4]) {
  weight %w: float32[4]
  %mul: float32[1, seq, 4] = mul(%x, %w)
  %const: float32[] = const(value=1e-06, dtype='float32')
  %add: float32[1, seq, 4] = add(%mul, %const)
  %gelu: float32[1, seq, 4] = gelu(%add, approximate='tanh')
  %mean: float32[1, seq, 1] = mean(%gelu, axes=[-1], keepdim=True)
  %concat: float32[1, past+seq, 4] = concat(%past, %gelu, axis=1)
  %reshape: float32[1, past+seq, 2, 2] = reshape(%concat, shape=[1, -1, 2, 2])
  return %reshape, %mean, %w
}"""


def test_printer_golden():
    g = Graph()
    x = g.add_input("x", F32, (1, "seq", 4))
    past = g.add_input("past", F32, (1, "past", 4))
    w = g.add_weight("w", np.ones(4, np.float32))
    y = g.op("mul", x, w)
    y = g.op("add", y, g.op("const", value=1e-6, dtype=F32))
    y = g.op("gelu", y, approximate="tanh")
    m = g.op("mean", y, axes=[-1], keepdim=True)
    c = g.op("concat", past, y, axis=1)
    r = g.op("reshape", c, shape=[1, -1, 2, 2])
    g.outputs = [r, m, w]
    verify(g)
    assert format_graph(g) == GOLDEN
    assert str(g) == GOLDEN


def test_printer_multi_output_node():
    g = Graph()
    q = g.add_input("q", F32, (1, 4, "seq", 8))
    k = g.add_input("k", F32, (1, 2, "seq", 8))
    pk = g.add_input("pk", F32, (1, 2, "past", 8))
    n = g.add_node("attention", [q, k, k, pk, pk], {"scale": 0.5}, name="attn")
    g.outputs = list(n.outputs)
    line = format_graph(g).splitlines()[1]
    assert line == ("  %attn_0: float32[1, seq, 4, 8], %attn_1: float32[1, 2, past+seq, 8], "
                    "%attn_2: float32[1, 2, past+seq, 8] = attention(%q, %k, %k, %pk, %pk, "
                    "scale=0.5, softcap=0.0, window=0, sinks=[])")


# ============================================================== weight store
WEIGHTS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "f16": (np.arange(5, dtype=np.float16) - 2) / 3,
    "i64": np.array([[-(2**40), 3], [7, 2**62]], np.int64),
    "i32": np.arange(-3, 4, dtype=np.int32),
    "i8": np.array([-128, -1, 0, 1, 127], np.int8),
    "u8": np.arange(250, 256, dtype=np.uint8),
    "bool": np.array([[True, False, True]]),
    "empty": np.zeros((0, 5), np.float32),
    "scalar": np.array(2.5, np.float32),
    "odd": RNG.standard_normal(13).astype(np.float32),
}


@pytest.fixture
def saved(tmp_path):
    store = WeightStore()
    for k, v in WEIGHTS.items():
        store[k] = v
    path = tmp_path / "weights.safetensors"
    store.save(path)
    return path


def test_weight_store_round_trip(saved):
    store = WeightStore.open(saved)
    assert list(store) == list(WEIGHTS)
    assert len(store) == len(WEIGHTS)
    for name, orig in WEIGHTS.items():
        got = store[name]
        if orig.size:
            assert isinstance(got, np.memmap), name
        assert got.dtype == orig.dtype, name
        assert got.shape == orig.shape, name
        np.testing.assert_array_equal(got, orig, err_msg=name)
        info = store.info(name)
        assert (info.dtype, info.shape) == (orig.dtype.name, orig.shape)
        assert info.nbytes == orig.nbytes
    assert store.total_bytes() == sum(a.nbytes for a in WEIGHTS.values())


def test_weight_store_mmaps_are_read_only(saved):
    store = WeightStore.open(saved)
    with pytest.raises(ValueError):
        store["f32"][0, 0] = 1.0


def test_weight_store_data_is_aligned_without_gaps(saved):
    raw = saved.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 64 == 0
    header = json.loads(raw[8:8 + n])
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        assert start % WEIGHTS[name].dtype.itemsize == 0, name
        assert end - start == WEIGHTS[name].nbytes, name
        assert raw[8 + n + start:8 + n + end] == WEIGHTS[name].tobytes(), name
    store = WeightStore.open(saved)
    for name in WEIGHTS:
        if isinstance(store[name], np.memmap):
            assert store[name].offset % store[name].dtype.itemsize == 0, name


def test_weight_store_truncated_raises(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:-40])
    with pytest.raises(ValueError, match="truncated"):
        WeightStore.open(saved)


def test_weight_store_truncated_header_raises(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:30])
    with pytest.raises(ValueError):
        WeightStore.open(saved)


def test_weight_store_rejects_unsupported_dtype():
    store = WeightStore()
    with pytest.raises(TypeError, match="unsupported dtype"):
        store["x"] = np.zeros(3, np.float64)
    store["y"] = np.zeros(3, np.float32)
    store.pop("y")
    store.pop("missing")
    assert len(store) == 0 and "y" not in store


def test_weight_store_file_loads_with_safetensors(saved):
    from safetensors.numpy import load_file

    loaded = load_file(str(saved))
    for name, orig in WEIGHTS.items():
        np.testing.assert_array_equal(loaded[name], orig)


# ============================================================== interpreter
def test_interpret_runs_graph_and_weight_outputs():
    g = _good_graph()
    g.outputs.append(g.weight_values["w"])
    x = _randn(1, 3, 8)
    out = interpret(g, {"x": x})
    w = g.weight(g.weight_values["w"])
    logits = x @ w.T
    silu = logits / (1 + np.exp(-logits))
    expect = np.exp(silu) / np.exp(silu).sum(-1, keepdims=True)
    np.testing.assert_allclose(out["softmax"], expect, rtol=1e-5)
    np.testing.assert_array_equal(out["w"], w)


def test_interpret_missing_input():
    with pytest.raises(KeyError, match="missing graph input 'x'"):
        interpret(_good_graph(), {"y": _randn(1, 3, 8)})


def test_interpret_wrong_dtype():
    with pytest.raises(TypeError, match="expected float32"):
        interpret(_good_graph(), {"x": np.zeros((1, 3, 8), np.float64)})


def test_interpret_wrong_rank():
    with pytest.raises(ValueError, match="expected rank 3"):
        interpret(_good_graph(), {"x": _randn(3, 8)})


def test_interpret_multi_output_node():
    g = Graph()
    q = g.add_input("q", F32, (1, 2, "seq", 4))
    pk = g.add_input("pk", F32, (1, 2, "past", 4))
    n = g.add_node("attention", [q, q, q, pk, pk], {"scale": 1 / math.sqrt(4)})
    g.outputs = list(n.outputs)
    qa, pa = _randn(1, 2, 3, 4), _randn(1, 2, 2, 4)
    out = interpret(g, {"q": qa, "pk": pa})
    assert [a.shape for a in out.values()] == [(1, 3, 2, 4), (1, 2, 5, 4), (1, 2, 5, 4)]
