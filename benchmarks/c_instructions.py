"""Instructions per decoded token of the C runtime's x86-64 and aarch64 builds: a speed signal that a noisy
machine cannot blur.

    python benchmarks/c_instructions.py [--recipe int4] [--devices x86-avx2,rpi5,pixel8] [--work build/c-insns]
                                        [--tokens 8,24] [--no-write]

For each device an artifact of SmolLM2-135M with `--backend c` is built (or reused from --work when its
recipe and edgec's runtime sources are unchanged); its own `edgec-run` then generates from the same
32-token prompt (the start of WikiText-2's test split) on one thread, twice, with the two --tokens
counts. Instructions are counted for the whole process, so load, checksum and prefill cancel in the
difference: per decoded token = (I(n2) - I(n1)) / (n2 - n1).

- x86-64: `valgrind --tool=callgrind` (valgrind has no AVX-512, so the x86 row is the `x86-avx2`
  device's AVX2 build; exact and repeatable for the same binary and inputs).
- aarch64 (rpi5: Cortex-A76, NEON dotprod; pixel8: armv8.2-a+dotprod+fp16+i8mm): the static
  `edgec-run` under qemu-aarch64 with a small instruction-counting TCG plugin (edgec/qemu_insn_count.c,
  compiled by edgec.insns; Debian's qemu-user ships none). Guest instructions, exact and repeatable.

Also reported: each `edgec-run`'s size (the aarch64 ones are statically linked).
Unless --no-write the table goes to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Log, git_rev, machine, write_section  # noqa: E402
from decode_prepare import source_hash  # noqa: E402

TITLE = "C runtime: instructions per decoded token, x86-64 and aarch64 (issue 15)"
DATA = Path(os.environ.get("EDGEC_DATA_DIR", ROOT.parent / "shared" / "data"))
PROMPT_TOKENS = 32


def build(recipe: str, device: str, work: Path, log: Log) -> Path:
    out = work / f"{device}-{recipe}"
    key = source_hash("edgec", "passes", "targets")  # the recipe and device are in the folder's name
    stamp = work / f"{device}-{recipe}.key"
    if out.is_dir() and stamp.exists() and stamp.read_text() == key:
        return out
    log.say(f"building {recipe} for {device}")
    subprocess.run([sys.executable, "-m", "edgec.cli", "build", "--backend", "c", "--device", device, "--recipe", recipe,
                    "-o", str(out), "-q", "--force"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    stamp.write_text(key)
    return out


def prompt_ids(artifact: Path) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(artifact / "tokenizer" / "tokenizer.json"))
    wiki = DATA / "wikitext-2-raw" / "wiki.test.raw"
    text = wiki.read_text()[:4000] if wiki.exists() else (ROOT / "README.md").read_text()[:4000]
    return tok.encode(text, add_special_tokens=False).ids[:PROMPT_TOKENS]


def count(artifact: Path, ids: list[int], n: int, aarch64: bool, work: Path) -> tuple[int, int]:
    """(instructions of the whole run, tokens generated): edgec.insns, which `edgec profile` uses too."""
    from edgec.errors import EdgecError
    from edgec.insns import count as count_insns

    try:
        return count_insns(artifact, ids, n, aarch64)
    except EdgecError as e:
        raise SystemExit(str(e)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="int4")
    ap.add_argument("--devices", default="x86-avx2,rpi5,pixel8")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "c-insns")
    ap.add_argument("--tokens", default="8,24", help="the two generation lengths whose difference is counted")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    n1, n2 = (int(x) for x in args.tokens.split(","))
    if n2 <= n1:
        raise SystemExit("--tokens takes two counts, the second larger")
    log = Log()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for device in args.devices.split(","):
        art = build(args.recipe, device, args.work, log)
        c = json.loads((art / "model" / "c.json").read_text())
        aarch64 = c["triple"].startswith("aarch64")
        isa = " ".join(f for f in c["flags"] if f.startswith(("-mcpu", "-march", "-mavx")))
        tool = "qemu-aarch64" if aarch64 else "valgrind"
        if not shutil.which(tool):
            log.note(f"{device}: skipped ({tool} is not installed)")
            continue
        ids = prompt_ids(art)
        log.say(f"{device}: counting {n1} and {n2} tokens under {tool}")
        (i1, g1), (i2, g2) = count(art, ids, n1, aarch64, args.work), count(art, ids, n2, aarch64, args.work)
        if g2 <= g1:
            raise SystemExit(f"{device}: the model stopped early ({g1} and {g2} tokens); use other --tokens")
        per = (i2 - i1) / (g2 - g1)
        size = (art / "model" / "edgec-run").stat().st_size
        rows.append({"device": device, "isa": isa, "tool": tool, "insns_per_token": per,
                     "edgec_run_bytes": size, "static": aarch64})
        log.say(f"{device}: {per / 1e6:.2f} M instructions per decoded token, edgec-run {size / 2**20:.2f} MiB")
    lines = ["| device | ISA flags | counted by | M instructions / decoded token | edgec-run size |", "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['isa']} | {r['tool']} | {r['insns_per_token'] / 1e6:.2f} | "
                     f"{r['edgec_run_bytes'] / 2**20:.2f} MiB{' (static)' if r['static'] else ''} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        body = (f"`python benchmarks/c_instructions.py --recipe {args.recipe} --devices {args.devices} --tokens "
                f"{args.tokens}` at {git_rev()}, on {machine()}.\n\nSmolLM2-135M `{args.recipe}`, one thread, a "
                f"{PROMPT_TOKENS}-token WikiText-2 prompt; per token = (I({n2} tokens) - I({n1} tokens)) / "
                f"{n2 - n1}, whole process counted.\n\n{table}\n")
        if log.notes:
            body += "\n" + "\n".join(f"- {n}" for n in log.notes) + "\n"
        write_section(TITLE, body)


if __name__ == "__main__":
    main()
