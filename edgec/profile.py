"""`edgec profile`: where the time of prefill and of each decoded token goes, how close it comes to this
machine's roofline, and what the same artifact would do on other devices.

Runs the artifact's own generation path (the in-place KV sequence `edgec run` uses) with synthetic
token ids (fixed, seeded: a step's cost does not depend on which tokens they are):

1. plain, for wall-clock prefill and decode speed (and again at a few prompt lengths, for speed
   against the context), while a sampler records the process's memory (RSS every 5 ms: load,
   prefill, decode); the peak is this run's;
2. with the backend's op trace on (Backend.traces_ops: onnxruntime's profiler; the C runtime's
   per-op timers, from a library compiled with them when the artifact's has none; the Relax VM's
   instrument hook for TVM), split into the prefill run and the decode runs, summed per op type and,
   where the backend names the IR node or layer, per layer. The gap between a run's wall time and the
   sum of its kernels is the runtime's own overhead (scheduling, allocation, thread hand-offs).

The artifact's cost table (costs.json, edgec.ir.cost) turns times into achieved GB/s and GFLOP/s and
places each op type on this machine's measured roofline (edgec.hostperf). Estimates (edgec.estimate)
come for this machine and every device asked for; an artifact built for another machine (an aarch64
C build) gets estimates only, and its instructions per decoded token counted under qemu.
"""
from __future__ import annotations

import gc
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgecError
from .ir.cost import layer_key
from .runtime import CompiledModel, load

DEFAULT_LENGTHS = (16, 64, 256)
TRACE_PHASE = "profiler"  # the traced copy's run: in the memory timeline, outside the peak


@dataclass
class OpTime:
    op: str
    calls: float  # per run (per token for decode)
    ms: float  # per run
    share: float  # of the kernel time


@dataclass
class Profile:
    artifact: str
    threads: int | None
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float | None
    prefill_tok_s: float | None
    decode_ms_per_token: float | None
    decode_tok_s: float | None
    decode_kernel_ms: float = 0.0  # per token, summed over nodes
    decode_overhead_ms: float = 0.0  # per token: run time - kernel time
    backend: str = "onnx"
    device: str = "host"
    measured: bool = True  # False: the artifact cannot run here; estimates only
    huge_page_mb: float = 0.0  # of the session's memory (the prepacked weights) in 2 MiB pages (edgec/memory.py)
    peak_memory_mb: float | None = None  # the process's peak RSS while loading and generating
    baseline_memory_mb: float | None = None  # its RSS before the artifact was loaded
    weights_mb: float | None = None  # weights as stored in the artifact
    memory_timeline: list = field(default_factory=list)  # [seconds, rss MB, phase]
    weight_bytes_per_token: float | None = None  # decode, from the cost table
    flops_per_token: float | None = None
    achieved_gbs: float | None = None  # all bytes a decode step moves / its time
    achieved_gflops: float | None = None
    roofline: dict = field(default_factory=dict)
    prefill_ops: list[OpTime] = field(default_factory=list)
    decode_ops: list[OpTime] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)  # decode per layer: {"layer", "ops": {op: ms}, "ms"}
    roofline_ops: list[dict] = field(default_factory=list)  # {"op", "layer", "intensity", "gflops", "ms", "phase"}
    by_prompt_length: list[dict] = field(default_factory=list)
    estimates: list[dict] = field(default_factory=list)
    instructions_per_token: float | None = None
    instructions_note: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# -- measuring --------------------------------------------------------------------------------
def _ids(model: CompiledModel, n: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(0).integers(0, model.vocab_size, n)]


def _generate(model: CompiledModel, prompt: list[int], new_tokens: int, marks=None) -> tuple[float, float]:
    """(prefill seconds, decode seconds per token) of greedy decoding on the model's sequence."""
    seq = model.sequence(len(prompt) + new_tokens)
    if marks:
        marks("prefill")
    t0 = time.perf_counter()
    tok = int(np.argmax(seq.run(prompt, last_only=True)[-1]))
    t1 = time.perf_counter()
    if marks:
        marks("decode")
    for _ in range(new_tokens - 1):
        tok = int(np.argmax(seq.run([tok])[-1]))
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / max(1, new_tokens - 1)


def _check_lengths(prompt_tokens: int, new_tokens: int) -> None:
    if prompt_tokens < 1 or new_tokens < 2:
        raise EdgecError("profile needs --prompt-tokens >= 1 and --new-tokens >= 2")


