"""The Relax pipeline per target: legalize, fuse, schedule, lower.

- CUDA: dlight's GPU rules (what TVM's default CUDA pipeline applies), with
  the matmul rule skipped where it would need a stack buffer of symbolic size
  (a batched matmul over the dynamic KV length; codegen rejects it), so the
  next rule schedules it.
- CPU (llvm): TVM schedules nothing by default, which leaves every kernel a
  single-threaded scalar loop nest. `CpuParallel` parallelizes the spatial
  loops of every block; the target enables floating-point reassociation so
  LLVM vectorizes the inner reduction (the dot products of linear layers).
- Tuned kernels (tune.py, the `tune_minutes`/`tune_log` backend options) are scheduled from
  their MetaSchedule records first; the rules above skip them.
"""
from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func


class CpuParallel(dl.ScheduleRule):
    """Parallel spatial loops for every block; dot products vectorized along K.

    A reduction over a static K (a linear layer: [.., N] = x[.., K] . W(N, K))
    is split K = ko * 16 + ki and rfactored on ki: 16 partial sums per output
    element accumulate in SIMD lanes over contiguous x and weight rows, then
    one short sum. Output rows are tiled by 16 and the tiles spread over
    threads, so a tile's weight rows stay in cache across all tokens of a
    prompt.
    """

    LANES, ROWS = 16, 16

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        for info in infos:
            kinds = info.dom_kind()
            loops = sch.get_loops(info.block_rv)
            lead = len(kinds) - len(kinds.lstrip("S"))
            if lead == 0 or len(loops) != len(kinds):
                continue
            if kinds == "S" * lead + "R" and self._dot(sch, info.block_rv, loops, lead):
                continue
            sch.parallel(sch.fuse(*loops[:lead]) if lead > 1 else loops[0])
        return sch

    def _dot(self, sch, block, loops, lead) -> bool:
        k = sch.get(loops[-1]).extent
        n = sch.get(loops[lead - 1]).extent
        if not (isinstance(k, tirx.IntImm) and int(k) % self.LANES == 0 and int(k) >= 4 * self.LANES
                and isinstance(n, tirx.IntImm) and int(n) % self.ROWS == 0):
            return False
        ko, ki = sch.split(loops[-1], [None, self.LANES])
        w0 = sch.get(block).writes[0]
        out_rank = len(w0.region)
        rf = sch.rfactor(ki, factor_axis=out_rank)  # lanes last: contiguous partial sums
        # rf block loops: spatial..., ko, ki (ki is spatial there): tile N, move ki innermost
        rloops = sch.get_loops(rf)
        *outer, n_loop, ko_loop, ki_loop = rloops
        no, ni = sch.split(n_loop, [None, self.ROWS])
        sch.reorder(no, *outer, ni, ko_loop, ki_loop)
        sch.vectorize(ki_loop)
        sch.parallel(no)
        # the final sum over the 16 lanes: parallel over its own output rows
        floops = sch.get_loops(block)
        sch.parallel(sch.fuse(*floops[:lead]) if lead > 1 else floops[0])
        return True


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


def fusion_passes(plan, target):
    """Library dispatch, legalization and operator fusion: the module whose kernels get scheduled (or tuned)."""
    P = _backend(plan)
    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    return P.library_dispatch_passes(target) + legalize


def _backend(plan):
    if plan.kind == "cuda":
        from tvm.relax.backend.cuda import pipeline as P
    else:
        from tvm.relax.backend.cpu_generic import pipeline as P
    return P


def _passes(plan, target, tuned=None):
    if plan.kind == "cuda":
        sched = dl.ApplyDefaultSchedule(_SafeMatmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                        dl.gpu.GeneralReduction(), dl.gpu.Fallback())
    else:
        sched = dl.ApplyDefaultSchedule(CpuParallel())
    P = _backend(plan)
    first = [tuned] if tuned is not None else []  # tuned kernels are marked scheduled: dlight skips them
    return (fusion_passes(plan, target) + first + [sched]
            + P.dataflow_lower_passes(target) + P.finalize_passes(target))


def build_pipeline(plan, target, tuned=None):
    """The Relax pass pipeline for tvm.compile(relax_pipeline=...); TUNED: a pass applying tuning records."""

    @tvm.transform.module_pass(opt_level=0, name="edgec_tvm_pipeline")
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(_passes(plan, target, tuned))(mod)

    return _pipeline
