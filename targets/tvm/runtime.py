"""Run a TVM artifact: the exported library in the Relax VM, weights from the planner's blob."""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from edgec.artifact import as_files
from edgec.errors import ArtifactError, EdgecError
from edgec.executor import check_capacity, check_fits
from edgec.interface import ModelInterface
from edgec.memory import HugePages
from edgec.native import sealed_path
from edgec.weight_plan import open_placed

from .compile import LIB_FILE, META_FILE, WEIGHTS_FILE


def _set_threads(threads: int | None) -> None:
    """TVM's pool with `threads` workers. TVM pins the calling thread to a core while doing so; its CPU
    set is restored afterwards, or every later runtime in the process (onnxruntime, the C runtime, another
    TVM model) would start its threads on that one core."""
    if threads:
        cfg = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
        if cfg is not None:
            saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
            try:
                cfg(1, int(threads))  # 1: big cores (all, on a homogeneous CPU)
            finally:
                if saved is not None:
                    os.sched_setaffinity(0, saved)


def _contiguous(a) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else np.array(a, order="C")


def _check_meta(meta) -> None:
    if not isinstance(meta, dict):
        raise TypeError("not an object")
    for key in ("inputs", "outputs", "weights", "functions"):
        if not isinstance(meta[key], list):
            raise TypeError(f"{key} is not a list")
    if not isinstance(meta["kind"], str):
        raise TypeError("kind is not a string")


def _load_library(code: bytes):
    """dlopen the verified bytes themselves (edgec.native; TVM picks its loader by the name model.so)."""
    with sealed_path(code, LIB_FILE) as path:
        return tvm_ffi.load_module(path)


class TvmExecutor:
    """The Relax VM over model.so; `prefill` serves prompts, `decode` single tokens.

    `options` are the backend's run options (targets/tvm/backend.py; none yet).
    """

    def __init__(self, model_dir, *, threads: int | None = None, options: dict | None = None,
                 interface: ModelInterface | None = None, trace: bool = False):
        """model_dir: a folder, or an artifact's verified model/ files (edgec.artifact.VerifiedFiles);
        interface: the manifest's (default: tvm.json's signature); trace: time every kernel the VM calls
        (op_trace())."""
        files = as_files(model_dir)
        self.threads = threads
        try:
            self.meta = json.loads(files.read_bytes(META_FILE))
            _check_meta(self.meta)
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{META_FILE} is not a valid TVM manifest ({e}); rebuild the artifact") from None
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
        lib = _load_library(files.read_bytes(LIB_FILE))
        self.vm = relax.VirtualMachine(lib, self.device)
        if any(not isinstance(p, dict) or p.get("file") != WEIGHTS_FILE for p in self.meta["weights"]):
            raise ArtifactError(f"{META_FILE}: every weight must lie in {WEIGHTS_FILE}; rebuild the artifact")
        arrays = open_placed(files, self.meta["weights"])
        # every decode step streams the weights: on the CPU, keep them in 2 MiB pages (edgec/memory.py)
        with HugePages(enabled=self.meta["kind"] != "cuda") as self.huge_pages:
            self.params = [tvm.runtime.tensor(_contiguous(arrays[p["name"]]), self.device)
                           for p in self.meta["weights"]]
        self.input_names = list(self.meta["inputs"])
        self.output_names = list(self.meta["outputs"])
        self.interface = interface or _interface(self.meta)
        self.context_length = self.meta.get("context_length")
        self.vocab_size = self.meta.get("vocab_size")
        self._decode = "decode" in self.meta["functions"]
        self._tracer = _KernelTracer(self.vm) if trace else None

    def call(self, args: list, seq: int) -> list:
        """Run on device tensors (graph inputs in order); returns device tensors (graph outputs in order)."""
        fn = "decode" if self._decode and seq == 1 else "prefill"
        if self._tracer is None:
            return list(self.vm[fn](*args, self.params))
        with self._tracer.run():
            return list(self.vm[fn](*args, self.params))

    def op_trace(self) -> list[tuple[float, dict[str, list[float]]]]:
        """Per run since load (opened with trace=True): (wall microseconds, kernel -> [calls, microseconds]);
        kernels are TVM's fused functions by name without their numbers (fused_linear_add),
        the VM's own calls summed as "vm builtins"."""
        if self._tracer is None:
            raise EdgecError("op_trace() needs the executor opened with trace_dir")
        return list(self._tracer.runs)

    def sequence(self, capacity: int):
        """A KV cache that stays in TVM tensors between steps (see edgec.executor.Sequence)."""
        iface = self.interface
        if not {iface.tokens, iface.positions} <= set(self.input_names) or iface.logits not in self.output_names:
            raise EdgecError("this TVM model has no token/position inputs or no logits: it cannot generate")
        return _TvmSequence(self, capacity)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"missing model input(s) {missing}")
        args = [tvm.runtime.tensor(_contiguous(feeds[n]), self.device) for n in self.input_names]
        seq = feeds["input_ids"].shape[-1] if "input_ids" in feeds else None
        outs = self.call(args, seq)
        return {name: o.numpy() for name, o in zip(self.output_names, outs)}