def measure_speed(path, prompt_tokens: int, new_tokens: int, threads: int | None = None, *,
                  trusted_keys=(), allow_unsigned: bool = False) -> dict:
    """{"prefill_ms", "decode_ms_per_token"} of the artifact on this machine, after a warm-up."""
    _check_lengths(prompt_tokens, new_tokens)
    model = load(path, threads=threads, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
    prompt = _ids(model, prompt_tokens)
    _generate(model, prompt, 4)
    prefill_s, step_s = _generate(model, prompt, new_tokens)
    return {"prefill_ms": prefill_s * 1000, "decode_ms_per_token": step_s * 1000}


class MemorySampler:
    """The process's RSS every `interval` seconds in a background thread, tagged with the phase."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.phase, self.samples = "load", []
        self._t0, self._stop = time.perf_counter(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self):
        self.samples.append([round(time.perf_counter() - self._t0, 4), self.proc.memory_info().rss / 1e6, self.phase])

    def mark(self, phase: str):
        self.sample()
        self.phase = phase

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


# -- the op trace -----------------------------------------------------------------------------
def _split_key(key: str, by_name: dict) -> tuple[str, str]:
    """A trace key "op@where" as (op, layer): where is a layer label (C), a node name whose first part is
    an IR node (ONNX), or absent (TVM: no layer)."""
    op, _, where = key.partition("@")
    if not where:
        return op, ""
    if where in by_name:
        return op, by_name[where][1]
    scope = where.split("/", 1)[0]
    if scope in by_name:
        return op, by_name[scope][1]
    return op, where if where.isdigit() or where in ("embed", "head", "other", "model") else "other"


def _ir_op(key: str, by_name: dict) -> str | None:
    """The IR op a traced kernel was lowered from, where the backend says (ONNX node names, C op kinds)."""
    op, _, where = key.partition("@")
    scope = where.split("/", 1)[0]
    if scope in by_name:
        return by_name[scope][0]
    return op if where else None


def _table(acc: list[dict[str, list[float]]], by_name: dict) -> list[OpTime]:
    total: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for run in acc:
        for key, (c, us) in run.items():
            op, _ = _split_key(key, by_name)
            total[op][0] += c
            total[op][1] += us
    n = max(1, len(acc))
    kernel = sum(us for _, us in total.values()) or 1.0
    rows = [OpTime(op, c / n, us / n / 1000, us / kernel) for op, (c, us) in total.items()]
    return sorted(rows, key=lambda r: -r.ms)


def _layers(acc: list[dict[str, list[float]]], by_name: dict) -> list[dict]:
    per: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for run in acc:
        for key, (_, us) in run.items():
            op, layer = _split_key(key, by_name)
            if layer:
                per[layer][op] += us / len(acc) / 1000
    return [{"layer": layer, "ops": dict(ops), "ms": sum(ops.values())}
            for layer, ops in sorted(per.items(), key=lambda kv: layer_key(kv[0]))]


def _roofline_points(acc: list[dict[str, list[float]]], table: dict, seq: int, ctx: int, phase: str) -> list[dict]:
    """Each IR op type of a phase on the roofline: its FLOPs over its bytes (cost table) and over its
    measured time. Backends that do not name the IR node (TVM) give one point for the whole run."""
    from .ir.cost import evaluate

    by_name = table.get("by_name", {})
    ms: dict[str, float] = defaultdict(float)
    for run in acc:
        for key, (_, us) in run.items():
            ms[_ir_op(key, by_name) or "all ops"] += us / len(acc) / 1000
    cost: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for n in table["nodes"]:
        op = n["op"] if n["op"] in ms else "all ops"
        cost[op][0] += evaluate(n["flops"], seq, ctx)
        cost[op][1] += evaluate(n["weight_bytes"], seq, ctx) + evaluate(n["bytes"], seq, ctx)
    points = []
    for op, (flops, nbytes) in cost.items():
        t = ms.get(op, 0.0) if op != "all ops" else sum(v for k, v in ms.items() if k not in cost or k == "all ops")
        if t > 0 and nbytes > 0 and flops > 0:
            points.append({"op": op, "layer": "", "intensity": flops / nbytes, "gflops": flops / t / 1e6,
                           "ms": t, "phase": phase})
    return points


# -- the profile ------------------------------------------------------------------------------
def profile(path: str | Path, *, prompt_tokens: int = 64, new_tokens: int = 32, threads: int | None = None,
            trusted_keys=(), allow_unsigned: bool = False, lengths=None, devices=(), progress=None,
            instructions: bool | None = None) -> Profile:
    """Measure the artifact on this machine (speed, op and layer split, memory, roofline) and estimate it
    for `devices` (and this machine). lengths: prompt lengths for speed vs context (default 16, 64, 256
    within the context; () for none). instructions: count instructions per token of an aarch64 C build
    under qemu (default: when the artifact cannot run here)."""
    from .artifact import open_artifact
    from .estimate import estimate, load_costs
    from .devices import get_device

    _check_lengths(prompt_tokens, new_tokens)
    for d in devices:
        get_device(d)  # an unknown device fails before any slow work
    say = progress or (lambda msg: None)
    art = open_artifact(Path(path))
    table = load_costs(art.files(""), path)
    manifest = art.manifest
    backend = manifest["backend"]["name"]
    weights = sum(t.get("bytes", 0) for t in (manifest.get("weights") or {}).get("tiers", {}).values())
    try:
        with MemorySampler() as mem:
            p = _measure(path, table, prompt_tokens, new_tokens, threads, trusted_keys, allow_unsigned, mem, lengths)
        p.memory_timeline = mem.samples
        # the plain run's peak: the profiler's traced copy is loaded after it is gone, and not counted
        p.peak_memory_mb = max(s[1] for s in mem.samples if s[2] != TRACE_PHASE)
        p.baseline_memory_mb = mem.samples[0][1]
    except EdgecError as e:
        if "cannot run on this" not in str(e):
            raise
        p = Profile(str(path), threads, prompt_tokens, new_tokens, None, None, None, None, backend=backend,
                    measured=False, notes=[f"not measured here: {e}"])
        if instructions is None:
            instructions = True
    p.weights_mb = weights / 1e6 if weights else None
    if p.measured:  # this machine first: the estimate to hold against the measurement
        targets = ["host", *[d for d in devices if d != "host"]]
    else:
        targets = list(devices) or [manifest.get("device", {}).get("name", "host")]
    for dev in targets:
        try:
            e = estimate(path, dev, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                         threads=threads, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, progress=say)
        except EdgecError as err:
            p.notes.append(f"no estimate for {dev}: {err}")
            continue
        p.estimates.append(e.to_dict())
    _estimated_lengths(p, table)
    if instructions and backend == "c":
        _count_instructions(p, Path(path), manifest, say)
    return p


def _measure(path, table: dict, prompt_tokens: int, new_tokens: int, threads, trusted_keys, allow_unsigned,
             mem: MemorySampler, lengths) -> Profile:
    from .estimate import decode_context
    from .hostperf import host_figures
    from .ir.cost import totals

    model = load(path, threads=threads, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
    if not model.backend.traces_ops:
        raise EdgecError(f"per-op profiling is not available for the {model.backend.name} backend "
                         "(build the artifact with --backend onnx, tvm or c)")
    if prompt_tokens + new_tokens > model.context_length:
        raise EdgecError(f"--prompt-tokens + --new-tokens must fit the context ({model.context_length})")
    prompt = _ids(model, prompt_tokens)
    huge = getattr(model.executor, "huge_pages", None)
    mem.mark("warm-up")
    _generate(model, prompt, 4)  # warm-up: first-run allocations and thread start
    prefill_s, step_s = _generate(model, prompt, new_tokens, marks=mem.mark)
    lengths = [n for n in (DEFAULT_LENGTHS if lengths is None else lengths) if n + 8 <= model.context_length]
    by_length = []
    mem.mark("lengths")
    for n in lengths:
        pre_s, dec_s = _generate(model, _ids(model, n), 8)
        by_length.append({"prompt_tokens": n, "prefill_tok_s": n / pre_s, "decode_tok_s": 1 / dec_s})
    backend, huge_mb = model.backend, huge.collapsed_bytes / 1e6 if huge else 0.0
    del model, huge
    gc.collect()
    mem.mark(TRACE_PHASE)
    by_name = table.get("by_name", {})
    with tempfile.TemporaryDirectory() as tmp:
        traced = CompiledModel(path, threads=threads, verify=False, trust=trusted_keys,  # profiled
                               allow_unsigned=allow_unsigned, executor_kwargs={"trace_dir": tmp})
        _generate(traced, prompt, new_tokens)
        runs = traced.executor.op_trace()
        del traced
    mem.mark("idle")
    if len(runs) < new_tokens:
        raise EdgecError(f"the backend's trace has {len(runs)} runs, expected {new_tokens}")
    runs = runs[-new_tokens:]  # session start-up runs (if any) come first
    acc = [ops for _, ops in runs]
    decode_acc = acc[1:]
    kernel_ms = sum(us for run in decode_acc for _, us in run.values()) / len(decode_acc) / 1000
    run_ms = sum(wall for wall, _ in runs[1:]) / len(decode_acc) / 1000
    ctx = decode_context(prompt_tokens, new_tokens)
    dec = totals(table, 1, ctx)
    step_ms = step_s * 1000
    roof = host_figures(threads)
    achieved_gbs = (dec["weight_bytes"] + dec["bytes"]) / step_ms / 1e6
    achieved_gflops = dec["flops"] / step_ms / 1e6
    p = Profile(str(path), threads, prompt_tokens, new_tokens, backend=backend.name,
                prefill_ms=prefill_s * 1000, prefill_tok_s=prompt_tokens / prefill_s,
                decode_ms_per_token=step_ms, decode_tok_s=1 / step_s,
                decode_kernel_ms=kernel_ms, decode_overhead_ms=max(0.0, run_ms - kernel_ms),
                huge_page_mb=huge_mb, by_prompt_length=by_length,
                prefill_ops=_table(acc[:1], by_name), decode_ops=_table(decode_acc, by_name),
                layers=_layers(decode_acc, by_name),
                weight_bytes_per_token=dec["weight_bytes"], flops_per_token=dec["flops"],
                achieved_gbs=achieved_gbs, achieved_gflops=achieved_gflops,
                roofline={"bandwidth_gbs": roof.bandwidth_gbs, "peak_gflops": roof.peak_int8_gops,
                          "peak_fp32_gflops": roof.peak_fp32_gflops,
                          "bandwidth_share": achieved_gbs / roof.bandwidth_gbs,
                          "compute_share": achieved_gflops / roof.peak_int8_gops,
                          "source": f"measured on this machine {roof.measured_at[:10]} ({roof.threads} threads): "
                                    + "; ".join(f"{k}: {v}" for k, v in roof.methods.items())})
    p.roofline_ops = (_roofline_points(decode_acc, table, 1, ctx, "decode")
                      + _roofline_points(acc[:1], table, prompt_tokens, prompt_tokens, "prefill"))
    if not p.layers:
        p.notes.append(f"the {p.backend} backend's trace does not name layers: no per-layer split")
    return p


def _estimated_lengths(p: Profile, table: dict) -> None:
    """The host estimate at each measured prompt length (or the first device's, when nothing was measured)."""
    from .estimate import Roof, estimate_table

    if not p.estimates:
        return
    e = p.estimates[0]
    roof = Roof(e["bandwidth_gbs"], e["peak_gflops"], e["fp32_gflops"], {})
    rows = p.by_prompt_length or [{"prompt_tokens": n} for n in DEFAULT_LENGTHS]
    for row in rows:
        r = estimate_table(table, roof, e["efficiency"], row["prompt_tokens"], 8)
        row["estimated_prefill_tok_s"] = row["prompt_tokens"] / r["prefill_ms"] * 1000
        row["estimated_decode_tok_s"] = 1000 / r["decode_ms_per_token"]
        row.setdefault("prefill_tok_s", None)
        row.setdefault("decode_tok_s", None)
    p.by_prompt_length = rows


def _count_instructions(p: Profile, path: Path, manifest: dict, say) -> None:
    from . import insns

    triple = (manifest.get("backend", {}).get("toolchain") or {}).get("triple", "") or \
        manifest.get("device", {}).get("cpu_triple", "")
    aarch64 = triple.startswith("aarch64")
    if not aarch64:
        p.instructions_note = "instruction counts are taken for aarch64 builds (under qemu) only"
        return
    why = insns.available(True)
    if why:
        p.instructions_note = f"instructions not counted: {why}"
        return
    say("counting aarch64 instructions per decoded token under qemu (one thread)")
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 60, 16)]
    try:
        p.instructions_per_token = insns.per_token(path, ids)
        p.instructions_note = ("guest instructions per decoded token of the artifact's edgec-run under "
                               "qemu-aarch64, one thread (exact and repeatable; not a time)")
    except EdgecError as e:
        p.instructions_note = f"instructions not counted: {e}"


