"""Optional MetaSchedule tuning of the TIR kernels, within a time budget.

`edgec build --backend tvm --backend-opt tune_minutes=M` tunes the kernels of the fused
Relax module (the point where `schedule.py` would schedule them) with TVM's
MetaSchedule, for at most M minutes, and writes the best schedule of every
tuned kernel into the artifact (`model/tune/records.json`, covered by the
manifest's checksums). The compile then replays those schedules; every other
kernel keeps the default schedule (CpuParallel). `--backend-opt tune_log=PATH` reuses
such a log (an artifact, its `model/` or `model/tune/` folder, or the file):
without `tune_minutes` nothing is measured, with it tuning continues from
the log's schedules, and the new log holds the best of both.

What is tuned: kernels whose argument shapes are all static and that hold a
reduction (the decode path's matrix-vector products and norms); kernels over
the symbolic `seq` or KV length cannot be measured with random inputs of one
shape, and element-wise kernels gain nothing.

Measuring runs every candidate on this machine, so tuning serves only
targets whose library loads here (llvm for the host, or a profile of this
machine's architecture); cross (aarch64) and CUDA builds refuse it.

Parts of MetaSchedule crash or stall in the apache-tvm 0.27.0.post1 wheel;
their stand-ins are in wheel_fixes.py. Since TIR is never serialized here,
records live in a memory database, and the log keys each kernel by the
SHA-256 of its TVMScript text and stores the schedule as a trace. The
RewriteLayout postprocessor is left out: it would change the layout of
weights, which are function arguments here.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import tvm
from tvm import tirx

from edgec.errors import EdgecError

from .wheel_fixes import check_meta_schedule  # noqa: F401  (compile.py calls tune.check_meta_schedule)
from .wheel_fixes import in_process_builder, no_tensor_intrin, plain, plain_args_runner, working_mutators

TUNE_DIR = "tune"
LOG_FILE = "records.json"
LOG_FORMAT = 1
MAX_MINUTES = 24 * 60.0
TRIALS_PER_SECOND = 4  # an upper bound for the trial cap; the wall clock normally ends tuning first

Say = Callable[[str], None]


# ----------------------------------------------------------------------------- options
def check_minutes(minutes) -> float:
    """The budget as a float in [0, MAX_MINUTES] (one-line EdgecError otherwise)."""
    if isinstance(minutes, bool):
        raise EdgecError(f"tune_minutes must be a number of minutes, got {minutes!r}")
    try:
        m = float(minutes)
    except (TypeError, ValueError):
        raise EdgecError(f"tune_minutes must be a number of minutes, got {minutes!r}") from None
    if not math.isfinite(m) or m < 0 or m > MAX_MINUTES:
        raise EdgecError(f"tune_minutes must be between 0 and {MAX_MINUTES:g} (24 hours), got {minutes!r}")
    return m


def check_tunable(plan) -> None:
    """Tuning and reusing a log need the library to run here: llvm, not cross-compiled."""
    if plan.kind != "llvm" or plan.cross:
        what = "CUDA" if plan.kind == "cuda" else f"cross-compiled {plan.triple}"
        raise EdgecError(f"tuning needs to run kernels on the target device; the tune_minutes/tune_log options are "
                         f"supported for devices this machine can run (host, or its own architecture), "
                         f"not for this {what} build")


def find_log(path) -> Path:
    """The records file of an artifact, its model/ or model/tune/ folder, or the file itself."""
    p = Path(path)
    for cand in (p, p / LOG_FILE, p / TUNE_DIR / LOG_FILE, p / "model" / TUNE_DIR / LOG_FILE):
        if cand.is_file():
            return cand
    raise EdgecError(f"no tuning log at {path}: expected an artifact built with --backend-opt tune_minutes=M, "
                     f"its model/{TUNE_DIR}/ folder, or a {LOG_FILE} file")


def load_log(path) -> dict:
    """Read and check a tuning log; returns {"path": ..., "records": {key: record}}."""
    file = find_log(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise EdgecError(f"tuning log {file} is not valid JSON ({e}); rebuild it with --backend-opt tune_minutes=M") from None
    ok = (isinstance(data, dict) and data.get("format") == LOG_FORMAT and isinstance(data.get("records"), list)
          and all(isinstance(r, dict) and isinstance(r.get("key"), str) and isinstance(r.get("trace"), list)
                  and isinstance(r.get("run_secs"), list) and r["run_secs"]
                  and all(isinstance(s, (int, float)) for s in r["run_secs"]) for r in data["records"]))
    if not ok:
        raise EdgecError(f"tuning log {file} is corrupt or not an edgec tuning log (format {LOG_FORMAT}); "
                         "rebuild it with --backend-opt tune_minutes=M")
    return {"path": str(file), "records": {r["key"]: r for r in data["records"]}}


# ----------------------------------------------------------------------------- kernels
def kernel_key(func: tirx.PrimFunc) -> str:
    """A kernel's identity across processes: SHA-256 of its TVMScript text."""
    return hashlib.sha256(func.script().encode()).hexdigest()


