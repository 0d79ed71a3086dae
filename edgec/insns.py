"""Instructions per decoded token of a C artifact's `edgec-run`: a speed signal no machine's noise blurs,
and the one measurement an aarch64 build gets on an x86 machine.

The artifact's own `edgec-run` generates from the same prompt twice, with two token counts, on one
thread; instructions are counted for the whole process, so load, checksum and prefill cancel in the
difference: per decoded token = (I(n2) - I(n1)) / (n2 - n1).

- aarch64: under qemu-aarch64 with a small instruction-counting TCG plugin (qemu_insn_count.c, compiled
  here into the cache folder; Debian's qemu-user ships none). Guest instructions, exact and repeatable.
- x86-64: `valgrind --tool=callgrind` (valgrind has no AVX-512: count an AVX2 build, device x86-avx2).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .cache import cache_dir
from .errors import EdgecError

PLUGIN_SRC = Path(__file__).with_name("qemu_insn_count.c")


def plugin() -> Path:
    """The TCG plugin, compiled once per source change."""
    so = cache_dir("qemu") / "qemu_insn_count.so"
    if not so.exists() or so.stat().st_mtime < PLUGIN_SRC.stat().st_mtime:
        cc = shutil.which("gcc") or shutil.which("cc")
        if not cc:
            raise EdgecError("counting aarch64 instructions needs gcc to compile the qemu plugin")
        tmp = so.with_suffix(".tmp.so")
        proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", str(PLUGIN_SRC),
                               "-o", str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EdgecError(f"compiling the qemu instruction-count plugin failed: {proc.stderr.strip()[-300:]}")
        tmp.replace(so)
    return so


def available(aarch64: bool) -> str | None:
    """None if the counter for that build can run here, else why not (one line)."""
    tool = "qemu-aarch64" if aarch64 else "valgrind"
    if not shutil.which(tool):
        return f"{tool} is not installed (Debian: apt-get install {'qemu-user' if aarch64 else 'valgrind'})"
    return None


def count(artifact: Path, ids: list[int], n: int, aarch64: bool, timeout: float = 600) -> tuple[int, int]:
    """(instructions of the whole `edgec-run` process, tokens it generated), on one thread."""
    run = [str(Path(artifact) / "model" / "edgec-run"), str(artifact), "--ids", ",".join(map(str, ids)), "-n", str(n),
           "--threads", "1"]
    if aarch64:
        cmd, pattern = ["qemu-aarch64", "-plugin", str(plugin()), *run], r"edgec-insns (\d+)"
    else:
        cmd, pattern = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *run], r"Collected : (\d+)"
    why = available(aarch64)
    if why:
        raise EdgecError(f"cannot count instructions: {why}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgecError(f"{cmd[0]} took longer than {timeout:.0f} s counting instructions") from None
    if proc.returncode != 0:
        raise EdgecError(f"{' '.join(cmd[:3])} ... failed: {proc.stderr.strip()[-300:]}")
    found = re.search(pattern, proc.stderr)
    if not found:
        raise EdgecError(f"no instruction count in the output of {cmd[0]}: {proc.stderr.strip()[-300:]}")
    return int(found.group(1)), len(proc.stdout.split())


def per_token(artifact: Path, ids: list[int], tokens: tuple[int, int] = (4, 12), aarch64: bool = True) -> float:
    """Instructions per decoded token: the difference of two runs over the difference of their tokens."""
    (i1, t1), (i2, t2) = (count(artifact, ids, n, aarch64) for n in tokens)
    if t2 <= t1:
        raise EdgecError(f"edgec-run generated {t1} and {t2} tokens (EOS?); cannot difference them")
    return (i2 - i1) / (t2 - t1)
