"""Symbolic dimensions.

A dimension is an int or a string. A string is a symbol (`seq`, `past`) or a
sum of symbols and ints (`past+seq`). That is all LLM graphs need: the
sequence axis grows by concatenation, everything else is static.
"""
from __future__ import annotations

import re
from typing import Union

Dim = Union[int, str]
Shape = tuple  # tuple[Dim, ...]

_TERM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _terms(d: Dim) -> tuple[int, list[str]]:
    if isinstance(d, int):
        return d, []
    const, syms = 0, []
    for t in str(d).replace(" ", "").split("+"):
        if t.lstrip("-").isdigit():
            const += int(t)
        elif _TERM.match(t):
            syms.append(t)
        else:
            raise ValueError(f"unsupported symbolic dimension {d!r}")
    return const, syms


def normalize(d: Dim) -> Dim:
    const, syms = _terms(d)
    if not syms:
        return const
    parts = sorted(syms) + ([str(const)] if const else [])
    return "+".join(parts)


def dim_add(a: Dim, b: Dim) -> Dim:
    ca, sa = _terms(a)
    cb, sb = _terms(b)
    return normalize("+".join(sa + sb + [str(ca + cb)]))


def symbols_of(d: Dim) -> set[str]:
    return set(_terms(d)[1])


def is_static(shape: Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def evaluate(d: Dim, bindings: dict[str, int]) -> int:
    const, syms = _terms(d)
    return const + sum(bindings[s] for s in syms)


def broadcast(a: Shape, b: Shape) -> Shape:
    """numpy broadcasting on symbolic shapes (a symbol broadcasts only with 1 or itself)."""
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == 1:
            out.append(db)
        elif db == 1 or normalize(da) == normalize(db):
            out.append(da)
        else:
            raise ValueError(f"shapes {format_shape(a)} and {format_shape(b)} do not broadcast")
    return tuple(reversed(out))


def numel_split(shape: Shape) -> tuple[int, list[str]]:
    """Product of a shape as (static factor, list of symbolic factors)."""
    coef, syms = 1, []
    for d in shape:
        if isinstance(d, int):
            coef *= d
        else:
            syms.append(normalize(d))
    return coef, syms


def infer_reshape(src: Shape, target: list[int]) -> Shape:
    """Resolve a reshape target that uses -1 (at most one) and 0 (copy) against src."""
    if any(t == 0 and i >= len(src) for i, t in enumerate(target)):
        raise ValueError(f"reshape {format_shape(src)} -> {target}: 0 (copy) past the input rank")
    target = [src[i] if t == 0 else t for i, t in enumerate(target)]
    if target.count(-1) > 1:
        raise ValueError("reshape allows at most one -1")
    if -1 not in target:
        (cin, sin), (cout, sout) = numel_split(src), numel_split(target)
        if cin != cout or sorted(sin) != sorted(sout):
            raise ValueError(f"cannot reshape {format_shape(src)} to {target}")
        return tuple(target)
    cin, sin = numel_split(src)
    cout, sout = numel_split([t for t in target if t != -1])
    left = list(sin)
    for s in sout:
        if s not in left:
            raise ValueError(f"cannot reshape {format_shape(src)} to {target}")
        left.remove(s)
    if cin % cout:
        raise ValueError(f"cannot reshape {format_shape(src)} to {target}")
    coef = cin // cout
    if not left:
        missing: Dim = coef
    elif len(left) == 1 and coef == 1:
        missing = left[0]
    else:
        raise ValueError(f"reshape {format_shape(src)} -> {target} needs a product of symbols")
    return tuple(missing if t == -1 else t for t in target)


def format_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
