"""Build time and decode/prefill speed of the default model (SmolLM2-135M) with edgec.

    python benchmarks/build_and_decode.py [--runs 5] [--threads 2] [--recipes fp32,fp16]

For each recipe: `edgec build` wall time (a fresh process), then, interleaved
across recipes, decode tokens/s (128 new tokens after a short prompt, greedy,
EOS ignored) and prefill tokens/s (a 512-token prompt); medians of --runs.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipes", default="fp32,fp16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import edgec

    work = Path(tempfile.mkdtemp(prefix="edgec-bench-"))
    recipes = args.recipes.split(",")
    built = {}
    for r in recipes:
        out = work / f"smollm2-{r}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgec.cli", "build", "-o", str(out), "--recipe", r, "-q"],
                       check=True)
        built[r] = {"build_s": time.perf_counter() - t0, "path": out}

    models = {r: edgec.load(built[r]["path"], threads=args.threads) for r in recipes}
    tok = next(iter(models.values())).tokenizer
    short = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    text = Path(__file__).read_text() * 20
    long_ids = tok(text, add_special_tokens=False)["input_ids"][:512]
    decode = {r: [] for r in recipes}
    prefill = {r: [] for r in recipes}
    for r in recipes:  # warm-up
        models[r].generate(short, 8, stop_at_eos=False)
    for _ in range(args.runs):
        for r in recipes:  # interleaved
            m = models[r]
            # the generation loop's path: one KV cache per sequence, updated in place where the
            # backend can (ONNX GroupQueryAttention), else fed back step by step
            seq = m.sequence(len(short) + 128)
            logits = seq.run(short)
            t1 = time.perf_counter()
            tokn = int(logits[-1].argmax())
            for _ in range(128):
                tokn = int(seq.run([tokn])[-1].argmax())
            decode[r].append(128 / (time.perf_counter() - t1))
            t0 = time.perf_counter()
            m.sequence(len(long_ids)).run(long_ids)
            prefill[r].append(len(long_ids) / (time.perf_counter() - t0))

    rows = []
    for r in recipes:
        size = models[r].manifest["total_size"]
        rows.append({"recipe": r, "build_s": round(built[r]["build_s"], 1), "size_mb": round(size / 1e6, 1),
                     "decode_tok_s": round(median(decode[r]), 1), "prefill_tok_s": round(median(prefill[r]), 1)})
    if args.json:
        print(json.dumps(rows))
    cmd = "python benchmarks/build_and_decode.py " + " ".join(sys.argv[1:])
    table = ["| recipe | backend | build time (s) | artifact (MB) | decode tok/s | prefill tok/s (512) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['recipe']} | onnx (CPU EP) | {row['build_s']} | {row['size_mb']} | "
                     f"{row['decode_tok_s']} | {row['prefill_tok_s']} |")
    body = (f"Command: `{cmd.strip()}` (edgec {edgec.__version__}, commit {git_rev()})\n\n"
            f"Machine: {machine()}\n\n"
            f"SmolLM2-135M-Instruct (the embedded default), {args.threads} threads, medians of {args.runs} "
            "interleaved runs; decode = 128 greedy tokens after a 5-token prompt; build time is a "
            "fresh `edgec build` process (GGUF load and dequantization included).\n\n" + "\n".join(table))
    write_section("Default model: build time and decode speed (issue 2)", body)
    print("\n".join(table))


if __name__ == "__main__":
    main()
