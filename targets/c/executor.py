"""Run a C artifact from Python: libedgec.so through ctypes, the weights bound from weights.bin.

`run(feeds)` serves any graph (the conformance suite's too): pasts are copied into a cache of
exactly past+seq rows and returned as the presents. `sequence(capacity)` is one generation's KV
cache, allocated once and appended to in place by the library (no copies between steps). Each cache
tensor is kept in its storage dtype (c.json's caches: float32, float16 under kv_cache=fp16, int8 rows
and their float32 scales for recipe int8-kv).
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import threading
import time

import numpy as np

from edgec.artifact import as_files
from edgec.errors import ArtifactError, EdgecError
from edgec.executor import check_capacity, check_fits
from edgec.interface import ModelInterface
from edgec.ir import shapes as S
from edgec.memory import HugePages
from edgec.native import sealed_path

from .backend import META_FILE

TRACE_ENV = "EDGEC_MOE_TRACE"  # a routing trace file the moe layers take their experts from (runtime/moe.h)
from .build import LIBRARY
from .weights import FILE

_P = ctypes.c_void_p


def _machine_triple() -> str:
    m = platform.machine()
    return {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(m, m)


def _load(code: bytes):
    with sealed_path(code, LIBRARY) as path:
        lib = ctypes.CDLL(path)
    lib.ec_rt_new.restype = _P
    lib.ec_rt_new.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.ec_rt_free.argtypes = [_P]
    lib.ec_rt_error.restype = ctypes.c_char_p
    lib.ec_rt_error.argtypes = [_P]
    lib.ec_rt_threads.argtypes = [_P]
    lib.ec_rt_kernels.restype = ctypes.c_char_p
    lib.ec_rt_bind.argtypes = [_P, _P, ctypes.c_uint64, ctypes.c_int]
    lib.ec_rt_op_kind.restype = ctypes.c_char_p
    lib.ec_rt_timers.argtypes = [_P, _P, _P]
    lib.ec_graph_run.argtypes = [_P, _P, _P, _P, _P, ctypes.c_int64]
    lib.ec_rt_open_cold.argtypes = [_P, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint64]
    lib.ec_rt_cold_stats.argtypes = [_P, _P]
    lib.ec_rt_cold_reset.argtypes = [_P]
    lib.ec_rt_moe_trace.argtypes = [_P, ctypes.c_char_p]
    return lib


COLD_STATS = ("bytes_read", "reads", "bundles_read", "cache_hits", "neurons_computed", "neurons", "cache_bytes",
              "direct", "ffn_calls", "moe_calls", "experts_computed", "experts_resident")  # offload.h's, in order


class CExecutor:
    """The Executor protocol (edgec.executor) over libedgec.so."""

    def __init__(self, model_dir, *, interface: ModelInterface | None = None, threads: int | None = None,
                 options: dict | None = None, trace_dir=None):
        """trace_dir: trace every run's op times (op_trace()); an artifact built without the timers
        (backend option profile) gets a library with them, compiled from its model/src/ into trace_dir."""
        files = as_files(model_dir)
        options = options or {}
        try:
            self.meta = json.loads(files.read_bytes(META_FILE))
            for key in ("inputs", "outputs", "symbols", "caches", "signature"):
                self.meta[key]  # noqa: B018 (presence check)
            self.meta["caches"] = _cache_entries(self.meta["caches"], self.meta["signature"])
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{META_FILE} is not a valid C backend manifest ({e}); rebuild the artifact") from None
        triple = self.meta.get("triple", "")
        if self.meta.get("cross_compiled") or not triple.startswith(_machine_triple()):
            raise EdgecError(f"this C artifact was built for {triple} and cannot run on this "
                             f"{platform.machine()} machine; run its library on the device")
        self._trace: list | None = None
        if trace_dir is not None:
            self._trace = []
            self.lib = _load(self._profiled_library(files, trace_dir))
        else:
            self.lib = _load(files.read_bytes(LIBRARY))
        self.threads = threads or os.cpu_count() or 1
        self.rt = self.lib.ec_rt_new(int(self.threads), int(bool(options.get("int8_activations"))))
        if not self.rt:
            raise EdgecError("the C runtime could not start (out of memory?)")
        size = files.size(FILE)
        with HugePages(enabled=bool(options.get("huge_pages", True))) as self.huge_pages:
            if self.huge_pages.enabled:
                self._weights = np.empty(size, np.uint8)
                with open(files.path(FILE), "rb") as f:
                    f.readinto(memoryview(self._weights))
            else:
                self._weights = np.memmap(files.path(FILE), np.uint8, "r", shape=(size,))
        # the manifest's SHA-256 already verified the file; the library checks header and table
        if self.lib.ec_rt_bind(self.rt, self._weights.ctypes.data, size, 0) != 0:
            raise ArtifactError(self.lib.ec_rt_error(self.rt).decode())
        self.offload = self.meta.get("offload")
        if self.offload:  # hot/cold: the cold neurons are read from cold.bin on demand
            direct = int((options.get("cold_io") or "direct") == "direct")
            if self.lib.ec_rt_open_cold(self.rt, files.path(self.offload["file"]).encode(), direct,
                                        int(self.offload["bytes"])) != 0:
                raise ArtifactError(self.lib.ec_rt_error(self.rt).decode())
        trace = os.environ.get(TRACE_ENV)  # runtime/moe.h's benchmark and testing hook, as edgec_context reads it
        if trace and self.meta.get("moe_layers"):
            if self.lib.ec_rt_moe_trace(self.rt, trace.encode()) != 0:
                raise EdgecError(self.lib.ec_rt_error(self.rt).decode() + f" ({TRACE_ENV})")
        sig = self.meta["signature"]
        self.specs = {s["name"]: (s["dtype"], tuple(s["shape"])) for s in sig["inputs"] + sig["outputs"]}
        self.input_names = [s["name"] for s in sig["inputs"]]
        self.output_names = [s["name"] for s in sig["outputs"]]
        self.interface = interface or ModelInterface.from_signature(sig["inputs"], sig["outputs"])
        self.context_length = self.meta.get("context_length")
        self.vocab_size = self.meta.get("vocab_size")
        self.kernels = self.lib.ec_rt_kernels().decode()
        self._lock = threading.Lock()  # one runtime context: one call at a time

    def op_times(self) -> dict[str, tuple[int, float]]:
        """"op@layer" (e.g. "linear@3", "embedding@embed") -> (calls, total microseconds) since load: an
        EC_PROFILE build's timers (backend option profile=true), zeros otherwise."""
        kinds = self.lib.ec_rt_op_kinds()
        ns, calls = np.zeros(max(1, kinds), np.int64), np.zeros(max(1, kinds), np.int64)
        self.lib.ec_rt_timers(self.rt, ns.ctypes.data, calls.ctypes.data)
        return {self.lib.ec_rt_op_kind(i).decode(): (int(calls[i]), ns[i] / 1e3)
                for i in range(self.lib.ec_rt_op_kinds())}

    def cold_stats(self, reset: bool = False) -> dict[str, int]:
        """A hot/cold artifact's counters since load or the last reset (COLD_STATS); {} for other artifacts."""
        if not self.offload:
            return {}
        out = np.zeros(len(COLD_STATS), np.uint64)
        with self._lock:
            self.lib.ec_rt_cold_stats(self.rt, out.ctypes.data)
            if reset:
                self.lib.ec_rt_cold_reset(self.rt)
        return {k: int(v) for k, v in zip(COLD_STATS, out)}

    def _profiled_library(self, files, trace_dir) -> bytes:
        """The artifact's library if it has the timers, else one compiled with them from model/src/."""
        from pathlib import Path

        from .backend import SOURCE_DIR
        from .build import RUN_SOURCE, RUNTIME_HEADERS, RUNTIME_SOURCES, Toolchain, compile_library

        flags = list(self.meta.get("flags", []))
        if "-DEC_PROFILE" in flags:
            return files.read_bytes(LIBRARY)
        cc = self.meta.get("cc", "gcc")
        out = Path(trace_dir) / "profiled"
        src = out / SOURCE_DIR
        src.mkdir(parents=True, exist_ok=True)
        sources = [*RUNTIME_SOURCES, "model.c"]
        try:  # the verified bytes, copied out: the build reads files by name
            for name in [*sources, *RUNTIME_HEADERS, RUN_SOURCE]:
                (src / name).write_bytes(files.read_bytes(f"{SOURCE_DIR}/{name}"))
        except (ArtifactError, OSError):
            raise EdgecError("this C artifact lacks the sources to build a profiled library from; rebuild "
                             "it with --backend-opt profile=1") from None
        defines = [f[2:] for f in flags if f.startswith("-D")] + ["EC_PROFILE"]
        tc = Toolchain(cc, tuple(f for f in flags if not f.startswith("-D")), self.meta["triple"])
        try:
            compile_library(tc, src, sources, out, defines)
        except EdgecError as e:
            raise EdgecError(f"{e} (building the profiled library; or rebuild the artifact with "
                             "--backend-opt profile=1)") from None
        return (out / LIBRARY).read_bytes()

    def op_trace(self) -> list[tuple[float, dict[str, list[float]]]]:
        """Per run since load, in order (opened with trace_dir): (wall microseconds,
        "op@layer" -> [calls, microseconds]); the runtime's EC_PROFILE timers."""
        if self._trace is None:
            raise EdgecError("op_trace() needs the executor opened with trace_dir")
        return list(self._trace)

    def __del__(self):
        rt, lib = getattr(self, "rt", None), getattr(self, "lib", None)
        if rt and lib is not None:
            lib.ec_rt_free(rt)
            self.rt = None

    # -- symbols and shapes ------------------------------------------------------------------
    def _bind(self, shapes: dict[str, tuple], rows: dict[str, int]) -> dict[str, int]:
        syms: dict[str, int] = {}
        for name in self.input_names:
            spec = self.specs[name][1]
            got = shapes[name]
            if len(got) != len(spec):
                raise EdgecError(f"input {name!r}: rank {len(got)}, the model takes {len(spec)}")
            for d, g in zip(spec, got):
                if isinstance(d, int):
                    if d != g:
                        raise EdgecError(f"input {name!r}: shape {tuple(got)}, the model takes {spec}")
                elif S.symbols_of(d) == {d}:
                    if syms.setdefault(d, int(g)) != int(g):
                        raise EdgecError(f"input {name!r}: dimension {d} is {g} here, {syms[d]} elsewhere")
        for sym, (rows_input, dim) in self.meta.get("row_symbols", {}).items():
            total = S.evaluate(dim if not dim.lstrip("-").isdigit() else int(dim), syms)
            n = rows.get(rows_input, total)
            syms[sym] = total if n <= 0 or n > total else n
        return syms

    def _shape(self, name: str, syms: dict[str, int]) -> tuple[int, ...]:
        return tuple(S.evaluate(d, syms) for d in self.specs[name][1])

    def _call(self, syms: dict[str, int], ins: list[np.ndarray], outs: list[np.ndarray], caches: list[np.ndarray],
              cap: int) -> None:
        sym_arr = np.array([syms[s] for s in self.meta["symbols"]] or [0], np.int64)
        in_ptrs = (_P * max(len(ins), 1))(*[a.ctypes.data for a in ins])
        out_ptrs = (_P * max(len(outs), 1))(*[a.ctypes.data for a in outs])
        cache_ptrs = (_P * max(len(caches), 1))(*[a.ctypes.data for a in caches])
        with self._lock:
            before = self.op_times() if self._trace is not None else None
            t0 = time.perf_counter()
            rc = self.lib.ec_graph_run(self.rt, sym_arr.ctypes.data, in_ptrs, out_ptrs, cache_ptrs, int(cap))
            if rc != 0:
                raise EdgecError(self.lib.ec_rt_error(self.rt).decode())
            if before is not None:
                wall = (time.perf_counter() - t0) * 1e6
                after = self.op_times()
                self._trace.append((wall, {op: [c - before[op][0], us - before[op][1]]
                                           for op, (c, us) in after.items() if c > before[op][0]}))

    # -- the protocol ----------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"missing model input(s) {missing}")
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self.specs[n][0]) for n in self.input_names}
        rows = {n: int(a.reshape(-1)[0]) for n, a in arrays.items() if a.size == 1 and a.dtype == np.int64}
        syms = self._bind({n: a.shape for n, a in arrays.items()}, rows)
        caches, cap = [], 0
        for c in self.meta["caches"]:
            past = arrays[c["past"]]
            full = self._shape(c["present"], syms)
            cap = full[2]
            buf = np.zeros(full, c["dtype"])
            buf[:, :, :past.shape[2]] = past  # rounded to the storage dtype (fp16) as the library stores rows
            caches.append(buf)
        outs = [np.empty(self._shape(n, syms), self.specs[n][0]) for n in self.meta["outputs"]]
        self._call(syms, [arrays[n] for n in self.meta["inputs"]], outs, caches, cap)
        result = dict(zip(self.meta["outputs"], outs))
        for c, buf in zip(self.meta["caches"], caches):
            result[c["present"]] = buf.astype(self.specs[c["present"]][0], copy=False)
        return {n: result[n] for n in self.output_names}

    def sequence(self, capacity: int):
        return CSequence(self, capacity)


