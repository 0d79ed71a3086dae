"""Which backends exist, imported lazily so `edgec` never loads TVM or a
toolchain it does not use."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import EdgecError


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # must provide compile_graph(graph, out_dir, device=) and an executor class
    executor: str
    description: str


BACKENDS = {
    "onnx": Backend("onnx", "edgec.targets.onnx", "OnnxExecutor", "ONNX Runtime (CPU; CUDA EP on GPUs)"),
    "tvm": Backend("tvm", "edgec.targets.tvm", "TvmExecutor",
                   "Apache TVM (llvm for x86-64/aarch64, cuda); needs apache-tvm"),
}
PLANNED = {"c": "edgec's embedded C runtime"}


def get_backend(name: str) -> Backend:
    if name in BACKENDS:
        return BACKENDS[name]
    if name in PLANNED:
        raise EdgecError(f"backend {name!r} ({PLANNED[name]}) is not available in this version; "
                         f"use one of: {', '.join(BACKENDS)}")
    raise EdgecError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


def load_module(backend: Backend):
    return importlib.import_module(backend.module)
