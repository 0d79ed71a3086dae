"""Workarounds for defects of the apache-tvm 0.27.0.post1 wheel that MetaSchedule tuning (tune.py) meets.

Each piece stands in for a part of MetaSchedule that crashes or stalls in that
wheel, and can go when a wheel without the defect is the one supported:

- `check_meta_schedule`: with apache-tvm-ffi 0.1.15, serializing TIR to JSON
  segfaults (0.1.14.post0 works). MetaSchedule copies TIR through JSON, so
  this probes it in a child process and fails in one line instead.
- Beyond that copy, tuning avoids serializing TIR (JSON, and the pickling
  built on it) altogether, so MetaSchedule's pickling LocalBuilder and its
  JSON database are not used: `in_process_builder` builds candidates in this
  process, `plain_args_runner` hands LocalRunner's workers the argument
  descriptions as plain lists (`plain`) instead of pickled TVM objects, and
  tune.py keeps the records in a memory database and writes its own log (each
  kernel keyed by the SHA-256 of its TVMScript text, its schedule stored as a
  trace).
- `working_mutators`: two of the default CPU mutators (compute location,
  parallel) crash on initialization; only the tile-size and unroll mutators
  are used.
- `no_tensor_intrin`: TuneContext imports `tvm.s_tir.tensor_intrin`, which
  parses every vendor intrinsic (close to a minute on a busy 2-core machine)
  though no CPU rule used here needs it; a placeholder module stands in while
  contexts are created.
"""
from __future__ import annotations

import os
import sys
import tempfile
import types
from contextlib import contextmanager

import tvm
from tvm import tirx

from edgec.errors import EdgecError

GOOD_FFI = "0.1.14.post0"  # the apache-tvm-ffi release that serializes TIR without crashing


def check_meta_schedule() -> None:
    """MetaSchedule copies TIR through JSON; with apache-tvm-ffi 0.1.15 that segfaults in apache-tvm
    0.27.0.post1 (0.1.14.post0 works). Probe it in a child process and fail with one line instead."""
    import subprocess

    code = ("import tvm; from tvm import tirx; "
            "tvm.ir.save_json(tirx.Var('x', 'int32') + 1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        try:
            from importlib.metadata import version

            ffi = version("apache-tvm-ffi")
        except Exception:  # noqa: BLE001
            ffi = "?"
        raise EdgecError(f"MetaSchedule cannot run here: TVM {tvm.__version__} crashes serializing TIR with "
                         f"apache-tvm-ffi {ffi}; install apache-tvm-ffi=={GOOD_FFI} to tune")


@contextmanager
def no_tensor_intrin():
    """A placeholder for `tvm.s_tir.tensor_intrin` while TuneContexts are created (the real import
    parses every vendor intrinsic, which no CPU rule used here needs)."""
    name = "tvm.s_tir.tensor_intrin"
    stub = name not in sys.modules
    if stub:
        sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        if stub and isinstance(sys.modules.get(name), types.ModuleType) and sys.modules[name].__dict__.get(
                "__file__") is None:
            del sys.modules[name]


def working_mutators() -> dict:
    """The default llvm mutators (mutator -> probability) that initialize: tile size and unroll."""
    from tvm.s_tir import meta_schedule as ms

    return {m: p for m, p in ms.mutator.Mutator.create("llvm").items()
            if type(m).__name__ in ("MutateTileSize", "MutateUnroll")}


def in_process_builder(tmp: str):
    """A MetaSchedule builder that builds candidates in this process, exported into TMP."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.tar import tar

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        """Builds candidates in this process (the pickling LocalBuilder crashes in this wheel)."""

        def build(self, build_inputs):
            from tvm.driver import build as tvm_build

            out = []
            for bi in build_inputs:
                try:
                    lib = tvm_build(bi.mod, target=bi.target)
                    path = os.path.join(tempfile.mkdtemp(dir=tmp), "kernel." + tar.output_format)
                    lib.export_library(path, fcompile=tar)
                    out.append(ms.builder.BuilderResult(path, None))
                except Exception as e:  # noqa: BLE001 - a failed candidate, not a failed build
                    out.append(ms.builder.BuilderResult(None, f"{type(e).__name__}: {e}"))
            return out

    return InProcessBuilder()


def plain_args_runner():
    """MetaSchedule's LocalRunner, given the argument descriptions as plain lists."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner import local_runner as L

    inner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(
        number=3, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False))

    @derived_object
    class PlainArgsRunner(ms.runner.PyRunner):
        """LocalRunner.run with the argument descriptions as plain lists (pickling TVM objects crashes)."""

        def run(self, runner_inputs):
            results = []
            for ri in runner_inputs:
                future = inner.pool.submit(
                    L._worker_func, inner.f_alloc_argument, inner.f_run_evaluator, inner.f_cleanup,
                    inner.evaluator_config, inner.alloc_repeat, str(ri.artifact_path), str(ri.device_type),
                    tuple(plain(a.as_json()) for a in ri.args_info))
                try:
                    res, err = future.result(), None
                except Exception as e:  # noqa: BLE001 - timeouts and failed candidates
                    res, err = None, f"run failed: {type(e).__name__}: {e}"
                results.append(L.LocalRunnerFuture(res=res, error_message=err))
            return results

    return PlainArgsRunner()


def plain(x):
    """TVM containers and numbers as plain Python (lists, dicts, str, int, float)."""
    if isinstance(x, (str, bool, int, float)) or x is None:
        return x
    if isinstance(x, tirx.IntImm):
        return int(x)
    if isinstance(x, tirx.FloatImm):
        return float(x)
    if hasattr(x, "items"):
        return {str(k): plain(v) for k, v in x.items()}
    return [plain(v) for v in x]
