"""Decode tokens/s of artifacts on their own backends, interleaved (a quick check beside decode.py).

    python benchmarks/backend_decode.py ART[,key=0|1...] ... [--threads 1] [--tokens 64] [--rounds 2]

Each artifact's model/ is opened with its backend (run options given as key=0/1, e.g.
`build/smollm2-c,int8_activations=1`), a 20-token prompt is prefilled, then `--tokens` greedy
tokens are decoded; best of 3 per round, the artifacts taking turns round by round.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgec.backends import get_backend


def decode_rate(path: Path, options: dict, threads: int, tokens: int) -> float:
    backend = json.loads((path / "manifest.json").read_text())["backend"]["name"]
    seq = get_backend(backend).open(path / "model", options=options, threads=threads).sequence(tokens + 64)
    best = 0.0
    for _ in range(3):
        seq.reset()
        seq.run(list(range(100, 120)), last_only=True)
        t, tok = time.perf_counter(), 5
        for _ in range(tokens):
            tok = int(np.argmax(seq.run([tok], last_only=True)[-1]))
        best = max(best, tokens / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    for r in range(a.rounds):
        for spec in a.artifacts:
            path, *kv = spec.split(",")
            opts = {k: v == "1" for k, v in (x.split("=") for x in kv)}
            print(f"round {r + 1}  {spec}: {decode_rate(Path(path), opts, a.threads, a.tokens):.1f} tok/s", flush=True)


if __name__ == "__main__":
    main()
