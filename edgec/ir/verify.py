"""Graph verifier: SSA, topological order, known ops, re-inferred types."""
from __future__ import annotations

from .graph import Graph
from .ops import get_op
from .shapes import normalize


class VerifyError(ValueError):
    pass


def verify(graph: Graph) -> None:
    defined = set(graph.inputs) | set(graph.weight_values.values())
    names: set[str] = {v.name for v in defined}
    for n in graph.nodes:
        try:
            opdef = get_op(n.op)
        except KeyError as e:
            raise VerifyError(str(e)) from None
        lo, hi = opdef.arity
        if not lo <= len(n.inputs) <= hi:
            raise VerifyError(f"{n.op}: {len(n.inputs)} inputs, expected {lo}..{hi}")
        for v in n.inputs:
            if v not in defined:
                raise VerifyError(f"{n.op} uses %{v.name} before it is defined")
        try:
            specs = opdef.infer(n.inputs, n.attrs)
        except Exception as e:  # noqa: BLE001 - report any inference failure as a verify error
            raise VerifyError(f"{n.op} -> %{n.outputs[0].name}: {e}") from None
        if len(specs) != len(n.outputs):
            raise VerifyError(f"{n.op}: {len(n.outputs)} outputs, inference says {len(specs)}")
        for out, (dtype, shape) in zip(n.outputs, specs):
            if out.dtype != dtype or tuple(map(normalize, out.shape)) != tuple(map(normalize, shape)):
                raise VerifyError(f"%{out.name}: recorded {out.dtype}{list(out.shape)}, "
                                  f"inferred {dtype}{list(shape)}")
            if out.name in names:
                raise VerifyError(f"%{out.name} defined twice")
            names.add(out.name)
            defined.add(out)
            if out.producer is not n:
                raise VerifyError(f"%{out.name} has the wrong producer")
    for v in graph.outputs:
        if v not in defined:
            raise VerifyError(f"graph output %{v.name} is not defined")
