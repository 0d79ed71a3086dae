"""The Relax pipeline per target: legalize, fuse, schedule, lower.

- CUDA: dlight's GPU rules (what TVM's default CUDA pipeline applies), with
  the matmul rule skipped where it would need a stack buffer of symbolic size
  (a batched matmul over the dynamic KV length; codegen rejects it), so the
  next rule schedules it.
- CPU (llvm): TVM schedules nothing by default, which leaves every kernel a
  single-threaded scalar loop nest. `CpuParallel` parallelizes the spatial
  loops of every block; the target enables floating-point reassociation so
  LLVM vectorizes the inner reduction (the dot products of linear layers).
"""
from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func


class CpuParallel(dl.ScheduleRule):
    """Fuse each block's leading spatial loops and run them on the thread pool."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        done = False
        for info in infos:
            kinds = info.dom_kind()
            lead = len(kinds) - len(kinds.lstrip("S"))
            loops = sch.get_loops(info.block_rv)
            if lead == 0 or len(loops) < lead:
                continue
            fused = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
            sch.parallel(fused)
            done = True
        return sch if done else None


class _SafeMatmul(dl.gpu.Matmul):
    """dlight's GPU matmul rule, declined where it would allocate a symbolic-size local buffer."""

    def apply(self, func, target, tunable):
        sch = super().apply(func, target, tunable)
        if sch is None or isinstance(sch, list):
            return sch
        root = sch.get(sch.get_sblock("root"))
        bad = [b for b in root.alloc_buffers
               if b.scope() == "local" and not all(isinstance(d, tirx.IntImm) for d in b.shape)]
        return None if bad else sch


def _passes(plan, target):
    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    if plan.kind == "cuda":
        sched = dl.ApplyDefaultSchedule(_SafeMatmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                        dl.gpu.GeneralReduction(), dl.gpu.Fallback())
        from tvm.relax.backend.cuda import pipeline as P
    else:
        sched = dl.ApplyDefaultSchedule(CpuParallel())
        from tvm.relax.backend.cpu_generic import pipeline as P
    return (P.library_dispatch_passes(target) + legalize + [sched]
            + P.dataflow_lower_passes(target) + P.finalize_passes(target))


def build_pipeline(plan, target):
    """The Relax pass pipeline for tvm.compile(relax_pipeline=...)."""

    @tvm.transform.module_pass(opt_level=0, name="edgec_tvm_pipeline")
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(_passes(plan, target))(mod)

    return _pipeline
