"""The TVM backend through the contract (edgec.backends): options, check, compile, open."""
from __future__ import annotations

from edgec.backends import Backend, Option


class TvmBackend(Backend):
    name = "tvm"
    description = "Apache TVM (llvm for x86-64/aarch64, cuda); needs apache-tvm"
    options = {
        "tune_minutes": Option(float, 0.0, "MetaSchedule tuning on this machine for that long (0: none)",
                               stage="build"),
        "tune_log": Option(str, None, "reuse the tuning log of an earlier artifact (or a log file); with "
                           "tune_minutes, tuning continues from it", stage="build"),
    }

    def check(self, device, recipe, options: dict) -> dict:
        """Triple and cross compiler usable, tuning options valid, log readable: before any slow work."""
        from .compile import check_device, check_tuning

        check_device(device)
        minutes, log = options.get("tune_minutes") or 0.0, options.get("tune_log")
        return {**options, **check_tuning(device, minutes, log)}

    def compile(self, graph, out_dir, device, options, progress=None) -> dict:
        from .compile import compile_graph

        return compile_graph(graph, out_dir, device=device, tune_minutes=options.get("tune_minutes") or 0.0,
                             tune_log=options.get("tune_log"), progress=progress)

    traces_ops = True  # open(trace_dir=...) then executor.op_trace(): the Relax VM's instrument hook

    def open(self, files, *, interface=None, options=None, threads=None, trace_dir=None):
        from .runtime import TvmExecutor

        return TvmExecutor(files, threads=threads, options=self.run_options(options or {}), interface=interface,
                           trace=trace_dir is not None)


BACKEND = TvmBackend()
