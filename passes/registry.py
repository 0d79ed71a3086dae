"""Pass registry: every pass is a named function `graph, **options -> summary`.

A pass rewrites the graph in place and returns one line saying what it did
(e.g. "raised 61 rms_norm"); options are declared with their defaults so
recipes can be checked before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from edgec.errors import EdgecError


@dataclass
class Pass:
    name: str
    fn: Callable[..., str | None]
    options: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    needs_calibration: bool = False  # fn also gets ctx=PassContext (calibration windows)

    def check_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        unknown = set(opts) - set(self.options)
        if unknown:
            raise EdgecError(f"pass {self.name!r} has no option(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.options) or 'none'}")
        return {**self.options, **opts}


_PASSES: dict[str, Pass] = {}


def register_pass(name: str, *, needs_calibration: bool = False, **options):
    """Register fn(graph, **options) -> summary; with needs_calibration also ctx=PassContext."""
    def deco(fn):
        doc = next(iter((fn.__doc__ or "").strip().splitlines()), "")
        _PASSES[name] = Pass(name, fn, options, doc, needs_calibration)
        return fn
    return deco


def get_pass(name: str) -> Pass:
    if name not in _PASSES:
        raise EdgecError(f"unknown pass {name!r}; available: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def list_passes() -> dict[str, Pass]:
    return dict(sorted(_PASSES.items()))
