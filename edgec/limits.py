"""Sizes checked against the machine before any big allocation.

A config or option with an absurd value (a context of 10**9 tokens, 10**9
calibration samples) must fail in a second with one line, not allocate until
the kernel kills the process. The estimates here are computed from numbers
known before loading (config.json, file sizes, command-line options) and are
deliberately rough: they only have to tell "fits" from "cannot possibly fit".
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import EdgecError

MAX_CONTEXT = 1 << 24  # tokens; far above any model's, far below an allocation that cannot work
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_MEMORY_CURRENT = Path("/sys/fs/cgroup/memory.current")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def available_memory_bytes() -> int:
    """Memory this process can still get: the OS's available memory, or less under a cgroup limit.

    Containers often see the host's free memory while a cgroup (v2) caps them
    far lower; exceeding that cap gets the process killed, so the smaller wins.
    """
    import psutil

    avail = int(psutil.virtual_memory().available)
    try:
        limit = CGROUP_MEMORY_MAX.read_text().strip()
        if limit != "max":
            used = int(CGROUP_MEMORY_CURRENT.read_text().strip()) if CGROUP_MEMORY_CURRENT.is_file() else 0
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


def check_memory(need_bytes: int, what: str, hint: str = "use a machine with more memory") -> None:
    """Raise if `what` needs more memory than is available (checked before allocating it)."""
    have = available_memory_bytes()
    if need_bytes > have:
        raise EdgecError(f"{what} needs about {_gb(need_bytes)} of memory but this machine has "
                         f"{_gb(have)} available; {hint}")


def check_int(value, what: str, lo: int, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi], else a one-line error naming `what` and the range.

    Rejects bools, floats and strings (a recipe's TOML can hold any of them):
    silently truncating 3.5 or reading true as 1 would hide a typo.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        rng = f"{lo}..{hi:,}" if hi is not None else f">= {lo}"
        raise EdgecError(f"{what} must be a whole number ({rng}), got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"between {lo:,} and {hi:,}" if hi is not None else f">= {lo:,}"
        raise EdgecError(f"{what} must be {rng}, got {value:,}")
    return value


def useful_threads(n: int | None, what: str = "--threads") -> int | None:
    """n checked (a whole number >= 1) and capped at the CPUs this process may run on; None stays None.

    More threads than cores only adds contention (ONNX Runtime spins its
    workers), so asking for 64 on a 2-core machine gets 2.
    """
    if n is None:
        return None
    n = check_int(n, what, 1)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return min(n, max(cpus, 1))
