"""The device's C toolchain: which compiler and flags build an artifact's library for a device profile.

Flags select the kernels at compile time (linear.h): AVX2+FMA+F16C on x86-64 devices that have
them (never -march=native: an artifact is for the device class, not this machine), -mcpu from
the profile on aarch64 (NEON, and SDOT where the core has dotprod).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgec.errors import EdgecError

RUNTIME_DIR = Path(__file__).parent / "runtime"
RUNTIME_SOURCES = ("ec_rt.c", "ec_ops.c", "ec_api.c", "linear.c")
RUNTIME_HEADERS = ("ec_rt.h", "linear.h")
LIBRARY = "libedgec.so"


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
    base = ("-std=c11", "-O3", "-fPIC", "-Wall", "-Wno-unused-variable", "-Wno-unused-but-set-variable")
    if triple.startswith("x86_64"):
        feats = set(device.cpu_features)
        flags = list(base)
        if "avx2" in feats and "fma" in feats:
            flags += ["-mavx2", "-mfma"] + (["-mf16c"] if "f16c" in feats else [])
        cc = "gcc"
    elif triple.startswith("aarch64"):
        cc = "gcc" if _host_is_aarch64() else "aarch64-linux-gnu-gcc"
        flags = list(base) + ([f"-mcpu={device.mcpu}"] if device.mcpu else ["-march=armv8-a"])
    else:
        raise EdgecError(f"the C backend has no toolchain for {triple!r} (device {device.name}); "
                         "it builds for x86_64 and aarch64")
    if shutil.which(cc) is None:
        pkg = "gcc-aarch64-linux-gnu" if cc.startswith("aarch64") else "gcc"
        raise EdgecError(f"the C backend needs {cc} for device {device.name}; install it "
                         f"(Debian: apt-get install {pkg})")
    return Toolchain(cc, tuple(flags), triple)


def copy_runtime(src_dir: Path) -> list[str]:
    """The runtime's sources and headers into src_dir (an artifact ships what it was built from)."""
    src_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name in RUNTIME_SOURCES + RUNTIME_HEADERS:
        shutil.copyfile(RUNTIME_DIR / name, src_dir / name)
        names.append(name)
    return names


def compile_library(tc: Toolchain, src_dir: Path, sources: list[str], out: Path, defines=()) -> None:
    """cc -shared the sources into out; a failed compile is a one-line error with the compiler's first error."""
    cmd = [tc.cc, *tc.flags, *[f"-D{d}" for d in defines], "-shared", "-o", str(out),
           *[str(src_dir / s) for s in sources], "-lm", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
        raise EdgecError(f"the C backend's compile failed ({tc.cc}): {first}")
