"""PassManager: runs a list of passes, verifying, timing and recording each."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgec.errors import EdgecError
from edgec.ir import Graph, verify

from .registry import PassResult, get_pass


@dataclass
class PassRecord:
    name: str
    options: dict[str, Any]
    summary: str
    seconds: float
    nodes: int
    counts: dict[str, int | float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"pass": self.name, "options": self.options, "summary": self.summary, "counts": self.counts,
                "seconds": round(self.seconds, 4), "nodes_after": self.nodes}


class PassContext:
    """What a pass may know besides the graph: the device and backend it builds for, progress, and
    calibration windows (loaded once, lazily; only passes registered with needs_calibration may
    ask, which is what makes a recipe demand --calib). A pass gets it as `ctx` if it takes one."""

    def __init__(self, tokenizer=None, calib=None, progress: Callable[[str], None] | None = None, *,
                 device=None, backend: str | None = None, source=None):
        from edgec.calibration import CalibConfig

        self.tokenizer = tokenizer
        self.calib = calib or CalibConfig()
        self.progress = progress or (lambda msg: None)
        self.device = device      # edgec.devices.Device (None: not known, e.g. a unit test)
        self.backend = backend    # backend name
        self.source = source      # edgec.frontend.ModelSource the graph was imported from (None: not known)
        self._windows = None

    def windows(self):
        if self._windows is None:
            from edgec.calibration import load_windows

            if self.tokenizer is None:
                raise EdgecError("calibration needs the model's tokenizer")
            self._windows = load_windows(self.calib, self.tokenizer)
            self.progress(f"calibration: {len(self._windows)} windows of {self.calib.seqlen} tokens "
                          f"from {self.calib.source}")
        return self._windows


class PassManager:
    """Run passes in order. `dump_dir` writes the IR text after every pass."""

    def __init__(self, progress: Callable[[str], None] | None = None, dump_dir: Path | None = None,
                 context: PassContext | None = None):
        self.records: list[PassRecord] = []
        self.progress = progress or (lambda msg: None)
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.context = context or PassContext(progress=self.progress)

    def run(self, graph: Graph, passes: list[tuple[str, dict]], phase: str = "") -> Graph:
        for name, opts in passes:
            p = get_pass(name)
            options = p.check_options(opts)
            t0 = time.perf_counter()
            extra = {"ctx": self.context} if p.takes_context else {}
            result = PassResult.of(p.fn(graph, **extra, **options))
            dt = time.perf_counter() - t0
            verify(graph)
            self.records.append(PassRecord(name, options, result.summary, dt, len(graph.nodes), dict(result.counts)))
            self.progress(f"{phase + ': ' if phase else ''}{name}: {result.summary} ({dt:.2f}s)")
            if self.dump_dir:
                self.dump_dir.mkdir(parents=True, exist_ok=True)
                idx = len(self.records)
                (self.dump_dir / f"{idx:02d}-{name}.txt").write_text(str(graph))
        return graph
