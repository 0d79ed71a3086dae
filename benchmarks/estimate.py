"""The roofline estimator against measurement: SmolLM2-135M on this machine, and what it says for the boards (issue 17).

    python benchmarks/estimate.py [--backends onnx,c] [--devices rpi5,pixel8,jetson-orin-nano] [--rounds 5]
                                  [--threads 2] [--eval-tokens 16384] [--work /tmp/edgec-estimate] [--no-write]

For each backend an artifact of the default model (SmolLM2-135M) with the `int4` recipe (round-to-nearest,
no calibration) is built (or reused from --work when edgec's sources are unchanged). The backend's
efficiency is calibrated afresh on the calibration model (edgec.estimate: a random Llama of another shape),
then each artifact's decode and prefill speed (64-token prompt, 32 new tokens) is measured in --rounds
interleaved rounds (median) and set beside the estimate for `host`: the ±25% check of tests/test_estimate.py
on one table. The estimates for the boards follow, with the sources of their figures. An aarch64 (rpi5) C
build's instructions per decoded token are counted under qemu, and every artifact's perplexity is given
beside its speed (`edgec eval --max-tokens N`, the same windows for all).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Log, git_rev, machine, median, write_section  # noqa: E402
from decode_prepare import source_hash  # noqa: E402

TITLE = "Roofline estimates against measurement (issue 17)"
PROMPT, NEW = 64, 32


def build(backend: str, device: str, work: Path, log: Log) -> Path:
    import edgec

    out = work / f"{device}-{backend}-int4"
    key = source_hash("edgec", "passes", "targets")
    stamp = out.with_suffix(".key")
    if out.is_dir() and stamp.exists() and stamp.read_text() == key:
        return out
    log.say(f"building int4 for {device} with the {backend} backend")
    edgec.build(None, out, device=device, backend=backend, recipe="int4", force=True)
    stamp.write_text(key)
    return out


def perplexity(art: Path, tokens: int, log: Log) -> float:
    cache = art.with_suffix(f".ppl{tokens}.json")
    if cache.exists() and cache.stat().st_mtime > (art / "manifest.json").stat().st_mtime:
        return json.loads(cache.read_text())["perplexity"]
    from edgec.eval import evaluate

    log.say(f"evaluating {art.name} on {tokens} tokens")
    r = evaluate(art, reference=False, max_tokens=tokens)
    cache.write_text(json.dumps({"perplexity": r.perplexity}))
    return r.perplexity


def _int8_flags() -> str:
    """The CPU's int8 matrix extensions as /proc/cpuinfo names them (they set the int8 peak)."""
    try:
        flags = set(next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp", "i8mm") if f in flags]
    return ", ".join(found) or "none"


def _calibration_models() -> str:
    from edgec.estimate import CALIBRATION_SHAPES
    return " and ".join(f"a random Llama d={m['hidden']}, {m['layers']} layers, FFN {m['ffn']}"
                        for m in CALIBRATION_SHAPES["default"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="onnx,c")
    ap.add_argument("--devices", default="rpi5,pixel8,jetson-orin-nano")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgec-estimate"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    os.environ["EDGEC_CALIBRATION_MODEL"] = "default"
    from edgec import insns
    from edgec.estimate import backend_efficiency, estimate
    from edgec.hostperf import host_figures
    from edgec.profile import measure_speed

    log = Log()
    args.work.mkdir(parents=True, exist_ok=True)
    backends = [b for b in args.backends.split(",") if b]
    devices = [d for d in args.devices.split(",") if d]
    arts = {b: build(b, "host", args.work, log) for b in backends}
    roof = host_figures(args.threads, refresh=True, progress=log.say)
    eff = {b: backend_efficiency(b, args.threads, refresh=True, progress=log.say) for b in backends}
    speeds: dict[str, list[dict]] = {b: [] for b in backends}
    for r in range(args.rounds):
        order = backends[r % len(backends):] + backends[:r % len(backends)]
        for b in order:
            speeds[b].append(measure_speed(arts[b], PROMPT, NEW, args.threads))
        log.say(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{b} {1000 / speeds[b][-1]['decode_ms_per_token']:.1f} tok/s" for b in backends))
    ppl = {b: perplexity(arts[b], args.eval_tokens, log) for b in backends}

    lines = [f"Command: `python benchmarks/estimate.py --backends {args.backends} --devices {args.devices} "
             f"--rounds {args.rounds} --threads {args.threads} --eval-tokens {args.eval_tokens}` "
             f"(edgec commit {git_rev()}, {log.elapsed():.0f} s in all)", "",
             f"Machine: {machine()}; {args.threads} threads.", "",
             f"This machine's roofline, measured by edgec.hostperf: {roof.bandwidth_gbs:.1f} GB/s streaming read, "
             f"{roof.peak_fp32_gflops:.0f} fp32 GFLOP/s (BLAS), {roof.peak_int8_gops:.0f} int8 GOP/s "
             f"(onnxruntime MatMulInteger; CPU int8 extensions: {_int8_flags()}).", "",
             "Backend efficiency (the share of that roofline each backend reached on the calibration models, "
             + _calibration_models() + ", int4, which share no shape with SmolLM2): "
             + "; ".join(f"{b}: decode {eff[b]['decode']:.3f}, prefill {eff[b]['prefill']:.3f}" for b in backends)
             + ".", "",
             f"SmolLM2-135M `int4` (RTN, g128, int8 head), {PROMPT}-token prompt, {NEW} new tokens; measured = median "
             f"of {args.rounds} interleaved rounds; perplexity on {args.eval_tokens:,} WikiText-2 test tokens:", "",
             "| backend | perplexity | decode tok/s measured | estimated | est/meas | prefill tok/s measured | "
             "estimated | est/meas |", "|---|---|---|---|---|---|---|---|"]
    rows = {}
    for b in backends:
        e = estimate(arts[b], "host", prompt_tokens=PROMPT, new_tokens=NEW, threads=args.threads)
        dec = median([1000 / s["decode_ms_per_token"] for s in speeds[b]])
        pre = median([PROMPT * 1000 / s["prefill_ms"] for s in speeds[b]])
        rows[b] = (dec, pre, e)
        lines.append(f"| {b} | {ppl[b]:.2f} | {dec:.1f} | {e.decode_tok_s:.1f} | {e.decode_tok_s / dec:.2f} | "
                     f"{pre:.0f} | {e.prefill_tok_s:.0f} | {e.prefill_tok_s / pre:.2f} |")
    lines += ["", "Estimates for the boards (the same artifacts' cost tables; datasheet bandwidth and peaks, "
              "theoretical; each backend's efficiency from this machine assumed to carry over):", "",
              "| device | backend | decode tok/s | prefill tok/s | memory MB | bound (decode) | bandwidth source |",
              "|---|---|---|---|---|---|---|"]
    for d in devices:
        for b in backends:
            e = estimate(arts[b], d, prompt_tokens=PROMPT, new_tokens=NEW)
            bound = max(e.bound, key=e.bound.get)
            lines.append(f"| {d} | {b} | {e.decode_tok_s:.1f} | {e.prefill_tok_s:.0f} | {e.memory_mb:.1f} | {bound} "
                         f"{100 * e.bound[bound]:.0f}% | {e.bandwidth_gbs:.2f} GB/s ({e.sources['bandwidth_gbs']}) |")
    if "c" in backends and not insns.available(True):
        try:
            arm = build("c", "rpi5", args.work, log)
            ids = list(range(3, 35))
            per = insns.per_token(arm, ids, tokens=(8, 24))
            lines += ["", f"Instructions per decoded token of the rpi5 C build under qemu-aarch64, one thread "
                      f"(32-token prompt, 8 and 24 new tokens differenced): {per:,.0f}."]
        except Exception as err:  # noqa: BLE001 (a benchmark notes what it could not count)
            log.note(f"instructions not counted: {err}")
    lines += ["", *[f"- {n}" for n in log.notes]]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(TITLE, body)


if __name__ == "__main__":
    main()
