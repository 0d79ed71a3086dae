"""Sizes checked against the machine before any big allocation.

A config or option with an absurd value (a context of 10**9 tokens, 10**9
calibration samples) must fail in a second with one line, not allocate until
the kernel kills the process. The estimates here are computed from numbers
known before loading (config.json, file sizes, command-line options) and are
deliberately rough: they only have to tell "fits" from "cannot possibly fit".
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import EdgecError

MAX_CONTEXT = 1 << 24  # tokens; far above any model's, far below an allocation that cannot work
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
CGROUP_DIR = Path("/sys/fs/cgroup")  # cgroup v2: memory.max, memory.current, memory.stat

# A build's peak memory, measured (tests/tiny.py-style llama with 37M parameters from
# safetensors: 2.3x; SmolLM2-135M from GGUF: 1.9x the fp32 weights): the transformers
# model, the IR's copy, merged linears and the serialized backend files.
WEIGHT_COPIES = 2.5
# fuse_rotary evaluates the model's cos/sin subgraph for every position of the context and
# keeps its intermediates: measured ~37 bytes per position and rotary dimension.
ROTARY_BYTES = 40
POSITION_BYTES = 16  # the int64 position ids (and their float copy) fuse_rotary evaluates them for
GGUF_FP32_FACTOR = 8  # fp32 bytes per GGUF byte, bound for 4-bit files (Q4: ~7.1x); used without a config


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 1e12 else f"{n / 1e12:,.1f} TB"


def available_memory_bytes() -> int:
    """Memory this process can still get: the OS's available memory, or less under a cgroup limit.

    Containers often see the host's free memory while a cgroup (v2) caps them
    far lower; exceeding that cap gets the process killed, so the smaller wins.
    """
    import psutil

    avail = int(psutil.virtual_memory().available)
    cgroup = _cgroup_available(CGROUP_DIR)
    return avail if cgroup is None else min(avail, cgroup)


def _cgroup_available(d: Path) -> int | None:
    """memory.max - memory.current (page cache counted as free, as the kernel reclaims it), or None."""
    try:
        limit = (d / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((d / "memory.current").read_text().strip())
        stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines() if line.strip())
        used -= int(stat.get("file", 0))
        return max(int(limit) - max(used, 0), 0)
    except (OSError, ValueError):
        return None


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
    return min(check_int(n, what, 1), available_cpus())


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Taken when edgec is imported: TVM's thread pool pins the calling thread to one core once it runs,
# after which the thread's own affinity no longer says what the process may use.
_CPUS = _affinity()


def available_cpus() -> int:
    """The CPUs this process may run on (what a backend uses when no thread count is given)."""
    return _CPUS


def check_context(config, where: str) -> int:
    """The config's context length(s) must be below MAX_CONTEXT; returns the largest found.

    Tables sized by the context (rotary cos/sin, learned positions, the KV
    cache) grow with it, and a typo such as 1000000000 would otherwise allocate
    until the process dies.
    """
    top = 0
    values = config.to_dict()  # the names config.json uses (getattr also answers aliases)
    for key in CONTEXT_KEYS:
        v = values.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            if v > MAX_CONTEXT:
                raise EdgecError(f"{where}: {key} = {v:,} tokens is beyond edgec's limit of {MAX_CONTEXT:,}; "
                                 "fix the config (the model's real context length is usually in its model card)")
            top = max(top, v)
    return top


def _safetensors_fp32_bytes(folder: Path) -> int:
    """fp32 bytes of every tensor in the folder's *.safetensors, from their headers (no tensor is read)."""
    total = 0
    for f in folder.glob("*.safetensors"):
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > 100 << 20:  # corrupt; the loader will say so
                    continue
                header = json.loads(fh.read(n))
            for name, t in header.items():
                if name != "__metadata__":
                    numel = 1
                    for d in t["shape"]:
                        numel *= int(d)
                    total += 4 * numel
        except (OSError, ValueError, TypeError, KeyError, AttributeError, struct.error):
            continue  # unreadable: the loader names the file
    return total


def _meta_model_sizes(config) -> tuple[int, int] | None:
    """(fp32 bytes of parameters + buffers, rotary dim) of the model the config describes, or None.

    The model is built on the meta device, so no tensor memory is allocated:
    this counts exactly what transformers will allocate, learned position
    embeddings and tied weights (counted once) included, for any architecture.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - unsupported config: the loader reports it
        return None
    nbytes = sum(4 * p.numel() for p in model.parameters())
    rotary = 0
    for name, b in model.named_buffers():
        nbytes += b.numel() * b.element_size()
        if name.endswith("inv_freq"):
            rotary = max(rotary, 2 * b.numel())
    return nbytes, rotary


def estimate_build_memory(src, config) -> int:
    """Bytes a build of `src` needs at its peak, from the config and file sizes, before loading anything.

    fp32 weights (the larger of what the config describes and what the files
    hold) times WEIGHT_COPIES, plus a GGUF file read whole, plus the rotary
    tables fuse_rotary evaluates over the whole context.
    """
    from .frontend.trace import context_length

    sizes = _meta_model_sizes(config)
    weights, rotary = sizes if sizes is not None else (0, 0)
    if src.kind == "folder":
        weights = max(weights, _safetensors_fp32_bytes(src.path))
    elif sizes is None:
        weights = GGUF_FP32_FACTOR * src.path.stat().st_size
    if sizes is None:  # no meta model: assume the rotary covers the whole head
        rotary = getattr(config, "head_dim", None)
        if not isinstance(rotary, int):
            hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
            ok = isinstance(hidden, int) and isinstance(heads, int) and heads > 0
            rotary = hidden // heads if ok else 0
    need = int(WEIGHT_COPIES * weights)
    if src.kind != "folder":
        need += src.path.stat().st_size
    ctx = context_length(config)
    if rotary:
        need += ctx * (ROTARY_BYTES * rotary + POSITION_BYTES)
    return need
