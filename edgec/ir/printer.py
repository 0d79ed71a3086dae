"""Text form of a graph, for debugging, `--dump-ir` and golden tests."""
from __future__ import annotations

from .shapes import format_shape


def _fmt_attr(v) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_attr(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def format_graph(graph) -> str:
    lines = []
    sig = ", ".join(f"%{v.name}: {v.dtype}{format_shape(v.shape)}" for v in graph.inputs)
    lines.append(f"graph({sig}) {{")
    for name, v in graph.weight_values.items():
        lines.append(f"  weight %{name}: {v.dtype}{format_shape(v.shape)}")
    for n in graph.nodes:
        outs = ", ".join(f"%{o.name}: {o.dtype}{format_shape(o.shape)}" for o in n.outputs)
        args = ", ".join(f"%{v.name}" for v in n.inputs)
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in n.attrs.items())
        lines.append(f"  {outs} = {n.op}({args}{', ' if args and attrs else ''}{attrs})")
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
