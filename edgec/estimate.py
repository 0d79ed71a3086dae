"""How fast and how large an artifact will be on a device that is not here: a roofline estimate.

Per node of the artifact's cost table (costs.json, edgec.ir.cost), one run takes
max(bytes / bandwidth, FLOPs / peak) on the device: weight and activation bytes against its memory
bandwidth, FLOPs against its int8 peak for linears whose weights are quantized (the backends
multiply those with int8 activations) and its fp32 peak otherwise. Summed over the nodes this is
the roofline time, which no runtime reaches: kernels fall short of the roof and every node costs
some dispatch. Both are measured once per backend on this machine, on two calibration models of
shapes no shipped model has (random Llamas: d=768 x 24 layers, and d=384 x 40 layers): the decode (and
prefill) time of each is fitted as roofline / efficiency + nodes x per-node cost, two equations in two
unknowns. The estimate for any device is its roofline time over that efficiency plus the per-node cost
times its node count, scaled by how much slower one of its cores is (the ratio of one core's fp32 peak).

Calibrated honestly: the estimate for `host` (this machine's measured roofline, edgec.hostperf)
is checked against the speed measured here on SmolLM2, which the calibration never saw
(tests/test_estimate.py, slow). For other devices the datasheet figures are theoretical peaks and
the efficiency is assumed to carry over; every estimate says where its figures come from.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .cache import cache_dir
from .devices import Device, get_device
from .errors import ArtifactError, EdgecError
from .ir.cost import COSTS_FILE, evaluate

CALIBRATION_FORMAT = 2
# The calibration model: a shape no shipped model has, near the size of the ones edgec targets
# Two models per set, one wide and one narrow and deep, so the efficiency (a share of the roofline) and
# the fixed cost per node (dispatch, thread hand-offs) are told apart: two equations, two unknowns.
CALIBRATION_SHAPES = {
    "default": ({"hidden": 768, "layers": 24, "ffn": 2048, "heads": 12, "kv_heads": 4},
                {"hidden": 384, "layers": 40, "ffn": 1024, "heads": 6, "kv_heads": 2}),
    "tiny": ({"hidden": 64, "layers": 2, "ffn": 128, "heads": 4, "kv_heads": 2},  # tests: seconds, not minutes
             {"hidden": 32, "layers": 4, "ffn": 64, "heads": 2, "kv_heads": 1}),
}
CALIBRATION_RECIPE = "int4"
_CALIB_PROMPT, _CALIB_NEW = 64, 32


@dataclass
class Roof:
    """A device's roofline: bandwidth in GB/s, peaks in GFLOP/s (GOP/s for int8), and their sources;
    core_gflops (one core's fp32 peak) scales the per-node costs measured here to the device."""

    bandwidth_gbs: float
    int8_gops: float
    fp32_gflops: float
    sources: dict[str, str]
    core_gflops: float = 0.0


@dataclass
class Estimate:
    artifact: str
    device: str
    description: str
    backend: str
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    prefill_tok_s: float
    decode_ms_per_token: float
    decode_tok_s: float
    memory_mb: float            # weights as stored + the KV cache of prompt + new tokens
    weights_mb: float
    kv_mb: float
    bandwidth_gbs: float
    peak_gflops: float          # the int8 roof (quantized linears)
    fp32_gflops: float          # the roof of everything else
    efficiency: dict[str, float]  # the backend's calibrated share of the roofline, decode and prefill
    bound: dict[str, float]     # decode roofline time by what bounds it: memory, compute
    sources: dict[str, str]
    ops: list[dict] = field(default_factory=list)     # decode, per op type: ms, bytes, flops
    layers: list[dict] = field(default_factory=list)  # decode, per layer: ms
    label: str = "estimate"

    def to_dict(self) -> dict:
        return asdict(self)


def load_costs(files, where) -> dict:
    """The cost table of an opened artifact's files (edgec.artifact.open_artifact(...).files(""))."""
    try:
        table = json.loads(files.read_bytes(COSTS_FILE))
        table["nodes"]  # noqa: B018 (presence check)
        return table
    except (ArtifactError, OSError, KeyError, ValueError, TypeError):
        raise EdgecError(f"{where} has no cost table ({COSTS_FILE}): it was built by an older edgec; "
                         "rebuild it") from None


def device_roof(device: Device, threads: int | None = None, progress=None) -> Roof:
    """The host's measured roofline (edgec.hostperf), or a device profile's datasheet figures."""
    if device.name == "host":
        from .hostperf import host_figures

        h = host_figures(threads, progress=progress)
        src = f"measured on this machine {h.measured_at[:10]}: "
        return Roof(h.bandwidth_gbs, h.peak_int8_gops, h.peak_fp32_gflops,
                    {k: src + v for k, v in h.methods.items() if k != "dispatch_us"},
                    core_gflops=h.peak_fp32_gflops / max(1, h.threads))
    fp32 = device.peak_fp16_tflops * 1000 / (2 if device.kind == "cpu" else 1)
    where = f"edgec/devices/{device.name}.toml"

    def source(name):
        return f"{where}: {'derived or assumed (see its comments)' if name in device.estimated else 'published'}"

    return Roof(device.memory_bandwidth_gbs, device.peak_int8_tops * 1000, fp32,
                {"bandwidth_gbs": source("memory_bandwidth_gbs"), "peak_int8_gops": source("peak_int8_tops"),
                 "peak_fp32_gflops": source("peak_fp16_tflops") + (" (fp32 = half the fp16 peak on a CPU)"
                                                                   if device.kind == "cpu" else "")},
                core_gflops=fp32 / max(1, device.cores) if device.kind == "cpu" else 0.0)


def _quantized(node: dict) -> bool:
    """A linear whose weights are under 2 bytes per multiply-add: int8 activations run it."""
    w, f = node["weight_bytes"][0], node["flops"][1] + node["flops"][0]
    return node["op"].startswith("linear") and f > 0 and w / (f / 2) < 1.9


def roofline_ms(table: dict, roof: Roof, seq: int, ctx: int) -> tuple[float, list[dict]]:
    """Roofline milliseconds of one run of `seq` tokens over `ctx`, and per node (op, layer, ms,
    bytes, flops, bound)."""
    rows, total = [], 0.0
    for n in table["nodes"]:
        nbytes = evaluate(n["weight_bytes"], seq, ctx) + evaluate(n["bytes"], seq, ctx)
        flops = evaluate(n["flops"], seq, ctx)
        peak = roof.int8_gops if _quantized(n) else roof.fp32_gflops
        t_mem, t_cmp = nbytes / (roof.bandwidth_gbs * 1e6), flops / (peak * 1e6) if peak else 0.0
        ms = max(t_mem, t_cmp)
        total += ms
        rows.append({"name": n["name"], "op": n["op"], "layer": n["layer"], "ms": ms, "bytes": nbytes,
                     "flops": flops, "bound": "memory" if t_mem >= t_cmp else "compute"})
    return total, rows


def decode_context(prompt_tokens: int, new_tokens: int) -> int:
    """The mean context of the decode steps after a prompt (what a decode tok/s figure averages over)."""
    return prompt_tokens + max(1, new_tokens) // 2


def node_scale(roof: Roof, host_core_gflops: float) -> float:
    """How much longer a node's fixed cost takes on the roof's device than here: the ratio of one core's
    fp32 peak (1 where either is unknown: GPUs)."""
    return host_core_gflops / roof.core_gflops if roof.core_gflops > 0 and host_core_gflops > 0 else 1.0


def estimate_table(table: dict, roof: Roof, efficiency: dict, prompt_tokens: int, new_tokens: int,
                   scale: float = 1.0) -> dict:
    """The estimate's numbers from a cost table, a roof and a backend's calibration (no files read): each
    node takes its roofline time over the backend's efficiency, plus the backend's fixed cost per node
    (times `scale`, see node_scale)."""
    dec_ms, dec_rows = roofline_ms(table, roof, 1, decode_context(prompt_tokens, new_tokens))
    pre_ms, pre_rows = roofline_ms(table, roof, prompt_tokens, prompt_tokens)
    fixed = {phase: (efficiency.get("node_us") or {}).get(phase, 0.0) * scale / 1000 for phase in ("decode", "prefill")}
    dec_real = dec_ms / efficiency["decode"] + fixed["decode"] * len(dec_rows)
    pre_real = pre_ms / efficiency["prefill"] + fixed["prefill"] * len(pre_rows)
    by_op: dict[str, dict] = {}
    by_layer: dict[str, float] = {}
    bound = {"memory": 0.0, "compute": 0.0, "overhead": fixed["decode"] * len(dec_rows) / dec_real if dec_real else 0.0}
    for r in dec_rows:
        ms = r["ms"] / efficiency["decode"] + fixed["decode"]
        o = by_op.setdefault(r["op"], {"op": r["op"], "calls": 0, "ms": 0.0, "bytes": 0.0, "flops": 0.0})
        o["calls"] += 1
        o["ms"] += ms
        o["bytes"] += r["bytes"]
        o["flops"] += r["flops"]
        by_layer[r["layer"]] = by_layer.get(r["layer"], 0.0) + ms
        bound[r["bound"]] += r["ms"] / efficiency["decode"] / dec_real if dec_real else 0.0
    return {"decode_ms_per_token": dec_real, "prefill_ms": pre_real, "bound": bound,
            "ops": sorted(by_op.values(), key=lambda o: -o["ms"]),
            "layers": [{"layer": k, "ms": v} for k, v in by_layer.items()]}


def kv_bytes(table: dict, tokens: int) -> float:
    """The KV cache of `tokens` positions: what attention reads per context position, once."""
    return sum(n["bytes"][2] for n in table["nodes"] if n["op"] in ("attention", "gqa", "gqa_packed")) * tokens


def estimate(path, device: str, *, prompt_tokens: int = 64, new_tokens: int = 32, threads: int | None = None,
             trusted_keys=(), allow_unsigned: bool = False, progress=None) -> Estimate:
    """The roofline estimate of the artifact at `path` on `device` (a device profile's name)."""
    from .artifact import open_artifact

    dev = get_device(device)
    if prompt_tokens < 1 or new_tokens < 1:
        raise EdgecError("an estimate needs --prompt-tokens >= 1 and --new-tokens >= 1")
    art = open_artifact(Path(path))
    manifest = art.manifest
    table = load_costs(art.files(""), path)
    backend = manifest["backend"]["name"]
    threads = threads if dev.name == "host" else dev.cores
    roof = device_roof(dev, threads, progress)
    eff = backend_efficiency(backend, threads if dev.name == "host" else None, progress=progress)
    scale = node_scale(roof, eff.get("core_gflops", 0.0))
    r = estimate_table(table, roof, eff, prompt_tokens, new_tokens, scale)
    weights = sum(t.get("bytes", 0) for t in (manifest.get("weights") or {}).get("tiers", {}).values()) \
        or manifest["graph"].get("weight_bytes", 0)
    kv = kv_bytes(table, prompt_tokens + new_tokens)
    efficiency_source = eff["source"] + (f"; per-node costs x{scale:.2f} (one core's fp32 peak here over "
                                         "the device's)" if scale != 1.0 else "") + (" (on this machine's CPU: a GPU runtime's differs; read this estimate "
                                         "as a rough bound)" if dev.kind == "gpu" else "")
    sources = {**roof.sources, "efficiency": efficiency_source,
               "memory_mb": "weights as stored in the artifact + the KV cache of prompt + new tokens "
                            "(the runtime's own buffers not counted)"}
    return Estimate(str(path), dev.name, dev.description, backend, prompt_tokens, new_tokens,
                    prefill_ms=r["prefill_ms"], prefill_tok_s=prompt_tokens / r["prefill_ms"] * 1000,
                    decode_ms_per_token=r["decode_ms_per_token"], decode_tok_s=1000 / r["decode_ms_per_token"],
                    memory_mb=(weights + kv) / 1e6, weights_mb=weights / 1e6, kv_mb=kv / 1e6,
                    bandwidth_gbs=roof.bandwidth_gbs, peak_gflops=roof.int8_gops, fp32_gflops=roof.fp32_gflops,
                    efficiency={"decode": eff["decode"], "prefill": eff["prefill"],
                                "node_us": {k: v * scale for k, v in (eff.get("node_us") or {}).items()}},
                    bound=r["bound"],
                    sources=sources, ops=r["ops"], layers=r["layers"])


# -- the backend's efficiency, calibrated on this machine ----------------------------------------
def _calibration_shape() -> str:
    shape = os.environ.get("EDGEC_CALIBRATION_MODEL", "default")
    if shape not in CALIBRATION_SHAPES:
        raise EdgecError(f"EDGEC_CALIBRATION_MODEL must be one of {sorted(CALIBRATION_SHAPES)}, got {shape!r}")
    return shape


def backend_efficiency(backend: str, threads: int | None = None, *, refresh: bool = False,
                       progress=None) -> dict:
    """{"decode", "prefill", "source", ...}: the share of this machine's roofline the backend reaches on
    the calibration model, measured once (a build and a profile: a minute) and cached."""
    from .limits import available_cpus, useful_threads

    threads = useful_threads(threads) or available_cpus()
    shape = _calibration_shape()
    path = cache_dir("host") / "efficiency.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    key = f"{backend}|{threads}|{shape}|{CALIBRATION_FORMAT}"
    if not refresh and isinstance(cached.get(key), dict):
        return cached[key]
    result = _calibrate(backend, threads, shape, progress)
    cached[key] = result
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=1))
    os.replace(tmp, path)
    return result


