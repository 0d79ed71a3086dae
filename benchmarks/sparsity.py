"""Activation sparsity without retraining on the default model (SmolLM2-135M): perplexity against sparsity.

    python benchmarks/sparsity.py [--methods cats,teal] [--points 0,0.25,0.4,0.5,0.7] [--budget 0.05]
                                  [--work /tmp/edgec-sparsity] [--calib-samples 16] [--calib-seqlen 256]
                                  [--max-tokens 16384] [--threads 2] [--no-write]

For each method (passes/sparsity.py: CATS thresholds act(gate) of each FFN,
TEAL the input of every linear in the layers) and target sparsity, one C
artifact: `edgec build --backend c --recipe FILE` with FILE = the `source_blocks`
pass (the shipped Q4_1 blocks, as `--recipe source`) then the method's pass,
calibrated on the WikiText-2 validation text; then `edgec eval ART --max-tokens
N --json` (perplexity, KL and top-1 against the source model). Sparsity 0 is
the dense model for both methods (the passes insert nothing), built once. The
budget rows search the largest sparsity in [0, 0.9] within +budget perplexity
on held-out calibration windows; the sparsity they reach and their held-out
perplexities come from the pass's counts in the artifact's report.json.

Builds run with OPENBLAS_NUM_THREADS=1: calibration runs the reference ops
(numpy), whose small matmuls ran ~70x slower with OpenBLAS's two threads on
this 2-core machine beside other work. --work keeps every artifact and
evaluation; a rerun redoes only what is missing (delete it to start over).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Log, git_rev, machine, write_section  # noqa: E402

TITLE = "Activation sparsity without retraining (issue 16)"
REPO = Path(__file__).resolve().parents[1]
TOP = 0.9  # the upper end of the budget search
# SmolLM2-135M's linear weights per layer: attention q, k, v, o (576 wide, 3 KV heads of 64) and FFN gate, up, down
# (1536): what a kernel skipping the zeros leaves unread per token is CATS' s x (up + down), TEAL's s x all of them.
ATTENTION, FFN = 576 * 576 * 2 + 576 * 192 * 2, 576 * 1536 * 3
UNREAD = {"cats": (2 * FFN / 3) / (ATTENTION + FFN), "teal": 1.0}


def data_dir() -> Path:
    return Path(os.environ.get("EDGEC_DATA_DIR", REPO.parent / "shared" / "data"))


def recipe_text(name: str, method: str, options: dict) -> str:
    opts = "".join(f"{k} = {v}\n" for k, v in options.items())
    return f'name = "{name}"\n\n[[passes]]\nname = "source_blocks"\n\n[[passes]]\nname = "{method}"\n{opts}'


def edgec(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgec.cli", *args], capture_output=True, text=True, env=env)


def build(work: Path, name: str, method: str, options: dict, args, log: Log) -> dict:
    """The artifact WORK/name (reused when its recipe is unchanged): its path, build seconds and pass counts."""
    art, toml = work / name, work / f"{name}.toml"
    text = recipe_text(name, method, options)
    done = work / f"{name}.build.json"
    if done.exists() and toml.exists() and toml.read_text() == text and (art / "manifest.json").exists():
        return json.loads(done.read_text())
    toml.write_text(text)
    log.say(f"building {name}")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    p = edgec("build", "--backend", "c", "--recipe", str(toml), "--calib", str(args.calib), "--calib-samples",
              str(args.calib_samples), "--calib-seqlen", str(args.calib_seqlen), "-o", str(art), "--force", "-q",
              env=env)
    if p.returncode:
        raise SystemExit(f"build {name} failed:\n{p.stderr[-3000:]}")
    report = json.loads((art / "report.json").read_text())
    counts = next(r["counts"] for r in report["passes"] if r["pass"] == method)
    info = {"path": str(art), "seconds": round(time.perf_counter() - t0, 1), "counts": counts}
    done.write_text(json.dumps(info))
    log.say(f"built {name} in {info['seconds']} s: {counts}")
    return info


def evaluate(art: str, args, log: Log) -> dict:
    out = Path(art).with_suffix(".eval.json")
    if out.exists():
        return json.loads(out.read_text())
    log.say(f"evaluating {Path(art).name}")
    p = edgec("eval", art, "--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--json", "-q")
    if p.returncode:
        raise SystemExit(f"eval {art} failed:\n{p.stderr[-3000:]}")
    result = json.loads(p.stdout)
    out.write_text(json.dumps(result))
    log.say(f"{Path(art).name}: perplexity {result['perplexity']:.3f}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="cats,teal")
    ap.add_argument("--points", default="0,0.25,0.4,0.5,0.7", help="target sparsities")
    ap.add_argument("--budget", type=float, default=0.05, help="perplexity budget of the search rows (0: none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgec-sparsity"))
    ap.add_argument("--calib", type=Path, default=data_dir() / "wikitext-2" / "valid.txt")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args()
    log = Log()
    args.work.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    points = [float(p) for p in args.points.split(",") if p]

    rows = []  # (method, label, build info, eval)
    dense = None
    if 0.0 in points:
        info = build(args.work, "dense", methods[0], {"sparsity": 0.0}, args, log)
        dense = evaluate(info["path"], args, log)
        rows.append(("dense (either method at 0%)", "0%", info, dense))
    for m in methods:
        for s in points:
            if s > 0:
                info = build(args.work, f"{m}-{round(100 * s)}", m, {"sparsity": s}, args, log)
                rows.append((m, f"{s:.0%}", info, evaluate(info["path"], args, log)))
        if args.budget > 0:
            info = build(args.work, f"{m}-budget", m, {"sparsity": TOP, "budget": args.budget}, args, log)
            rows.append((m, f"+{args.budget:.0%} budget", info, evaluate(info["path"], args, log)))

    base = dense["perplexity"] if dense else None
    lines = ["| method | target sparsity | zeroed on calibration windows | perplexity | vs dense | KL to the source "
             "| top-1 agreement | build s |", "|---|---|---|---|---|---|---|---|"]
    for method, label, info, ev in rows:
        c = info["counts"]
        target = f"{c['target']:.1%} (searched)" if "budget" in label else label
        delta = f"{ev['perplexity'] / base - 1:+.1%}" if base else ""
        lines.append(f"| {method} | {label if 'budget' not in label else label + ': ' + target} | "
                     f"{c['sparsity']:.1%} | {ev['perplexity']:.3f} | {delta} | {ev['kl']:.4f} | "
                     f"{ev['top1_agreement']:.3f} | {info['seconds']:.0f} |")
    budget_notes = []
    for method, label, info, ev in rows:
        if "budget" in label:
            c = info["counts"]
            test = f", {ev['perplexity'] / base - 1:+.1%} on the test text" if base else ""
            budget_notes.append(f"{method}: {c['target']:.1%} reached at +{args.budget:.0%} (held-out calibration "
                                f"perplexity {c['perplexity']:.3f} vs dense {c['perplexity_dense']:.3f}, "
                                f"{c['perplexity'] / c['perplexity_dense'] - 1:+.1%}{test}; {c['evaluations']} "
                                f"evaluations on {c['held_out']} windows); a kernel skipping its zeros would leave "
                                f"{UNREAD.get(method, 1.0) * c['target']:.0%} of the layers' linear weights unread "
                                "per token")
    table = "\n".join(lines)
    print(table)
    for n in budget_notes:
        print(n)
    if args.no_write:
        return
    sites = {method: info["counts"]["sites"] for method, _, info, _ in rows if method in methods}
    cmd = "python benchmarks/sparsity.py " + " ".join(sys.argv[1:])
    minutes = sum(info["seconds"] + ev["seconds"] for _, _, info, ev in rows) / 60
    body = f"""Command: `{cmd.strip()}` (commit {git_rev()} plus this work's uncommitted changes, {time.strftime('%Y-%m-%d')},
{minutes:.0f} min of builds and evaluations while other builds shared the machine). Machine: {machine()}.

