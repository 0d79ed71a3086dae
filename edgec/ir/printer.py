"""Text form of a graph, for debugging, `--dump-ir` and golden tests."""
from __future__ import annotations

from .shapes import format_shape


def _fmt_attr(v) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_attr(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def _fmt_meta(meta) -> str:
    """` {tier=cold, provenance=quantize}`, or nothing when no fact is set."""
    items = meta.items()
    return " {" + ", ".join(f"{k}={v}" for k, v in items) + "}" if items else ""


def _fmt_value(v) -> str:
    return f"%{v.name}: {v.dtype}{format_shape(v.shape)}{_fmt_meta(v.meta)}"


def format_graph(graph) -> str:
    lines = []
    sig = ", ".join(_fmt_value(v) for v in graph.inputs)
    lines.append(f"graph({sig}) {{")
    for v in graph.weight_values.values():
        lines.append(f"  weight {_fmt_value(v)}")
    for n in graph.nodes:
        outs = ", ".join(_fmt_value(o) for o in n.outputs)
        args = ", ".join(f"%{v.name}" for v in n.inputs)
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in n.attrs.items())
        lines.append(f"  {outs} = {n.op}({args}{', ' if args and attrs else ''}{attrs}){_fmt_meta(n.meta)}")
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
