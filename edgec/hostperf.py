"""This machine's roofline, measured once and cached: memory bandwidth, peak compute, and what one
node costs the ONNX runtime to dispatch.

A device profile's figures for a board that is not here come from its datasheet; for the machine
edgec runs on they are measured, as the Empirical Roofline Toolkit does, with the kernels at hand:

- bandwidth: a streaming read (numpy sums, one slice per thread, the GIL released) of a buffer
  larger than the last-level cache, best of 5;
- fp32 peak: a 2048x2048 matrix product (numpy's BLAS), best of 5;
- int8 peak: onnxruntime's MatMulInteger (MLAS's u8 x s8 kernels, VNNI or SDOT where present) on
  256x2048x2048, best of 5: the integer dot products the quantized linears use;
- dispatch: onnxruntime's time per node of a chain of 256 tiny Adds, on the threads the runtime
  uses, minus nothing: the per-node cost a decode step pays ~700 times.

Measured figures are achievable ones (what these kernels reach), so the roofline of `edgec profile`
is a roof this machine can touch; the datasheet peaks of other devices are theoretical.
Results are cached in the cache folder (edgec.cache), keyed by CPU model, core count and threads.
"""
from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .cache import cache_dir

FORMAT = 1
_ROUNDS = 5


@dataclass
class HostFigures:
    bandwidth_gbs: float
    peak_fp32_gflops: float
    peak_int8_gops: float
    dispatch_us: dict[str, float]  # per node, by backend
    threads: int
    cpu: str
    measured_at: str
    methods: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best(fn, rounds: int = _ROUNDS) -> float:
    fn()  # warm-up: page faults, thread start
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(threads: int, size: int | None = None) -> float:
    """GB/s of a streaming read over a buffer larger than the caches (1 GiB, or less on a small machine)."""
    if size is None:
        try:
            import psutil
            avail = psutil.virtual_memory().available
        except ImportError:
            avail = 8 << 30
        size = int(min(1 << 30, max(64 << 20, avail // 8)))
    data = np.ones(size // 4, np.float32)
    chunks = np.array_split(data, max(1, threads))

    def read():
        workers = [threading.Thread(target=c.sum) for c in chunks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return data.nbytes / _best(read) / 1e9


def measure_fp32_gflops() -> float:
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    return 2 * 2048**3 / _best(lambda: a @ a) / 1e9


def _session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def measure_int8_gops(threads: int) -> float:
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 256, 2048, 2048
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "int8",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], [w])
    sess = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), threads)
    a = rng.integers(0, 255, (m, k), dtype=np.uint8)
    return 2 * m * k * n / _best(lambda: sess.run(None, {"a": a})) / 1e9


def measure_onnx_dispatch_us(threads: int, nodes: int = 256) -> float:
    """Microseconds per node of onnxruntime running a chain of tiny Adds (its per-node cost)."""
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.ones((1, 64), np.float32), "one")
    chain = [helper.make_node("Add", [f"x{i}", "one"], [f"x{i + 1}"]) for i in range(nodes)]
    graph = helper.make_graph(chain, "chain", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info(f"x{nodes}", TensorProto.FLOAT, [1, 64])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 64), np.float32)
    runs = 50
    return _best(lambda: [sess.run(None, {"x0": x}) for _ in range(runs)]) / runs / nodes * 1e6


def _key(threads: int) -> str:
    return f"{_cpu_model()}|{os.cpu_count()}|{threads}|{FORMAT}"


def _cache_path() -> Path:
    return cache_dir("host") / "roofline.json"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_figures(threads: int | None = None) -> HostFigures | None:
    """The figures measured earlier for `threads` (default: every CPU), or None: never measures."""
    from .limits import available_cpus, useful_threads

    entry = _read_cache().get(_key(useful_threads(threads) or available_cpus()))
    try:
        return HostFigures(**entry) if isinstance(entry, dict) else None
    except TypeError:
        return None


def host_figures(threads: int | None = None, *, refresh: bool = False,
                 progress=None) -> HostFigures:
    """The measured figures for `threads` threads (default: the CPUs this process may use), from the
    cache unless refresh; measuring takes a few seconds."""
    from .limits import available_cpus, useful_threads

    threads = useful_threads(threads) or available_cpus()
    path = _cache_path()
    found = None if refresh else cached_figures(threads)
    if found is not None:
        return found
    cached = _read_cache()
    key = _key(threads)
    if progress:
        progress(f"measuring this machine's bandwidth and peak compute on {threads} threads (once; cached in {path})")
    figures = HostFigures(
        bandwidth_gbs=round(measure_bandwidth(threads), 2),
        peak_fp32_gflops=round(measure_fp32_gflops(), 1),
        peak_int8_gops=round(measure_int8_gops(threads), 1),
        dispatch_us={"onnx": round(measure_onnx_dispatch_us(threads), 3)},
        threads=threads, cpu=_cpu_model(),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        methods={"bandwidth_gbs": f"numpy streaming read of a buffer beyond the caches, {threads} threads, best of 5",
                 "peak_fp32_gflops": "numpy (BLAS) 2048x2048 fp32 matrix product, best of 5",
                 "peak_int8_gops": f"onnxruntime MatMulInteger u8 x s8 256x2048x2048, {threads} threads, best of 5",
                 "dispatch_us": "onnxruntime: per node of a 256-node chain of [1,64] Adds"})
    cached[key] = figures.to_dict()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cached, indent=1))
    os.replace(tmp, path)
    return figures
