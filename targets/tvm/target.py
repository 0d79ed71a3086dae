"""Device profile -> TVM target, linker and runtime device.

A device maps to one `TargetPlan`: the TVM target (llvm for CPUs, cuda with
an llvm host for GPUs), the triple, and how the library is linked (the host
compiler, or Debian's aarch64 cross gcc for ARM devices). Only what TVM can
serve is accepted; anything else is a one-line EdgecError before the model
is loaded.
"""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field

from edgec.errors import EdgecError

# Triples this backend knows how to generate code for and link.
CROSS_GCC = {"aarch64": ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")}
KNOWN_ARCHS = ("x86_64", "aarch64")
KNOWN_OS = ("linux-gnu", "linux-android")


@dataclass
class TargetPlan:
    kind: str                 # "llvm" or "cuda"
    triple: str               # CPU triple of the host code
    target: dict              # tvm.target.Target config
    host: dict | None = None  # host target config for cuda
    linker: str = "cc"        # executable that links the shared library
    cross: bool = False       # library cannot be loaded on this machine
    notes: list[str] = field(default_factory=list)

    def tvm_target(self):
        import tvm

        if self.host is None:
            return tvm.target.Target(self.target)
        return tvm.target.Target(self.target, host=self.host)


def _machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _split_triple(triple: str) -> tuple[str, str]:
    arch, _, rest = triple.partition("-")
    if arch not in KNOWN_ARCHS or rest not in KNOWN_OS:
        raise EdgecError(f"the TVM backend cannot target triple {triple!r}; supported: "
                         + ", ".join(f"{a}-{o}" for a in KNOWN_ARCHS for o in KNOWN_OS))
    return arch, rest


def _llvm_cpu(device, arch: str, native: bool) -> dict:
    # Reassociation lets LLVM vectorize float reductions (dot products); no nnan/ninf,
    # the attention mask relies on -inf.
    cfg: dict = {"kind": "llvm", "mtriple": device.cpu_triple, "fast-math-reassoc": True}
    if native:
        import tvm

        cfg["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
        return cfg
    if device.mcpu:
        cfg["mcpu"] = device.mcpu
    feats = {"neon": "+neon", "dotprod": "+dotprod", "fp16": "+fullfp16", "i8mm": "+i8mm", "bf16": "+bf16",
             "avx2": "+avx2", "fma": "+fma", "f16c": "+f16c", "avx512f": "+avx512f"}
    mattr = [feats[f] for f in device.cpu_features if f in feats]
    if arch == "aarch64" and "+neon" not in mattr:
        mattr.insert(0, "+neon")  # every AArch64 core has Advanced SIMD
    if mattr:
        cfg["mattr"] = mattr
    return cfg


def _linker(arch: str) -> tuple[str, bool]:
    """(compiler that links the .so, is it a cross build)."""
    if arch == _machine():
        return os.environ.get("CC", "cc"), False
    gcc, package = CROSS_GCC.get(arch, (None, None))
    if gcc is None:
        raise EdgecError(f"no cross compiler is known for {arch} on this {_machine()} machine")
    if shutil.which(gcc) is None:
        raise EdgecError(f"cross compiler {gcc} not found: install Debian's {package} "
                         f"(apt-get install -y {package})")
    return gcc, True


def plan_for(device) -> TargetPlan:
    """The TVM target for a device profile (raises EdgecError when TVM cannot serve it)."""
    arch, os_part = _split_triple(device.cpu_triple)
    native = device.name == "host"
    cpu = _llvm_cpu(device, arch, native)
    linker, cross = _linker(arch)
    notes = []
    if os_part == "linux-android":
        notes.append("linked with Debian's aarch64-linux-gnu gcc (glibc); for a stock Android "
                     "runtime relink the objects with the NDK clang")
    if device.kind == "cpu":
        return TargetPlan("llvm", device.cpu_triple, cpu, linker=linker, cross=cross, notes=notes)
    if device.kind == "gpu":
        if not device.gpu_arch.startswith("sm_"):
            raise EdgecError(f"device {device.name!r} has GPU arch {device.gpu_arch!r}; the TVM "
                             "backend serves NVIDIA GPUs (sm_XX) only")
        return TargetPlan("cuda", device.cpu_triple, {"kind": "cuda", "arch": device.gpu_arch},
                          host=cpu, linker=linker, cross=cross, notes=notes)
    raise EdgecError(f"device {device.name!r} of kind {device.kind!r} cannot be served by the TVM backend")