def _static(func: tirx.PrimFunc) -> bool:
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    try:
        infos = ArgInfo.from_prim_func(func)
    except Exception:  # a symbolic dimension cannot be converted
        return False
    return all(isinstance(d, (int, tirx.IntImm)) for i in infos for d in i.shape)


def _has_reduction(func: tirx.PrimFunc) -> bool:
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import normalize_prim_func

    try:
        infos = normalize_prim_func(s_tir.Schedule(func))
    except Exception:
        return False
    return bool(infos) and any("R" in info.dom_kind() for info in infos)


def tunable_kernels(mod) -> dict[str, tirx.PrimFunc]:
    """name -> PrimFunc for the kernels worth tuning (static shapes, a reduction)."""
    return {gv.name_hint: f for gv, f in mod.functions.items()
            if isinstance(f, tirx.PrimFunc) and not (f.attrs and f.attrs.get("tirx.is_scheduled"))
            and _static(f) and _has_reduction(f)}


def _replay(func: tirx.PrimFunc, trace_json):
    """The kernel scheduled by a stored trace (a tvm Schedule)."""
    from tvm import s_tir
    from tvm.s_tir.schedule import Trace

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    Trace.apply_json_to_schedule(trace_json, sch)
    return sch


def apply_records(records: dict):
    """A module pass that schedules every kernel found in RECORDS by replaying its trace.

    Applied before the default schedules, which skip kernels marked scheduled.
    """
    applied: list[str] = []

    @tvm.transform.module_pass(opt_level=0, name="edgec_apply_tuned")
    def _apply(mod, _ctx):
        applied.clear()
        updates = {}
        for gv, f in mod.functions.items():
            if not isinstance(f, tirx.PrimFunc) or (f.attrs and f.attrs.get("tirx.is_scheduled")):
                continue
            rec = records.get(kernel_key(f))
            if rec is None:
                continue
            new = _replay(f, rec["trace"]).mod["main"]
            if f.attrs and "global_symbol" in f.attrs:
                new = new.with_attr("global_symbol", f.attrs["global_symbol"])
            updates[gv] = new.with_attr("tirx.is_scheduled", True)
            applied.append(gv.name_hint)
        for gv, f in updates.items():
            mod[gv] = f
        return mod

    _apply.applied = applied
    return _apply


# ----------------------------------------------------------------------------- tuning
@contextmanager
def _quiet_meta_schedule():
    import logging

    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def _space():
    from tvm.s_tir import meta_schedule as ms

    postprocs = [p for p in ms.postproc.Postproc.create("llvm") if type(p).__name__ != "RewriteLayout"]
    return ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs=postprocs,
                                             mutator_probs=working_mutators())


def _budget(minutes: float, n_tasks: int) -> dict:
    per_iter = 8 if minutes < 2 else 32
    total = max(n_tasks * per_iter, int(minutes * 60 * TRIALS_PER_SECOND))
    return {"num_trials_per_iter": per_iter, "max_trials_global": total,
            "max_trials_per_task": max(per_iter, math.ceil(2 * total / n_tasks))}


