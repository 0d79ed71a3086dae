"""Complex tensors imported as real pairs (DeepSeek-V2's RoPE).

Some models rotate q and k by complex multiplication: `torch.polar` builds e^(i*theta) from the
positions, `view_as_complex` reads q as pairs of reals, a complex `mul` rotates them and
`view_as_real` turns them back. The IR has no complex dtype, and needs none: a complex tensor of
shape S is imported as a float32 tensor of shape S + (2,) (real, imaginary), which is exactly the
memory `view_as_complex` reads and `view_as_real` writes, so those two are identities and only
`polar`, `mul` and the shape ops on complex values need a rule. Anything else on a complex tensor
fails the import naming the op.
"""
from __future__ import annotations

import torch

from ..ir import Value

# casts and copies that keep a complex tensor complex: nothing to do on pairs
_KEEP = ("aten._to_copy.default", "aten.to.dtype", "aten.to.device", "aten.to.dtype_layout",
         "aten.clone.default", "aten.contiguous.default", "aten.alias.default")


def is_complex(n) -> bool:
    v = n.meta.get("val") if isinstance(n, torch.fx.Node) else None
    return isinstance(v, torch.Tensor) and v.is_complex()


def involves_complex(node) -> bool:
    return is_complex(node) or any(is_complex(a) for a in node.all_input_nodes)


def _parts(g, z: Value) -> tuple[Value, Value]:
    """(real, imaginary) of pairs z [..., 2], each [..., 1]."""
    axis = z.rank - 1
    return (g.op("slice", z, axis=axis, start=0, end=1, step=1), g.op("slice", z, axis=axis, start=1, end=2, step=1))


def _pair(g, re: Value, im: Value, unsqueeze: bool) -> Value:
    if unsqueeze:
        re, im = (g.op("unsqueeze", v, axis=v.rank) for v in (re, im))
    return g.op("concat", re, im, axis=re.rank - 1)


def convert(im, node, args, kw) -> Value:
    """The IR value (pairs where complex) of an fx node that makes or reads a complex tensor."""
    g = im.graph
    name = str(node.target)
    if name == "aten.polar.default":  # abs * (cos theta, sin theta); abs is ones_like(theta) for RoPE
        r, theta = args
        cos, sin = g.op("cos", theta), g.op("sin", theta)
        if not (isinstance(node.args[0], torch.fx.Node) and str(node.args[0].target) == "aten.ones_like.default"):
            cos, sin = g.op("mul", r, cos), g.op("mul", r, sin)
        return _pair(g, cos, sin, unsqueeze=True)
    if name in ("aten.view_as_complex.default", "aten.view_as_real.default") or (name in _KEEP and is_complex(node)):
        return args[0]
    if name == "aten.unsqueeze.default" and is_complex(node):
        z, dim = args
        return g.op("unsqueeze", z, axis=dim % z.rank)  # z.rank: the complex rank + 1 (the pair axis)
    if name == "aten.mul.Tensor":
        a, b = args
        ca, cb = (is_complex(x) for x in node.args[:2])
        if ca and cb:  # (ar + i ai)(br + i bi)
            (ar, ai), (br, bi) = _parts(g, a), _parts(g, b)
            re = g.op("sub", g.op("mul", ar, br), g.op("mul", ai, bi))
            imag = g.op("add", g.op("mul", ar, bi), g.op("mul", ai, br))
            return _pair(g, re, imag, unsqueeze=False)
        z, s = (a, b) if ca else (b, a)
        if isinstance(s, Value):  # a real tensor scales both parts
            s = g.op("unsqueeze", s, axis=s.rank)
        return g.op("mul", z, im.tensor(s, "float32"))
    im.fail(node, f"{name} on complex tensors (edgec imports complex values as real pairs for "
                  "polar, mul, view_as_complex/view_as_real and unsqueeze only)")