class CSequence:
    """A generation's KV cache of `capacity` rows that the library appends to in place."""

    def __init__(self, ex: CExecutor, capacity: int):
        self.ex, self.capacity = ex, check_capacity(capacity)
        iface = ex.interface
        bound = {c["past"] for c in ex.meta["caches"]}
        others = [n for n in ex.meta["inputs"] if n not in (iface.tokens, iface.positions, iface.logits_rows)]
        if others or {p.past.name for p in iface.cache} - bound:
            # a cache the code generator did not bind in place: feed it back through run()
            from edgec.executor import ForwardSequence

            self._fallback = ForwardSequence(ex, capacity)
        else:
            self._fallback = None
        self.caches = []  # cache[i] of ec_graph_run, each [1, heads, capacity, dim] in its storage dtype
        for c in ex.meta["caches"]:
            shape = ex.specs[c["past"]][1]
            self.caches.append(np.zeros((shape[0], shape[1], self.capacity, shape[3]), c["dtype"]))
        self.length = 0

    @property
    def cache_bytes(self) -> int:
        """The KV cache's memory: what edgec_cache_bytes says for a C context of this capacity."""
        return sum(a.nbytes for a in self.caches)

    def reset(self) -> None:
        self.length = 0
        if self._fallback is not None:
            self._fallback.reset()

    def run(self, ids, last_only: bool = False) -> np.ndarray:
        if self._fallback is not None:
            out = self._fallback.run(ids, last_only)
            self.length = self._fallback.length
            return out
        n = len(ids)
        check_fits(self, n)
        ex, iface = self.ex, self.ex.interface
        feeds = {iface.tokens: np.asarray([ids], np.int64),
                 iface.positions: np.arange(self.length, self.length + n, dtype=np.int64)[None]}
        if iface.logits_rows:
            feeds[iface.logits_rows] = np.array([1 if last_only else n], np.int64)
        shapes = {name: feeds[name].shape for name in ex.meta["inputs"]}
        for c in ex.meta["caches"]:
            shape = ex.specs[c["past"]][1]
            shapes[c["past"]] = (shape[0], shape[1], self.length, shape[3])
        syms = ex._bind({**shapes}, {iface.logits_rows: feeds[iface.logits_rows][0]} if iface.logits_rows else {})
        outs = [np.empty(ex._shape(name, syms), ex.specs[name][0]) for name in ex.meta["outputs"]]
        ex._call(syms, [feeds[name] for name in ex.meta["inputs"]], outs, self.caches, self.capacity)
        self.length += n
        logits = outs[ex.meta["outputs"].index(iface.logits)][0]
        return logits[-1:] if last_only else logits


def _cache_entries(caches: list, signature: dict) -> list[dict]:
    """c.json's caches as {past, present, dtype} per cache tensor; artifacts from before the fp16 and int8
    forms list {past_key, past_value, present_key, present_value} per layer, all float32 as stored."""
    dtypes = {s["name"]: s["dtype"] for s in signature["inputs"]}
    out = []
    for c in caches:
        if "past" in c:
            out.append({"past": c["past"], "present": c["present"], "dtype": c.get("dtype") or dtypes[c["past"]]})
            continue
        for side in ("key", "value"):
            out.append({"past": c[f"past_{side}"], "present": c[f"present_{side}"], "dtype": dtypes[c[f"past_{side}"]]})
    return out