class _KernelTracer:
    """Times every call the Relax VM makes (its instrument hook runs before and after each), per run.
    The hook's own cost lands in the run's wall time, outside the kernels' times."""

    def __init__(self, vm):
        self.runs: list[tuple[float, dict[str, list[float]]]] = []
        self._current: dict[str, list[float]] | None = None
        self._start: dict[str, int] = {}
        vm.set_instrument(self._hook)

    @staticmethod
    def kernel(name: str) -> str:
        return "vm builtins" if name.startswith("vm.") else re.sub(r"\d+", "", name)

    def _hook(self, func, name, before, ret, *args):
        if self._current is not None:
            if before:
                self._start[name] = time.perf_counter_ns()
            else:
                acc = self._current.setdefault(self.kernel(name), [0, 0.0])
                acc[0] += 1
                acc[1] += (time.perf_counter_ns() - self._start.pop(name, time.perf_counter_ns())) / 1e3
        return 0  # carry on

    @contextmanager
    def run(self):
        self._current = {}
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.runs.append(((time.perf_counter() - t0) * 1e6, self._current))
            self._current = None


class _TvmSequence:
    """One generation: present_* tensors are fed back as past_* without leaving the device."""

    def __init__(self, ex: TvmExecutor, capacity: int):
        self.ex, self.capacity = ex, check_capacity(capacity)
        self.outputs = {n: i for i, n in enumerate(ex.output_names)}
        self.present = ex.interface.present_of()
        self.reset()

    def reset(self) -> None:
        self.length = 0
        self.cache = {name: tvm.runtime.tensor(np.zeros(shape, dtype), self.ex.device)
                      for name, (dtype, shape) in self.ex.interface.empty_cache_shapes().items()}

    def run(self, ids, last_only: bool = False) -> np.ndarray:
        n = len(ids)
        check_fits(self, n)
        ex, iface = self.ex, self.ex.interface
        feeds = {iface.tokens: tvm.runtime.tensor(np.asarray([ids], np.int64), ex.device),
                 iface.positions: tvm.runtime.tensor(
                     np.arange(self.length, self.length + n, dtype=np.int64)[None], ex.device)}
        outs = ex.call([feeds[name] if name in feeds else self.cache[name] for name in ex.input_names], n)
        self.cache = {name: outs[self.outputs[self.present[name]]] for name in self.cache}
        self.length += n
        logits = outs[self.outputs[iface.logits]].numpy()[0]
        return logits[-1:] if last_only else logits


def _interface(meta: dict) -> ModelInterface:
    """The interface as compiled (for a model folder opened without a manifest)."""
    return ModelInterface.from_signature(meta["signature"]["inputs"], meta["signature"]["outputs"])
