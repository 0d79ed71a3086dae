"""Every backend against the reference interpreter, one small graph per IR op (op_cases.py).

A backend joins by adding its name to helpers.BACKENDS and declaring the ops it lacks in
UNSUPPORTED: a case using one of them must fail to compile with UnsupportedModelError
naming the op (checked, never skipped). KNOWN_FAILURES lists cases a backend gets wrong
today, each with its reason; they are strict xfails, so a fix fails the run until its entry
is removed.
"""
from __future__ import annotations

import pytest

from edgec.errors import UnsupportedModelError
from edgec.ir import all_ops, interpret
from helpers import BACKENDS, compile_and_open
from op_cases import CASES, assert_outputs_match

UNSUPPORTED: dict[str, set[str]] = {
    "onnx": set(),
    "reference": set(),  # the interpreter itself: the identity check of the suite's plumbing
    "tvm": {"last_rows"},
    # gqa*: the ONNX backend's PRELOWER forms (the C backend keeps `attention`); sum, topk, moe_experts and
    # the router ops (gather ... abs): the frontend's forms of a router and its experts, which raise_moe
    # folds into `moe` (the C runtime's op)
    "c": {"gqa", "gqa_packed", "sum", "topk", "moe_experts",
          "gather", "scatter", "masked_fill", "greater", "logical_not", "full_like", "abs"},
}

KNOWN_FAILURES: dict[str, dict[str, str]] = {
    "tvm": {"concat_weight": "CpuParallel (targets/tvm/schedule.py) cannot fuse the loops of a concat "
                             "of an input and a weight along `seq`: TVM InternalError 'padding factor "
                             "... is not divisible'"},
}


def _params():
    for backend in BACKENDS:
        for name in sorted(CASES):
            reason = KNOWN_FAILURES.get(backend, {}).get(name)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(backend, name, marks=marks, id=f"{backend}-{name}")


@pytest.mark.parametrize("backend, name", list(_params()))
def test_op_matches_interpreter(backend, name, tmp_path):
    graph, feeds_list = CASES[name]()
    lacking = sorted({n.op for n in graph.nodes} & UNSUPPORTED[backend])
    if lacking:
        with pytest.raises(UnsupportedModelError, match=lacking[0]):
            compile_and_open(backend, graph, tmp_path)
        return
    ex = compile_and_open(backend, graph, tmp_path)  # one compile serves every feed
    for feeds in feeds_list:
        assert_outputs_match(name, graph, interpret(graph, feeds), ex.run(feeds))


def test_every_registered_op_has_a_case():
    used = {n.op for build in CASES.values() for n in build()[0].nodes}
    assert not set(all_ops()) - used, f"IR ops without a conformance case: {sorted(set(all_ops()) - used)}"


def test_declarations_name_backends_ops_and_cases():
    assert set(UNSUPPORTED) == set(BACKENDS), "every backend declares the ops it lacks (maybe none)"
    assert set(KNOWN_FAILURES) <= set(BACKENDS)
    for backend, ops in UNSUPPORTED.items():
        assert ops <= set(all_ops()), (backend, sorted(ops - set(all_ops())))
    for backend, cases in KNOWN_FAILURES.items():
        assert set(cases) <= set(CASES), (backend, sorted(set(cases) - set(CASES)))
