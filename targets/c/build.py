"""The device's C toolchain: which compiler and flags build an artifact's library for a device profile.

Flags select the kernels at compile time (linear.h): AVX2+FMA+F16C on x86-64 devices that have
them (never -march=native: an artifact is for the device class, not this machine), -mcpu from
the profile on aarch64 (NEON, and SDOT where the core has dotprod).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgec.errors import EdgecError

RUNTIME_DIR = Path(__file__).parent / "runtime"
RUNTIME_SOURCES = ("ec_rt.c", "ec_ops.c", "ec_api.c", "linear.c", "sparse_ffn.c", "offload.c", "moe.c", "json.c",
                   "tokenizer.c", "edgec_api.c")
RUNTIME_HEADERS = ("ec_rt.h", "linear.h", "sparse_ffn.h", "offload.h", "moe.h", "json.h", "tokenizer.h", "edgec.h")
RUN_SOURCE = "edgec_run.c"
LIBRARY = "libedgec.so"
STATIC_LIBRARY = "libedgec.a"
RUNNER = "edgec-run"
PUBLIC_HEADER = "edgec.h"


@dataclass(frozen=True)
class Toolchain:
    cc: str
    flags: tuple[str, ...]
    triple: str

    @property
    def cross(self) -> bool:
        return self.triple.startswith("aarch64") and not _host_is_aarch64()


def _host_is_aarch64() -> bool:
    import platform

    return platform.machine() in ("aarch64", "arm64")


def toolchain_for(device) -> Toolchain:
    """The compiler and flags for device, or a one-line error saying what to install."""
    triple = device.cpu_triple
    # -fno-trapping-math: nothing reads the FP exception flags, and without it gcc keeps the clamps and
    # selects of the vectorizable loops in ec_ops.c (exp, activations, softmax) as branches, unvectorized
    base = ("-std=c11", "-O3", "-fno-trapping-math", "-fPIC", "-Wall", "-Wextra", "-Werror")
    if triple.startswith("x86_64"):
        feats = set(device.cpu_features)
        flags = list(base)
        if "avx2" in feats and "fma" in feats:
            flags += ["-mavx2", "-mfma"] + (["-mf16c"] if "f16c" in feats else [])
            if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= feats:  # 512-bit int8 dots (vpdpbusd)
                flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]
        cc = "gcc"
    elif triple.startswith("aarch64"):
        cc = "gcc" if _host_is_aarch64() else "aarch64-linux-gnu-gcc"
        flags = list(base) + _arm_flags(cc, device)
    else:
        raise EdgecError(f"the C backend has no toolchain for {triple!r} (device {device.name}); "
                         "it builds for x86_64 and aarch64")
    if shutil.which(cc) is None:
        pkg = "gcc-aarch64-linux-gnu" if cc.startswith("aarch64") else "gcc"
        raise EdgecError(f"the C backend needs {cc} for device {device.name}; install it "
                         f"(Debian: apt-get install {pkg})")
    return Toolchain(cc, tuple(flags), triple)


@functools.lru_cache(maxsize=None)
def _accepts(cc: str, flag: str) -> bool:
    if shutil.which(cc) is None:
        return True  # the missing compiler is reported below
    proc = subprocess.run([cc, flag, "-E", "-x", "c", "-", "-o", os.devnull], input="", capture_output=True, text=True)
    return proc.returncode == 0


def _arm_flags(cc: str, device) -> list[str]:
    """-mcpu from the profile; a compiler too old for that core (gcc 12 and the Cortex-A715) gets the
    architecture its features imply, so the dot-product kernels are still chosen."""
    if device.mcpu and _accepts(cc, f"-mcpu={device.mcpu}"):
        return [f"-mcpu={device.mcpu}"]
    feats = set(device.cpu_features)
    if "dotprod" in feats:
        return ["-march=armv8.2-a" + "".join(f"+{f}" for f in ("dotprod", "fp16", "i8mm") if f in feats)]
    return ["-march=armv8-a"]


def copy_runtime(src_dir: Path) -> list[str]:
    """The runtime's sources and headers into src_dir (an artifact ships what it was built from)."""
    src_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name in RUNTIME_SOURCES + RUNTIME_HEADERS + (RUN_SOURCE,):
        shutil.copyfile(RUNTIME_DIR / name, src_dir / name)
        names.append(name)
    return names


