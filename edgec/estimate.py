"""How fast and how large an artifact will be on a device that is not here: a roofline estimate.

Per node of the artifact's cost table (costs.json, edgec.ir.cost), one run takes
max(bytes / bandwidth, FLOPs / peak) on the device: weight and activation bytes against its memory
bandwidth, FLOPs against its int8 peak for linears whose weights are quantized (the backends
multiply those with int8 activations) and its fp32 peak otherwise. Summed over the nodes this is
the roofline time, which no runtime reaches: kernels fall short of the roof and every node costs
some dispatch. That gap is measured once per backend on this machine, on a calibration model of
another shape than anything users build (a random Llama, d=768, 24 layers): the backend's
efficiency is its roofline time over its measured time, for decode and for prefill separately.
The estimate for any device is its roofline time divided by that efficiency.

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

CALIBRATION_FORMAT = 1
# The calibration model: a shape no shipped model has, near the size of the ones edgec targets
CALIBRATION_SHAPES = {
    "default": {"hidden": 768, "layers": 24, "ffn": 2048, "heads": 12, "kv_heads": 4},
    "tiny": {"hidden": 64, "layers": 2, "ffn": 128, "heads": 4, "kv_heads": 2},  # tests: seconds, not minutes
}
CALIBRATION_RECIPE = "int4"
_CALIB_PROMPT, _CALIB_NEW = 64, 32


@dataclass
class Roof:
    """A device's roofline: bandwidth in GB/s, peaks in GFLOP/s (GOP/s for int8), and their sources."""

    bandwidth_gbs: float
    int8_gops: float
    fp32_gflops: float
    sources: dict[str, str]


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
                    {k: src + v for k, v in h.methods.items() if k != "dispatch_us"})
    fp32 = device.peak_fp16_tflops * 1000 / (2 if device.kind == "cpu" else 1)
    where = f"edgec/devices/{device.name}.toml"

    def source(name):
        return f"{where}: {'derived or assumed (see its comments)' if name in device.estimated else 'published'}"

    return Roof(device.memory_bandwidth_gbs, device.peak_int8_tops * 1000, fp32,
                {"bandwidth_gbs": source("memory_bandwidth_gbs"), "peak_int8_gops": source("peak_int8_tops"),
                 "peak_fp32_gflops": source("peak_fp16_tflops") + (" (fp32 = half the fp16 peak on a CPU)"
                                                                   if device.kind == "cpu" else "")})


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


def estimate_table(table: dict, roof: Roof, efficiency: dict[str, float], prompt_tokens: int,
                   new_tokens: int) -> dict:
    """The estimate's numbers from a cost table, a roof and a backend efficiency (no files read)."""
    dec_ms, dec_rows = roofline_ms(table, roof, 1, decode_context(prompt_tokens, new_tokens))
    pre_ms, _ = roofline_ms(table, roof, prompt_tokens, prompt_tokens)
    dec_real, pre_real = dec_ms / efficiency["decode"], pre_ms / efficiency["prefill"]
    by_op: dict[str, dict] = {}
    by_layer: dict[str, float] = {}
    bound = {"memory": 0.0, "compute": 0.0}
    for r in dec_rows:
        o = by_op.setdefault(r["op"], {"op": r["op"], "calls": 0, "ms": 0.0, "bytes": 0.0, "flops": 0.0})
        o["calls"] += 1
        o["ms"] += r["ms"] / efficiency["decode"]
        o["bytes"] += r["bytes"]
        o["flops"] += r["flops"]
        by_layer[r["layer"]] = by_layer.get(r["layer"], 0.0) + r["ms"] / efficiency["decode"]
        bound[r["bound"]] += r["ms"] / dec_ms if dec_ms else 0.0
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
    r = estimate_table(table, roof, eff, prompt_tokens, new_tokens)
    weights = sum(t.get("bytes", 0) for t in (manifest.get("weights") or {}).get("tiers", {}).values()) \
        or manifest["graph"].get("weight_bytes", 0)
    kv = kv_bytes(table, prompt_tokens + new_tokens)
    efficiency_source = eff["source"] + (" (on this machine's CPU: a GPU runtime's differs; read this estimate "
                                         "as a rough bound)" if dev.kind == "gpu" else "")
    sources = {**roof.sources, "efficiency": efficiency_source,
               "memory_mb": "weights as stored in the artifact + the KV cache of prompt + new tokens "
                            "(the runtime's own buffers not counted)"}
    return Estimate(str(path), dev.name, dev.description, backend, prompt_tokens, new_tokens,
                    prefill_ms=r["prefill_ms"], prefill_tok_s=prompt_tokens / r["prefill_ms"] * 1000,
                    decode_ms_per_token=r["decode_ms_per_token"], decode_tok_s=1000 / r["decode_ms_per_token"],
                    memory_mb=(weights + kv) / 1e6, weights_mb=weights / 1e6, kv_mb=kv / 1e6,
                    bandwidth_gbs=roof.bandwidth_gbs, peak_gflops=roof.int8_gops, fp32_gflops=roof.fp32_gflops,
                    efficiency={"decode": eff["decode"], "prefill": eff["prefill"]}, bound=r["bound"],
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
    dims = CALIBRATION_SHAPES[shape]
    say(f"calibrating the {backend} backend on this machine (once; cached): a random Llama "
        f"d={dims['hidden']}, {dims['layers']} layers, {CALIBRATION_RECIPE}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgec-calibrate-") as tmp:
        model = save_random_llama(Path(tmp) / "model", **dims)
        art = build(model, Path(tmp) / "artifact", backend=backend, recipe=CALIBRATION_RECIPE, sign=False)
        table = load_costs(open_artifact(art).files(""), art)
        speed = measure_speed(art, _CALIB_PROMPT, _CALIB_NEW, threads, allow_unsigned=True)
    roof = device_roof(get_device("host"), threads, progress)
    dec_roof, _ = roofline_ms(table, roof, 1, decode_context(_CALIB_PROMPT, _CALIB_NEW))
    pre_roof, _ = roofline_ms(table, roof, _CALIB_PROMPT, _CALIB_PROMPT)
    decode, prefill = dec_roof / speed["decode_ms_per_token"], pre_roof / speed["prefill_ms"]
    return {"decode": round(min(1.0, decode), 4), "prefill": round(min(1.0, prefill), 4),
            "measured_decode_ms": round(speed["decode_ms_per_token"], 4),
            "measured_prefill_ms": round(speed["prefill_ms"], 3), "threads": threads, "shape": shape,
            "seconds": round(time.perf_counter() - t0, 1),
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": f"the {backend} backend's share of this machine's roofline on a calibration model "
                      f"(random Llama d={dims['hidden']}, {dims['layers']} layers, {CALIBRATION_RECIPE}, "
                      f"{_CALIB_PROMPT}-token prompt), measured {datetime.now(timezone.utc).date()} "
                      "on this machine; assumed to carry over to other devices"}