# -- text output ------------------------------------------------------------------------------
_RUNTIME = {"onnx": "onnxruntime", "c": "C runtime", "tvm": "Relax VM"}


def _fmt(v, spec: str, none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def format_profile(p: Profile, top: int = 12) -> str:
    lines = []
    if p.measured:
        lines += [f"prefill   {p.prompt_tokens} tokens in {p.prefill_ms:.1f} ms ({p.prefill_tok_s:.0f} tok/s)",
                  f"decode    {p.decode_ms_per_token:.2f} ms/token ({p.decode_tok_s:.1f} tok/s) over {p.new_tokens - 1} "
                  f"steps; profiled: kernels {p.decode_kernel_ms:.2f} ms + {_RUNTIME.get(p.backend, p.backend)} "
                  f"overhead {p.decode_overhead_ms:.2f} ms per token",
                  f"memory    peak RSS {_fmt(p.peak_memory_mb, '.0f')} MB ({_fmt(p.baseline_memory_mb, '.0f')} MB "
                  f"before loading); weights {_fmt(p.weights_mb, '.1f')} MB; "
                  f"{p.huge_page_mb:.0f} MB of the session's memory (the prepacked weights) in 2 MiB pages"
                  + ("" if p.huge_page_mb else f" (none: [{p.backend}] huge_pages off, a model under a few MB, "
                                               "or no MADV_COLLAPSE)")]
        if p.roofline:
            r = p.roofline
            lines.append(f"roofline  decode moves {(p.weight_bytes_per_token or 0) / 1e6:.1f} MB of weights and "
                         f"{(p.flops_per_token or 0) / 1e9:.3f} GFLOP per token: {p.achieved_gbs:.1f} GB/s "
                         f"({100 * r['bandwidth_share']:.0f}% of {r['bandwidth_gbs']:.1f} GB/s measured), "
                         f"{p.achieved_gflops:.1f} GFLOP/s ({100 * r['compute_share']:.1f}% of "
                         f"{r['peak_gflops']:.0f} int8 GOP/s)")
        lines.append("")
        for title, rows, unit in (("decode, per token", p.decode_ops, "token"), ("prefill", p.prefill_ops, "run")):
            lines.append(f"{title}:")
            lines.append(f"  {'op':34s} {'calls/' + unit:>12s} {'ms/' + unit:>10s} {'share':>7s}")
            for r in rows[:top]:
                lines.append(f"  {r.op:34s} {r.calls:12.0f} {r.ms:10.3f} {100 * r.share:6.1f}%")
            if len(rows) > top:
                rest = rows[top:]
                lines.append(f"  {'(' + str(len(rest)) + ' more op types)':34s} {sum(r.calls for r in rest):12.0f} "
                             f"{sum(r.ms for r in rest):10.3f} {100 * sum(r.share for r in rest):6.1f}%")
            lines.append("")
        if p.layers:
            slowest = sorted(p.layers, key=lambda r: -r["ms"])[:3]
            lines.append("layers (decode): " + ", ".join(f"{r['layer']} {r['ms']:.3f} ms" for r in slowest)
                         + f" slowest of {len(p.layers)}")
        if p.by_prompt_length:
            lines.append("prompt length: " + "; ".join(
                f"{r['prompt_tokens']}: prefill {_fmt(r.get('prefill_tok_s'), '.0f')} tok/s, decode "
                f"{_fmt(r.get('decode_tok_s'), '.1f')} tok/s" for r in p.by_prompt_length))
        lines.append("")
    if p.estimates:
        lines.append("estimates (roofline x the backend's efficiency calibrated on this machine; not measurements):")
        lines.append(f"  {'device':18s} {'decode tok/s':>12s} {'prefill tok/s':>13s} {'memory MB':>10s} "
                     f"{'GB/s':>7s}  bound")
        for e in p.estimates:
            bound = max(e["bound"], key=e["bound"].get) if e["bound"] else "?"
            lines.append(f"  {e['device']:18s} {e['decode_tok_s']:12.1f} {e['prefill_tok_s']:13.0f} "
                         f"{e['memory_mb']:10.1f} {e['bandwidth_gbs']:7.1f}  {bound}")
        lines.append("  sources: " + "; ".join(f"{k}: {v}" for k, v in p.estimates[0]["sources"].items()))
    if p.instructions_per_token is not None:
        lines.append(f"instructions {p.instructions_per_token:,.0f} per decoded token ({p.instructions_note})")
    elif p.instructions_note:
        lines.append(p.instructions_note)
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines).rstrip()

