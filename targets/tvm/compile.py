"""Compile an IR graph with TVM into `model.so` + `weights.bin` + `tvm.json`.

Weights are not baked into the library: both Relax functions take them as
one tuple argument, so the library stays small and compiles fast; the weight
planner (edgec.weight_plan) lays them out in one mmap-able blob, and tvm.json
lists each one's place in the order the functions take them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import tvm

from edgec.interface import ModelInterface
from edgec.ir import Graph
from edgec.weight_plan import DEFAULT_TIER, StoredTensor, summary, write_blobs

from .lower import lower_graph
from .schedule import build_pipeline, fusion_passes
from .target import plan_for

LIB_FILE = "model.so"
WEIGHTS_FILE = "weights.bin"
META_FILE = "tvm.json"


def check_device(device) -> None:
    """Fail before any slow work when TVM cannot serve the device (unknown triple, no cross gcc)."""
    plan_for(device)


def check_tuning(device, tune_minutes=0.0, tune_log=None) -> dict:
    """Validate the tuning options before any slow work; returns the compile_graph keyword arguments."""
    from . import tune as T

    minutes = T.check_minutes(tune_minutes or 0.0)
    if minutes == 0 and tune_log is None:
        return {}
    T.check_tunable(plan_for(device))
    log = T.load_log(tune_log) if tune_log is not None else None
    if minutes > 0:
        T.check_meta_schedule()
    return {"tune_minutes": minutes, "tune_log": log}


def _fcompile(plan):
    if not plan.cross:
        return None
    from tvm.support import cc

    return cc.cross_compiler(plan.linker)


def compile_graph(graph: Graph, out_dir: Path, *, device=None, tune_minutes: float = 0.0, tune_log=None,
                  progress=None) -> dict[str, Any]:
    """Lower to Relax, tvm.compile for the device's target, export the library; returns manifest metadata.

    tune_minutes > 0 tunes the kernels with MetaSchedule first (tune.py); tune_log (a path, or a
    log from check_tuning) reuses an earlier tuning log. Both need a target that runs here.
    """
    if device is None:
        from edgec.devices import get_device

        device = get_device("host")
    plan = plan_for(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = check_tuning(device, tune_minutes, tune_log) if not isinstance(tune_log, dict) else \
        {"tune_minutes": tune_minutes, "tune_log": tune_log}
    lowered = lower_graph(graph)
    target = plan.tvm_target()
    files = [LIB_FILE, WEIGHTS_FILE, META_FILE]
    tuned = tuning = None
    if opts:
        from . import tune as T

        log = opts["tune_log"]
        with target:
            fused = tvm.transform.Sequential(fusion_passes(plan, target))(lowered.mod)
        result = T.tune(fused, target, opts["tune_minutes"], prior=log, say=progress)
        tuned = T.apply_records(result["records"])
        files.append(T.write_log(out_dir, result["records"], target=target))
        tuning = {**result["stats"], "log": files[-1], "records": len(result["records"]),
                  "reused_log": log["path"] if log else None,
                  "reused_records": len(log["records"]) if log else 0}
    t0 = time.perf_counter()
    ex = tvm.compile(lowered.mod, target=target, relax_pipeline=build_pipeline(plan, target, tuned))
    ex.export_library(str(out_dir / LIB_FILE), fcompile=_fcompile(plan))
    seconds = round(time.perf_counter() - t0, 2)
    if tuning is not None:
        tuning["applied"] = sorted(tuned.applied)
        tuning["database_applied"] = bool(tuned.applied)
        if progress:
            progress(f"applied tuned schedules to {len(tuned.applied)} kernels")

    placed = write_blobs(out_dir, [StoredTensor.of_array(n, graph.weights[n]) for n in lowered.weights],
                         {DEFAULT_TIER: WEIGHTS_FILE})
    functions = [gv.name_hint for gv in lowered.mod.get_global_vars()
                 if isinstance(lowered.mod[gv], tvm.relax.Function)]
    meta = {
        "kind": plan.kind,
        "target": str(target),
        "triple": plan.triple,
        "tvm_version": tvm.__version__,
        "linker": plan.linker,
        "cross_compiled": plan.cross,
        "functions": sorted(functions),
        "inputs": [v.name for v in graph.inputs],
        "outputs": [v.name for v in graph.outputs],
        "signature": ModelInterface.of_graph(graph).to_signature(),
        "weights": [p.to_dict() for p in placed],
        "notes": plan.notes,
        "context_length": graph.facts.context_length,
        "vocab_size": next((int(v.shape[-1]) for v in graph.outputs
                            if v.name == "logits" and isinstance(v.shape[-1], int)), None),
    }
    if tuning is not None:
        meta["tuning"] = tuning
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return {"files": files, "compile_seconds": seconds, "weights": summary(placed),
            **{k: meta[k] for k in ("kind", "target", "triple", "tvm_version", "linker", "cross_compiled",
                                    "functions", "inputs", "outputs", "notes", "tuning") if k in meta}}
