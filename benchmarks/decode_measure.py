"""The measurements of benchmarks/decode.py: worker processes, interleaved timing, RSS, bandwidth, medians.

Every system is measured in its own worker process (decode.py --worker), which
loads the model once and then serves timing requests over stdin/stdout, so its
peak RSS is its own and loading time is never counted as generation time.
"""
from __future__ import annotations

import json
import os
import resource
import select
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter as now

from decode_systems import BASELINE, SYSTEMS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DECODE = HERE / "decode.py"  # the command line; --worker runs `serve` in a child process
SHORT_PROMPT = "The capital of France is"


# ---------------------------------------------------------------------------------------------
# memory of this process
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    # VmHWM: this process image's own high-water mark. Not ru_maxrss, which Linux carries over
    # exec from the parent that forked the worker (it would report the parent's RSS).
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    return _status_kib("VmRSS") or 0


def anon_huge_page_bytes() -> int | None:
    """Bytes of this process's memory in transparent huge pages (AnonHugePages, /proc/self/smaps_rollup)."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# the worker process and the parent's handle on it
# ---------------------------------------------------------------------------------------------
def serve(kind: str, path: str, threads: int, ctx: int) -> None:
    """The worker: load one system, then answer decode / prefill / rss requests until quit."""
    from decode_runners import RUNNERS

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print (C or Python) goes to the log, not into the protocol
    sys.stdout = sys.stderr

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")

    rss0 = current_rss_bytes()
    t0 = now()
    try:
        runner = RUNNERS[kind](path, threads, ctx)
    except Exception as e:  # noqa: BLE001
        reply({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})
        raise
    reply({"ready": True, "load_s": now() - t0, "rss_before_load": rss0, "rss_loaded": current_rss_bytes(),
           "weight_bytes": runner.weight_bytes, "huge_page_bytes": getattr(runner, "huge_page_bytes", None)})
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "decode":
                toks, first_s, rest_s = runner.decode(req["ids"], req["n"])
                reply({"tokens": toks, "first_s": first_s, "rest_s": rest_s})
            elif req["op"] == "prefill":
                reply({"s": runner.prefill(req["ids"])})
            elif req["op"] == "rss":
                reply({"peak": peak_rss_bytes(), "current": current_rss_bytes(), "huge": anon_huge_page_bytes()})
            elif req["op"] == "quit":
                reply({"bye": True})
                return
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            reply({"error": f"{type(e).__name__}: {e}"[:300]})


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, kind: str, path: Path, threads: int, ctx: int, log: Path,
                 extra_env: dict | None = None):
        self.name, self.log = name, log
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                   **(extra_env or {}))
        self.proc = subprocess.Popen([sys.executable, str(DECODE), "--worker", kind, str(path),
                                      "--threads", str(threads), "--ctx", str(ctx)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"),
                                     text=True, env=env)

    def recv(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:] if self.log.exists() else []
            why = "timed out" if not ready else f"exited with status {self.proc.returncode}"
            raise RuntimeError(f"worker {why}; {self.log}: " + " | ".join(tail))
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(msg["error"])
        return msg

    def ask(self, req: dict, timeout: float = 600) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self.recv(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# the parent's measurements
# ---------------------------------------------------------------------------------------------
@dataclass
class Prompts:
    """The same token ids for every system."""
    short: list[int]  # SHORT_PROMPT, for decode
    long: list[int]  # --prompt-tokens of text, for prefill
    text_name: str  # where the long prompt comes from
    ctx: int  # the context the systems that preallocate it get


def make_prompts(gguf: Path, prompt_tokens: int, new_tokens: int) -> Prompts:
    """Tokenized with the GGUF's tokenizer: the start of WikiText-2's test split, or README.md where absent."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    short = list(tok(SHORT_PROMPT, add_special_tokens=False)["input_ids"])
    try:
        from edgec.eval import default_text_path

        text_src = default_text_path()
    except Exception:  # noqa: BLE001
        text_src = REPO / "README.md"
    text = text_src.read_text(errors="replace").replace("\r\n", "\n")
    long_ids = list(tok(text[: 40 * prompt_tokens], add_special_tokens=False)["input_ids"])
    while len(long_ids) < prompt_tokens:
        long_ids += long_ids
    ctx = -(-(max(prompt_tokens + 1, len(short) + new_tokens) + 16) // 256) * 256
    return Prompts(short, long_ids[:prompt_tokens], text_src.name, ctx)


def bandwidth(threads: int) -> dict:
    """Streaming-read bandwidth (GB/s) of a 1 GiB float32 array: numpy sum and BLAS dot per chunk, best of 5."""
    code = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
T = int(sys.argv[1])
a = np.ones(2**30 // 4, np.float32)
res = {}
for t in sorted({1, T}):
    chunks = np.array_split(a, t)
    ex = ThreadPoolExecutor(t)
    best = 0.0
    for f in (np.sum, lambda c: np.dot(c, c)):  # dot of a chunk with itself reads it once
        for _ in range(5):
            t0 = time.perf_counter(); list(ex.map(f, chunks)); dt = time.perf_counter() - t0
            best = max(best, a.nbytes / dt / 1e9)
    res[str(t)] = round(best, 2)
print(json.dumps(res))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code, str(threads)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError("bandwidth measurement failed: " + p.stderr.strip()[-300:])
    return {int(k): v for k, v in json.loads(p.stdout).items()}


@dataclass
class Runs:
    """What the workers measured, per system (in load order)."""
    order: list[str]
    info: dict[str, dict]  # the worker's ready message: load time, weight bytes, RSS after loading
    dec: dict[str, list[float]] = field(default_factory=dict)  # decode tok/s per run
    pre: dict[str, list[float]] = field(default_factory=dict)  # prefill tok/s per run
    tokens: dict[str, list[int]] = field(default_factory=dict)  # the last decode's new tokens
    rss: dict[str, dict] = field(default_factory=dict)  # peak / current / huge-page bytes after the runs


def start_workers(selected: list[str], paths: dict[str, Path], prompts: Prompts, threads: int, logs: Path,
                  log) -> tuple[dict[str, Worker], dict[str, dict]]:
    """Load every system in its worker and warm it up once (a short decode and a prefill)."""
    workers, info = {}, {}
    for n in selected:
        log.say(f"{n}: loading")
        w = Worker(n, SYSTEMS[n]["kind"], paths[n], threads, prompts.ctx, logs / f"worker-{n}.log",
                   SYSTEMS[n].get("env"))
        try:
            info[n] = w.recv(600)
            w.ask({"op": "decode", "ids": prompts.short, "n": 8})
            w.ask({"op": "prefill", "ids": prompts.long})
            workers[n] = w
        except Exception as e:  # noqa: BLE001
            w.close()
            log.note(f"`{n}` failed to load or run: {str(e)[:300]}")
    return workers, info


def interleaved(workers: dict[str, Worker], info: dict[str, dict], prompts: Prompts, runs: int,
                new_tokens: int, log) -> Runs:
    """runs rounds; in each every system in turn (the start rotating) decodes once and prefills once.
    Then each worker's RSS, and every worker closed."""
    order = list(workers)
    r = Runs(order, info, {n: [] for n in order}, {n: [] for n in order})
    for i in range(runs):
        for n in order[i % len(order):] + order[: i % len(order)]:
            if n not in workers:
                continue
            try:
                d = workers[n].ask({"op": "decode", "ids": prompts.short, "n": new_tokens})
                r.dec[n].append((new_tokens - 1) / d["rest_s"])
                r.tokens[n] = d["tokens"]
                p = workers[n].ask({"op": "prefill", "ids": prompts.long})
                r.pre[n].append(len(prompts.long) / p["s"])
            except Exception as e:  # noqa: BLE001
                workers.pop(n).close()
                log.note(f"`{n}` failed during the runs: {str(e)[:300]}")
        log.say(f"run {i + 1}/{runs}: " + ", ".join(f"{n} {r.dec[n][-1]:.1f}/{r.pre[n][-1]:.0f}"
                                                    for n in order if n in workers and r.dec[n]))
    for n, w in workers.items():
        r.rss[n] = w.ask({"op": "rss"})
        w.close()
    return r


def reference(runs: Runs) -> tuple[str | None, list[int]]:
    """The system whose tokens the others are compared with (transformers, else edgec fp32, else the export)."""
    name = next((n for n in ("transformers", "edgec-fp32", "ort-export") if n in runs.tokens), None)
    return name, runs.tokens.get(name, [])


def dir_bytes(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def make_rows(runs: Runs, labels: dict, paths: dict, build_s: dict, floors: dict, bw_best: float) -> list[dict]:
    """One row per system that ran: medians, the bandwidth limit, agreement with the reference, ratios."""
    _, ref = reference(runs)

    def agree(a):
        k = 0
        while k < min(len(a), len(ref)) and a[k] == ref[k]:
            k += 1
        return k

    rows = []
    for n in runs.order:
        if n not in runs.rss or not runs.dec[n]:
            continue
        info, floor = runs.info[n], floors.get(n) or {}
        wb = info.get("weight_bytes")
        d, p = statistics.median(runs.dec[n]), statistics.median(runs.pre[n])
        limit = bw_best * 1e9 / wb if wb else None
        rows.append({
            "system": n, "label": labels[n], "size_bytes": dir_bytes(paths[n]), "weight_bytes_per_token": wb,
            "peak_rss_bytes": runs.rss[n]["peak"], "rss_loaded_bytes": info.get("rss_loaded"),
            "load_s": round(info["load_s"], 2), "build_s": build_s.get(n),
            "decode_tok_s": round(d, 2), "decode_runs": [round(x, 2) for x in runs.dec[n]],
            "prefill_tok_s": round(p, 1), "prefill_runs": [round(x, 1) for x in runs.pre[n]],
            "limit_tok_s": round(limit, 1) if limit else None,
            "pct_of_limit": round(100 * d / limit, 1) if limit else None,
            "same_tokens_as_ref": agree(runs.tokens[n]) if ref else None,
            "matmulnbits_alone_ms": floor.get("ms_per_token"),
            "without_matmulnbits_ms": floor.get("rest_ms"),
            "huge_page_bytes": info.get("huge_page_bytes"),
            "anon_huge_page_bytes": runs.rss[n].get("huge"),
            "matmulnbits_alone_pages": floor.get("pages"),
        })
    base = next((r for r in rows if r["system"] == BASELINE), None)
    for r in rows:
        r["decode_vs_llama_cpp"] = round(r["decode_tok_s"] / base["decode_tok_s"], 2) if base else None
        r["prefill_vs_llama_cpp"] = round(r["prefill_tok_s"] / base["prefill_tok_s"], 2) if base else None
        r["peak_rss_vs_llama_cpp"] = round(r["peak_rss_bytes"] / base["peak_rss_bytes"], 2) if base else None
    return rows