def _calibrate(backend: str, threads: int, shape: str, progress=None) -> dict:
    from .artifact import open_artifact
    from .pipeline import build
    from .profile import measure_speed
    from .synthetic import save_random_llama

    say = progress or (lambda msg: None)
    models = CALIBRATION_SHAPES[shape]
    roof = device_roof(get_device("host"), threads, progress)
    t0 = time.perf_counter()
    points = []  # per model: (roofline ms, nodes, measured ms) for decode and prefill
    for dims in models:
        say(f"calibrating the {backend} backend on this machine (once; cached): a random Llama "
            f"d={dims['hidden']}, {dims['layers']} layers, {CALIBRATION_RECIPE}")
        with tempfile.TemporaryDirectory(prefix="edgec-calibrate-") as tmp:
            model = save_random_llama(Path(tmp) / "model", **dims)
            art = build(model, Path(tmp) / "artifact", backend=backend, recipe=CALIBRATION_RECIPE, sign=False)
            table = load_costs(open_artifact(art).files(""), art)
            speed = measure_speed(art, _CALIB_PROMPT, _CALIB_NEW, threads, allow_unsigned=True)
        dec_roof, rows = roofline_ms(table, roof, 1, decode_context(_CALIB_PROMPT, _CALIB_NEW))
        pre_roof, _ = roofline_ms(table, roof, _CALIB_PROMPT, _CALIB_PROMPT)
        points.append({"decode": (dec_roof, len(rows), speed["decode_ms_per_token"]),
                       "prefill": (pre_roof, len(rows), speed["prefill_ms"])})
    fit = {phase: _fit([p[phase] for p in points]) for phase in ("decode", "prefill")}
    names = ", ".join(f"d={m['hidden']} x {m['layers']} layers" for m in models)
    today = datetime.now(timezone.utc)
    return {"decode": fit["decode"][0], "prefill": fit["prefill"][0],
            "node_us": {phase: fit[phase][1] for phase in fit},
            "measured_ms": {phase: [round(p[phase][2], 4) for p in points] for phase in fit},
            "core_gflops": roof.core_gflops, "threads": threads, "shape": shape,
            "seconds": round(time.perf_counter() - t0, 1), "measured_at": today.isoformat(timespec="seconds"),
            "source": f"the {backend} backend on this machine ({today.date()}), fitted on two random Llamas "
                      f"({names}; {CALIBRATION_RECIPE}, {_CALIB_PROMPT}-token prompt): its share of the roofline "
                      "and its fixed cost per node; assumed to carry over to other devices"}


def _fit(points: list[tuple[float, int, float]]) -> tuple[float, float]:
    """(efficiency, microseconds per node) with measured = roofline / efficiency + nodes * per_node, from
    (roofline ms, nodes, measured ms) points; a solution outside 0 < efficiency <= 1, per_node >= 0 is
    clamped to that range."""
    import numpy as np

    a = np.array([[r, n] for r, n, _ in points], np.float64)
    t = np.array([m for _, _, m in points], np.float64)
    inv, per_node = np.linalg.lstsq(a, t, rcond=None)[0]
    if per_node < 0:  # nothing per node: all of it is the kernels' shortfall
        inv, per_node = t.sum() / a[:, 0].sum(), 0.0
    if inv < 1:  # faster than the roofline (caches): the roof itself, the rest per node
        inv = 1.0
        per_node = max(0.0, float(((t - a[:, 0]) * a[:, 1]).sum() / (a[:, 1] ** 2).sum()))
    return round(1 / inv, 4), round(per_node * 1000, 4)