def tune(mod, target, minutes: float, *, prior: dict | None = None, say: Say | None = None) -> dict:
    """Tune MOD's tunable kernels for at most MINUTES on this machine.

    MOD is the fused module (before scheduling); PRIOR is a loaded log whose
    records seed the search. Returns {"records": {key: record}, "stats": {...}}
    with the best record per kernel of MOD (and PRIOR's others, unchanged).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    say = say or (lambda msg: None)
    prior_records = dict((prior or {}).get("records", {}))
    kernels = tunable_kernels(mod)
    keys = {name: kernel_key(f) for name, f in kernels.items()}
    stats = {"minutes": minutes, "seconds": 0.0, "trials": 0, "kernels": len(kernels), "kernels_tuned": 0}
    if not kernels or minutes <= 0:
        return {"records": prior_records, "stats": stats}
    cores = os.cpu_count() or 1
    tune_target = tvm.target.Target({**target.export(), "num-cores": cores})
    names = sorted(kernels)
    budget = _budget(minutes, len(names))
    seconds = minutes * 60
    t0 = time.perf_counter()
    say(f"tuning {len(names)} kernels for up to {seconds:.0f}s "
        f"(MetaSchedule, {budget['max_trials_global']} trials at most)")
    tmp = tempfile.mkdtemp(prefix="edgec-tune-")
    counts = {name: 0 for name in names}
    last = [t0]

    @derived_object
    class Count(ms.measure_callback.PyMeasureCallback):
        """Counts trials and reports progress on stderr (at most every 5 s)."""

        def __init__(self, name: str):
            self.name = name

        def apply(self, scheduler, task_id, candidates, builder_results, runner_results):
            counts[self.name] += len(runner_results)
            now = time.perf_counter()
            if now - last[0] >= 5:
                last[0] = now
                say(f"tuning: {sum(counts.values())} trials, {sum(c > 0 for c in counts.values())}/"
                    f"{len(names)} kernels, {now - t0:.0f}s of {seconds:.0f}s")

    per_iter = budget["num_trials_per_iter"]
    try:
        with _quiet_meta_schedule(), no_tensor_intrin():
            db = ms.database.MemoryDatabase()
            # the IRModule each TuneContext wraps its PrimFunc in: the database keys workloads by it
            mods = {n: ms.TuneContext(mod=kernels[n], target=tune_target, task_name=n).mod for n in names}
            seeded = 0
            for n in names:  # continue from a reused log
                rec = prior_records.get(keys[n])
                if rec is None:
                    continue
                workload = db.commit_workload(mods[n])
                sch = _replay(kernels[n], rec["trace"])
                db.commit_tuning_record(ms.database.TuningRecord(
                    sch.trace, workload, [float(s) for s in rec["run_secs"]], tune_target,
                    ms.arg_info.ArgInfo.from_prim_func(kernels[n])))
                seeded += 1
            if seeded:
                say(f"tuning continues from {seeded} reused schedules")
            runner, builder = plain_args_runner(), in_process_builder(tmp)
            # The wall-clock guard: one batch of one kernel per call, the clock checked between calls
            # (ending tasks from inside a running tune trips a check in TVM's task scheduler). Each
            # call's evolutionary search starts from the database's best schedules so far.
            rounds = 0
            while time.perf_counter() - t0 < seconds and sum(counts.values()) < budget["max_trials_global"]:
                for i, n in enumerate(names):
                    if time.perf_counter() - t0 >= seconds:
                        break
                    stats["last_batch_started_s"] = round(time.perf_counter() - t0, 2)  # always < the budget
                    strategy = ms.search_strategy.EvolutionarySearch(
                        population_size=max(64, 8 * per_iter), init_min_unmeasured=16, genetic_num_iters=2)
                    ctx = ms.TuneContext(mod=mods[n], target=tune_target, space_generator=_space(),
                                         search_strategy=strategy, task_name=n, num_threads=cores,
                                         rand_state=rounds * len(names) + i + 1).clone()
                    ms.tune.tune_tasks(
                        tasks=[ctx], task_weights=[1.0], work_dir=tmp, builder=builder, runner=runner,
                        database=db, cost_model="random", task_scheduler="round-robin",
                        measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [Count(n)],
                        max_trials_global=per_iter, num_trials_per_iter=per_iter, max_trials_per_task=per_iter)
                rounds += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    records = dict(prior_records)
    for n in names:
        top = db.get_top_k(db.commit_workload(mods[n]), 1)
        if not top or not top[0].run_secs:
            continue
        run = [float(s) for s in top[0].run_secs]
        old = records.get(keys[n])
        if old is not None and min(old["run_secs"]) <= min(run):
            continue
        records[keys[n]] = {"key": keys[n], "kernel": n, "run_secs": run,
                            "trace": plain(top[0].trace.as_json(remove_postproc=False))}
    stats.update(seconds=round(time.perf_counter() - t0, 2), trials=sum(counts.values()),
                 kernels_tuned=sum(c > 0 for c in counts.values()))
    say(f"tuned {stats['kernels_tuned']}/{len(names)} kernels with {stats['trials']} trials "
        f"in {stats['seconds']:.0f}s")
    return {"records": records, "stats": stats}


def write_log(out_dir: Path, records: dict, *, target) -> str:
    """Write RECORDS as OUT_DIR/tune/records.json; returns its path relative to OUT_DIR."""
    d = Path(out_dir) / TUNE_DIR
    d.mkdir(parents=True, exist_ok=True)
    data = {"format": LOG_FORMAT, "tvm_version": tvm.__version__, "target": str(target),
            "records": sorted(records.values(), key=lambda r: (r.get("kernel", ""), r["key"]))}
    (d / LOG_FILE).write_text(json.dumps(data, indent=1) + "\n")
    return f"{TUNE_DIR}/{LOG_FILE}"
