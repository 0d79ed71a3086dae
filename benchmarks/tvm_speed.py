"""Decode and prefill speed of the host TVM artifact beside the ONNX Runtime one (SmolLM2-135M).

    python benchmarks/tvm_speed.py [--runs 3] [--threads 2] [--recipes fp32] [--work DIR]

For each recipe, `edgec build --backend tvm` and `--backend onnx` (fresh
processes, timed; reused from --work when already there), then, interleaved
across artifacts, decode tokens/s (128 greedy tokens after a short prompt,
EOS ignored) and prefill tokens/s (a 512-token prompt); medians of --runs.
The llama.cpp peer is measured by benchmarks/decode.py (its own section).
Results go to stdout and to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import git_rev, machine, median, write_section  # noqa: E402

BACKENDS = ("tvm", "onnx")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipes", default="fp32")
    ap.add_argument("--work", type=Path, default=None, help="Keep (and reuse) the artifacts here.")
    ap.add_argument("--note", default="", help="A line added to the section (e.g. machine load).")
    args = ap.parse_args()

    import edgec

    work = args.work or Path(tempfile.mkdtemp(prefix="edgec-tvm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    keys = [(r, b) for r in args.recipes.split(",") for b in BACKENDS]
    built = {}
    for r, b in keys:
        out = work / f"smollm2-{r}-{b}"
        t0 = time.perf_counter()
        if not (out / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "edgec.cli", "build", "-o", str(out), "--recipe", r,
                            "--backend", b, "-q"], check=True)
            built[r, b] = {"build_s": round(time.perf_counter() - t0, 1), "path": out}
        else:
            built[r, b] = {"build_s": None, "path": out}

    models = {k: edgec.load(built[k]["path"], threads=args.threads) for k in keys}
    tok = next(iter(models.values())).tokenizer
    short = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    long_ids = tok(Path(__file__).read_text() * 20, add_special_tokens=False)["input_ids"][:512]
    decode = {k: [] for k in keys}
    prefill = {k: [] for k in keys}
    for k in keys:  # warm-up
        models[k].generate(short, 8, stop_at_eos=False)
    for _ in range(args.runs):
        for k in keys:  # interleaved
            m = models[k]
            seq = m.sequence(len(short) + 128)
            logits = seq.run(short)
            t1 = time.perf_counter()
            tokn = int(logits[-1].argmax())
            for _ in range(128):
                tokn = int(seq.run([tokn])[-1].argmax())
            decode[k].append(128 / (time.perf_counter() - t1))
            t0 = time.perf_counter()
            m.sequence(len(long_ids)).run(long_ids)
            prefill[k].append(len(long_ids) / (time.perf_counter() - t0))

    rows = []
    for r, b in keys:
        m = models[r, b]
        be = m.manifest["backend"]
        what = f"tvm {be.get('tvm_version', '')} (llvm {json.loads(be['target']).get('mcpu', '')})" \
            if b == "tvm" else "onnx (CPU EP)"
        rows.append({"recipe": r, "backend": what, "build_s": built[r, b]["build_s"],
                     "size_mb": round(m.manifest["total_size"] / 1e6, 1),
                     "decode_tok_s": round(median(decode[r, b]), 1),
                     "prefill_tok_s": round(median(prefill[r, b]), 1)})
    table = ["| recipe | backend | build time (s) | artifact (MB) | decode tok/s | prefill tok/s (512) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['recipe']} | {row['backend']} | {row['build_s'] if row['build_s'] is not None else '-'} "
                     f"| {row['size_mb']} | {row['decode_tok_s']} | {row['prefill_tok_s']} |")
    cmd = "python benchmarks/tvm_speed.py " + " ".join(sys.argv[1:])
    body = (f"Command: `{cmd.strip()}` (edgec {edgec.__version__}, commit {git_rev()})\n\n"
            f"Machine: {machine()}\n\n"
            f"SmolLM2-135M-Instruct (the embedded default), host artifacts, {args.threads} threads, medians "
            f"of {args.runs} interleaved runs; decode = 128 greedy tokens after a 5-token prompt, prefill = "
            "a 512-token prompt; build time is a fresh `edgec build` process (GGUF load included). "
            "llama.cpp: see benchmarks/decode.py's section."
            + (f"\n\n{args.note}" if args.note else "") + "\n\n" + "\n".join(table))
    write_section("Default model: TVM host artifact vs ONNX Runtime (issue 5)", body)
    print("\n".join(table))


if __name__ == "__main__":
    main()