def _run(cmd: list[str], tc: Toolchain) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
        raise EdgecError(f"the C backend's compile failed ({tc.cc}): {first}")


def cache_dir() -> Path:
    """Where compiled runtime objects are kept between builds ($EDGEC_CACHE_DIR or ~/.cache/edgec)."""
    root = os.environ.get("EDGEC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "edgec")
    return Path(root) / "c-runtime"


# Per-file flags. ec_ops.c: multiply-adds fused (the attention, norm and activation loops run at twice
# the speed; their results are within float rounding of the reference either way). Not linear.c, whose
# exact path promises the reference's float32 roundings (ec_dequant_row is bit-exact).
FILE_FLAGS = {"ec_ops.c": ("-ffp-contract=fast",)}


def _object(tc: Toolchain, src: Path, flags: list[str]) -> Path:
    """src compiled to an object file, reused while the source, compiler and flags are the same
    (the runtime is most of a build's compile time; the model's own C is compiled every build)."""
    flags = [*flags, *FILE_FLAGS.get(src.name, ())]
    key = hashlib.sha256("\0".join([tc.cc, _cc_version(tc.cc), *flags]).encode() + src.read_bytes())
    for header in RUNTIME_HEADERS:
        if (src.parent / header).exists():
            key.update((src.parent / header).read_bytes())
    obj = cache_dir() / f"{src.stem}-{key.hexdigest()[:20]}.o"
    if not obj.exists():
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_suffix(f".{os.getpid()}.tmp")
        _run([tc.cc, *flags, "-c", "-o", str(tmp), str(src)], tc)
        os.replace(tmp, obj)  # atomic: concurrent builds never see half an object
    return obj


@functools.lru_cache(maxsize=None)
def _cc_version(cc: str) -> str:
    return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout


def compile_library(tc: Toolchain, src_dir: Path, sources: list[str], out_dir: Path, defines=()) -> list[str]:
    """What an artifact holds to run: LIBRARY (shared, for Python and C programs), STATIC_LIBRARY and
    RUNNER (statically linked when cross-compiled: a glibc shared library does not load on Android).
    The runtime's objects come from the cache, model.c is compiled fresh; a failed compile is a
    one-line error with the compiler's first error. Returns the file names written in out_dir."""
    flags = [*tc.flags, *[f"-D{d}" for d in defines]]
    objects = [str(_object(tc, src_dir / s, flags)) for s in sources if s != "model.c"]
    model, runner = out_dir / "model.o", out_dir / "edgec_run.o"
    try:
        _run([tc.cc, *flags, "-c", "-o", str(model), str(src_dir / "model.c")], tc)
        _run([tc.cc, *flags, "-c", "-o", str(runner), str(src_dir / RUN_SOURCE)], tc)
        _run([tc.cc, *flags, "-shared", "-o", str(out_dir / LIBRARY), str(model), *objects, "-lm", "-lpthread"], tc)
        static = out_dir / STATIC_LIBRARY
        static.unlink(missing_ok=True)
        _run([_tool(tc, "ar"), "rcs", str(static), str(model), *objects], tc)
        link = ["-static"] if tc.cross else []
        _run([tc.cc, *link, "-o", str(out_dir / RUNNER), str(runner), str(static), "-lm", "-lpthread"], tc)
    finally:
        model.unlink(missing_ok=True)
        runner.unlink(missing_ok=True)
    return [LIBRARY, STATIC_LIBRARY, RUNNER]


def _tool(tc: Toolchain, name: str) -> str:
    """binutils beside the compiler (aarch64-linux-gnu-ar for aarch64-linux-gnu-gcc)."""
    prefix = tc.cc[: -len("gcc")] if tc.cc.endswith("gcc") else ""
    return prefix + name if shutil.which(prefix + name) else name
