"""Pass registry: every pass is a named function `graph, **options -> PassResult`.

A pass rewrites the graph in place and returns what it did: a PassResult with
counts (e.g. {"rms_norm": 61}) and the one line people read ("raised 61
rms_norm"). Tests and reports use the counts, never the wording. Options are
declared with their defaults so recipes can be checked before anything runs.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from edgec.errors import EdgecError


@dataclass
class PassResult:
    """What a pass did: `counts` for programs (tests, reports), `summary` for people."""

    summary: str = ""
    counts: dict[str, int | float] = field(default_factory=dict)

    def __getitem__(self, key: str) -> int | float:
        return self.counts[key]

    @classmethod
    def of(cls, returned) -> "PassResult":
        """A pass's return value as a PassResult (a plain string or None is a summary alone)."""
        if isinstance(returned, PassResult):
            return returned
        return cls("" if returned is None else str(returned))


@dataclass
class Pass:
    name: str
    fn: Callable[..., "PassResult | str | None"]
    options: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    needs_calibration: bool = False  # reads calibration windows (ctx.windows()): the build needs --calib

    @property
    def takes_context(self) -> bool:
        """fn(graph, ctx=PassContext, ...): device, backend, progress, calibration."""
        return "ctx" in inspect.signature(self.fn).parameters

    def check_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        unknown = set(opts) - set(self.options)
        if unknown:
            raise EdgecError(f"pass {self.name!r} has no option(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.options) or 'none'}")
        return {**self.options, **opts}


_PASSES: dict[str, Pass] = {}


def register_pass(name: str, *, needs_calibration: bool = False, **options):
    """Register fn(graph, [ctx,] **options) -> PassResult; needs_calibration: it reads ctx.windows()."""
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