Each row is a C artifact of the default model (SmolLM2-135M-Instruct, its shipped Q4_1 blocks kept by `source_blocks`)
built with `edgec build --backend c --recipe FILE --calib ../shared/data/wikitext-2/valid.txt --calib-samples
{args.calib_samples} --calib-seqlen {args.calib_seqlen}`, FILE holding `source_blocks` then `cats` or `teal` with
`sparsity` (and `budget`), and scored by `edgec eval ART --max-tokens {args.max_tokens} --threads {args.threads} --json`
({args.max_tokens // 512} windows of 512 WikiText-2 test tokens; KL and top-1 against the GGUF dequantized to fp32
by transformers). CATS zeroes act(gate) in each of the {sites.get('cats', '?')} FFNs (the glu's `threshold`); TEAL
the inputs of every linear in the layers ({sites.get('teal', '?')} `sparsify` nodes: q/k/v and gate/up share their
input's; the logits projection stays dense). "zeroed" is the fraction of the thresholded activations at or under their threshold
on the calibration windows, from the pass's own histograms (thresholds are set layer by layer on the already
sparsified earlier layers, so it is the target). The budget rows search [0, {TOP:.0%}] by bisection (8 perplexity
runs of the reference ops on the last 4 of the {args.calib_samples} calibration windows; thresholds from the other
{args.calib_samples - max(1, args.calib_samples // 4)}).

{table}

- {(chr(10) + '- ').join(budget_notes) or 'no budget rows'}
- Equal sparsities are not equal savings: a zero of CATS' act(gate) spares one row of up and one column of down
  ({UNREAD['cats']:.0%} of a layer's linear weights at 100%, the gate is still computed), a zero of TEAL spares a
  column of the linear it feeds, so TEAL's s leaves s of every layer's weights unread.
- The budget holds on the held-out calibration windows it was searched on ({args.calib_samples // 4} x
  {args.calib_seqlen} tokens), not on the test text: so few tokens under-estimate the loss; more
  `--calib-samples` narrows the gap (not measured here).
- These artifacts compute the zeros (they decode at the dense speed); a build with `--memory-budget` skips
  CATS' zeros in the cold neurons it reads (hot/cold offloading: the section on it below).
"""
    write_section(TITLE, body)
    log.say("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
