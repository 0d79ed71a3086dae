"""Run a TVM artifact: the exported library in the Relax VM, weights from safetensors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from edgec.errors import EdgecError
from edgec.ir.weights import WeightStore

from .compile import LIB_FILE, META_FILE, WEIGHTS_FILE


def _set_threads(threads: int | None) -> None:
    if threads:
        cfg = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
        if cfg is not None:
            cfg(1, int(threads))  # 1: big cores (all, on a homogeneous CPU)


def _contiguous(a) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.array(a, order="C")


class TvmExecutor:
    """The Relax VM over model.so; `prefill` serves prompts, `decode` single tokens.

    `options` is the device profile's [tvm] table (none are defined yet).
    """

    def __init__(self, model_dir: Path, *, threads: int | None = None, options: dict | None = None):
        model_dir = Path(model_dir)
        self.meta = json.loads((model_dir / META_FILE).read_text())
        if self.meta.get("cross_compiled"):
            raise EdgecError(f"this TVM artifact was built for {self.meta['triple']} and cannot run on "
                             "this machine; copy it to the device (with an aarch64 TVM runtime)")
        if self.meta["kind"] == "cuda":
            self.device = tvm.cuda(0)
            if not self.device.exist:
                raise EdgecError("this TVM artifact targets CUDA but no NVIDIA GPU is visible")
        else:
            self.device = tvm.cpu(0)
        _set_threads(threads)
        lib = tvm.runtime.load_module(str(model_dir / LIB_FILE))
        self.vm = relax.VirtualMachine(lib, self.device)
        store = WeightStore.open(model_dir / WEIGHTS_FILE)
        self.params = [tvm.runtime.tensor(_contiguous(store[n]), self.device) for n in self.meta["weights"]]
        self.input_names = list(self.meta["inputs"])
        self.output_names = list(self.meta["outputs"])
        self._decode = "decode" in self.meta["functions"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"missing model input(s) {missing}")
        args = [tvm.runtime.tensor(_contiguous(feeds[n]), self.device) for n in self.input_names]
        seq = feeds["input_ids"].shape[-1] if "input_ids" in feeds else None
        fn = "decode" if self._decode and seq == 1 else "prefill"
        outs = self.vm[fn](*args, self.params)
        return {name: o.numpy() for name, o in zip(self.output_names, outs)}
