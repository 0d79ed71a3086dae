"""Speed of the C runtime's linear kernels (targets/c/runtime/linear.c), GEMV M=1, one thread.

    python benchmarks/c_kernels.py [--reps 300] [--rounds 5] [--flags "-O3 -march=native"] [--no-ort] [--no-callgrind]
                                   [--cg-flags "-mavx2 -mfma -mf16c"] [--no-prefill] [--only SUBSTRING]

For SmolLM2-135M's shapes and the formats the recipes use, prints per call: microseconds
(median of `reps` timed calls, the median over `rounds` interleaved rounds), GB/s of weight bytes
read, and onnxruntime's MatMulNBits (com.microsoft, accuracy_level 4, one thread) on the same
shape and format, timed in the same rounds: ORT's per-node time is (t(R nodes) - t(1 node)) /
(R - 1) for one session running R MatMulNBits nodes that share the weight, so Python and
session overhead cancel. valgrind --tool=callgrind counts instructions per call (11 calls minus
1 call, / 10) where valgrind is installed, of a build with --cg-flags (valgrind has no AVX-512, so
by default the AVX2 path). Prefill rows (M = 64, 256: the panel kernels) give GFLOP/s (2 M N K per
call, activation quantization included), the cost per activation row relative to the GEMV (M = 1)
of the same shape and format, and MatMulNBits on the same M rows (one thread) for the 4-bit formats. Returns the rows (list of dicts) from main(); writes
nothing but its temporary build folder.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgec.ir import quant  # noqa: E402

RUNTIME = ROOT / "targets" / "c" / "runtime"
f32 = np.float32

HARNESS = r"""
#define _POSIX_C_SOURCE 200809L
#define _ISOC11_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <stdio.h>
#include "linear.h"

static double now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

/* kind 0 f32, 1 f16, 2 q exact, 3 q int8 (ec_quantize_act included); returns the median ns */
static void call(int kind, const float *x, int M, int K, const void *w, const ec_qweight *q, float *y, int N, void *xq) {
    switch (kind) {
    case 0: ec_linear_f32(x, M, K, (const float *)w, NULL, y, N, 0, N); break;
    case 1: ec_linear_f16(x, M, K, (const uint16_t *)w, NULL, y, N, 0, N); break;
    case 2: ec_linear_q(x, M, q, NULL, y, N, 0, N); break;
    default: ec_quantize_act(x, M, K, xq); ec_linear_q_i8(xq, M, q, NULL, y, N, 0, N); break;
    }
}

double ec_bench(int kind, const float *x, int M, int K, const void *w, const ec_qweight *q, float *y, int N, int reps) {
    void *xq = aligned_alloc(64, (ec_act_size(M, K) + 63) / 64 * 64);
    double *t = malloc(sizeof(double) * (size_t)reps);
    for (int i = 0; i < 5; i++) call(kind, x, M, K, w, q, y, N, xq);
    for (int i = 0; i < reps; i++) {
        double t0 = now_ns();
        call(kind, x, M, K, w, q, y, N, xq);
        t[i] = now_ns() - t0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp);
    double med = t[reps / 2];
    free(t); free(xq);
    return med;
}

#ifdef EC_BENCH_MAIN
/* callgrind: bench_main bits group sym mins K N calls  (random codes; counts do not depend on values) */
int main(int argc, char **argv) {
    if (argc < 8) return 2;
    int bits = atoi(argv[1]), g = atoi(argv[2]), sym = atoi(argv[3]), mins = atoi(argv[4]);
    int K = atoi(argv[5]), N = atoi(argv[6]), calls = atoi(argv[7]);
    int kp = (K + g - 1) / g * g, G = kp / g;
    size_t rb = (size_t)kp * bits / 8;
    uint8_t *packed = malloc(rb * N), *zeros = malloc((size_t)N * G);
    float *scales = malloc(sizeof(float) * N * G), *mn = mins ? malloc(sizeof(float) * N * G) : NULL;
    float *x = malloc(sizeof(float) * K), *y = malloc(sizeof(float) * N);
    unsigned s = 1;
    for (size_t i = 0; i < rb * N; i++) { s = s * 1103515245u + 12345u; packed[i] = (uint8_t)(s >> 16); }
    for (int i = 0; i < N * G; i++) { scales[i] = 0.01f; zeros[i] = sym ? (uint8_t)(1 << (bits - 1)) : 3; if (mn) mn[i] = 0.1f; }
    for (int i = 0; i < K; i++) { s = s * 1103515245u + 12345u; x[i] = (float)((int)(s >> 16) % 2001 - 1000) / 1000.f; }
    ec_qweight q = {bits, g, K, kp, G, packed, scales, zeros, mn};
    void *xq = aligned_alloc(64, (ec_act_size(1, K) + 63) / 64 * 64);
    for (int i = 0; i < calls; i++) { ec_quantize_act(x, 1, K, xq); ec_linear_q_i8(xq, 1, &q, NULL, y, N, 0, N); }
    printf("%g\n", y[0]);
    return 0;
}
#endif
"""

# (name, K, N); the head is int8 only
SHAPES = [("mlp up/gate", 576, 1536), ("mlp down", 1536, 576), ("qkv", 576, 960)]
HEAD = ("head", 576, 49152)
# (label, bits, group, symmetric, mins, ORT block or None)
FORMATS = [("int4 g128 sym", 4, 128, True, False, 128), ("int4 g128 asym", 4, 128, False, False, 128),
           ("int4 g32 asym+mins (Q4_1)", 4, 32, False, True, 32), ("int4 g32 sym (Q4_0)", 4, 32, True, False, 32),
           ("int8 per-channel", 8, 0, True, False, None), ("int8 g32 (Q8_0)", 8, 32, True, False, None)]


def build(tmp: Path, flags: list[str], cg_flags: list[str]):
    src = tmp / "bench.c"
    src.write_text(HARNESS)
    so = tmp / "libbench.so"
    cmd = ["gcc", "-std=c11", "-O3", *flags, "-fPIC", "-shared", f"-I{RUNTIME}", str(src), str(RUNTIME / "linear.c"),
           "-o", str(so), "-lm"]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(so))
    lib.ec_bench.restype = ctypes.c_double
    lib.ec_bench.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ec_linear_path.restype = ctypes.c_char_p
    exe = None
    if shutil.which("valgrind"):
        exe = tmp / "bench_main"
        subprocess.run(["gcc", "-std=c11", "-O3", *cg_flags, "-DEC_BENCH_MAIN", f"-I{RUNTIME}", str(src),
                        str(RUNTIME / "linear.c"), "-o", str(exe), "-lm"], check=True)
    return lib, exe


class QW(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_int), ("group", ctypes.c_int), ("k", ctypes.c_int), ("kp", ctypes.c_int),
                ("groups", ctypes.c_int), ("packed", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("zeros", ctypes.c_void_p), ("mins", ctypes.c_void_p)]


def make_q(rng, n, k, bits, group, sym, mins):
    w = rng.standard_normal((n, k)).astype(f32) * 0.05
    packed, scales, zeros = quant.quantize_rtn(w, quant.QuantSpec(bits, group, sym))
    lay = quant.PackedLayout.of(bits, group, k)
    m = (rng.standard_normal(scales.shape) * 0.01).astype(f32) if mins else None
    arrays = dict(packed=packed, scales=scales, zeros=zeros, mins=m)
    c = QW(bits, lay.group, k, lay.kp, lay.groups, packed.ctypes.data, scales.ctypes.data, zeros.ctypes.data,
           None if m is None else m.ctypes.data)
    nbytes = sum(a.nbytes for a in arrays.values() if a is not None)
    return c, arrays, lay, nbytes


# ----------------------------------------------------------------------------- onnxruntime
def ort_session(k, n, bits, block, arrays, lay, nodes, m=1):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nb = -(-k // block)
    b = arrays["packed"].reshape(n, nb, block * bits // 8)
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(arrays["scales"].reshape(-1), "S")]
    ins = ["A", "B", "S"]
    if not (bits == 4 and np.all(arrays["zeros"] == 8)) and not (bits == 8 and np.all(arrays["zeros"] == 128)):
        z = arrays["zeros"]
        if bits == 4:
            zp = np.zeros((n, -(-nb // 2)), np.uint8)
            zp[:, : (nb + 1) // 2] = z[:, 0::2]
            zp[:, : nb // 2] |= z[:, 1::2] << 4
        else:
            zp = z
        inits.append(numpy_helper.from_array(zp.reshape(-1), "Z"))
        ins.append("Z")
    out = [f"Y{i}" for i in range(nodes)]
    graph = helper.make_graph(
        [helper.make_node("MatMulNBits", ins, [o], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block,
                          accuracy_level=4) for o in out],
        "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [m, n]) for o in out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_time(s1, sr, nodes, x, reps):
    feed = {"A": x}

    def med(s, r):
        for _ in range(3):
            s.run(None, feed)
        t = []
        for _ in range(r):
            t0 = time.perf_counter_ns()
            s.run(None, feed)
            t.append(time.perf_counter_ns() - t0)
        return float(np.median(t))

    return (med(sr, max(reps // nodes, 15)) - med(s1, reps)) / (nodes - 1)


# ----------------------------------------------------------------------------- callgrind
def callgrind_ir(exe, tmp, bits, group, sym, mins, k, n):
    counts = []
    for calls in (1, 11):
        out = tmp / f"cg.{bits}.{group}.{calls}"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(exe), str(bits),
                        str(quant.effective_group(group, k)), str(int(sym)), str(int(mins)), str(k), str(n), str(calls)],
                       check=True, capture_output=True)
        m = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(), re.M)
        counts.append(int(m.group(1)))
    return (counts[1] - counts[0]) / 10


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--flags", default="-march=native", help="compiler flags selecting the SIMD path")
    ap.add_argument("--ort-nodes", type=int, default=20)
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--cg-flags", default="-mavx2 -mfma -mf16c", help="flags of the callgrind build (no AVX-512)")
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--only", default="", help="only the rows whose format contains this")
    ap.add_argument("--quick", action="store_true", help="one shape, fewer reps (a smoke run)")
    args = ap.parse_args(argv)
    try:
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    except (AttributeError, OSError):
        pass
    tmp = Path(tempfile.mkdtemp(prefix="ec_bench_"))
    lib, exe = build(tmp, args.flags.split(), args.cg_flags.split())
    path = lib.ec_linear_path().decode()
    print(f"path {path}, flags {args.flags}, one thread, median of {args.reps} calls x {args.rounds} rounds")
    rng = np.random.default_rng(0)
    jobs = []  # (shape, label, kind, setup, M)
    shapes = SHAPES[:1] if args.quick else SHAPES
    for name, k, n in shapes:
        for label, bits, group, sym, mins, block in FORMATS:
            jobs.append(((name, k, n), label, 3, (bits, group, sym, mins, block), 1))
        jobs.append(((name, k, n), "fp32", 0, None, 1))
        jobs.append(((name, k, n), "fp16", 1, None, 1))
        jobs.append(((name, k, n), "int4 g128 sym exact (fp32 dequant)", 2, (4, 128, True, False, None), 1))
    if not args.quick:
        jobs.append((HEAD, "int8 per-channel", 3, (8, 0, True, False, None), 1))
        jobs.append((HEAD, "int4 g128 sym", 3, (4, 128, True, False, 128), 1))
    if not args.no_prefill:
        for m in (64, 256):
            for label, bits, group, sym, mins, block in (FORMATS[0], FORMATS[2], FORMATS[3], FORMATS[4]):
                jobs.append((SHAPES[0], label, 3, (bits, group, sym, mins, block), m))
    if args.only:
        jobs = [j for j in jobs if args.only in j[1]]
    reps = 60 if args.quick else args.reps
    rows = []
    gemv = {}  # (shape, format) -> us at M = 1
    for (name, k, n), label, kind, setup, M in jobs:
        x = rng.standard_normal((M, k)).astype(f32)
        y = np.empty((M, n), f32)
        keep, qc, ort_pair = {}, None, None
        if kind == 0:
            w = (rng.standard_normal((n, k)) * 0.05).astype(f32)
            wptr, nbytes = w.ctypes.data, w.nbytes
        elif kind == 1:
            w = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
            wptr, nbytes = w.ctypes.data, w.nbytes
        else:
            bits, group, sym, mins, block = setup
            qc, keep, lay, nbytes = make_q(rng, n, k, bits, group, sym, mins)
            wptr = None
            if block and not args.no_ort and kind == 3:
                try:
                    ort_pair = (ort_session(k, n, bits, block, keep, lay, 1, M),
                                ort_session(k, n, bits, block, keep, lay, args.ort_nodes, M))
                except Exception as e:  # noqa: BLE001 - an ORT build without the kernel
                    print(f"  (onnxruntime MatMulNBits unavailable: {e})")
        reps_here = max(20, reps // 10) if n * M > 10000 else reps
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(lib.ec_bench(kind, x.ctypes.data, M, k, wptr, None if qc is None else ctypes.byref(qc),
                                     y.ctypes.data, n, reps_here))
            if ort_pair:
                theirs.append(ort_time(*ort_pair, args.ort_nodes, x, reps_here))
        us = float(np.median(ours)) / 1e3
        row = dict(shape=name, K=k, N=n, M=M, format=label, us=us, gbs=nbytes / (us * 1e3), weight_bytes=nbytes,
                   gflops=2.0 * M * n * k / (us * 1e3))
        if M == 1:
            gemv[(name, label)] = us
        if ort_pair:
            # sanity: the same weights give the same product
            ref = ort_pair[0].run(None, {"A": x})[0]
            lib.ec_bench(kind, x.ctypes.data, M, k, wptr, ctypes.byref(qc), y.ctypes.data, n, 1)
            row["ort_rel_diff"] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
            row["ort_us"] = float(np.median(theirs)) / 1e3
            row["ratio"] = row["ort_us"] / us
        if exe and not args.no_callgrind and kind == 3 and M == 1:
            try:
                row["instr"] = callgrind_ir(exe, tmp, *setup[:4], k, n)
            except subprocess.CalledProcessError as e:
                print(f"  (callgrind failed: {e})")
        rows.append(row)
        extra = ""
        if "ort_us" in row:
            extra = f"  ORT {row['ort_us']:8.1f} us  ours/ORT speed {row['ratio']:.2f}x (diff {row['ort_rel_diff']:.1e})"
        if "instr" in row:
            extra += f"  {row['instr'] / 1e3:.1f}k instr/call"
        if M > 1:
            extra = f"  {row['gflops']:6.1f} GFLOP/s"
            if "ort_us" in row:
                extra += f"  ORT {2.0 * M * n * k / (row['ort_us'] * 1e3):6.1f} GFLOP/s  ours/ORT speed {row['ratio']:.2f}x"
            if (name, label) in gemv:
                row["per_row_vs_gemv"] = us / (M * gemv[(name, label)])
                extra += f"  per-row cost {row['per_row_vs_gemv']:.2f}x the GEMV's"
            label = f"{label} M={M}"
        print(f"{name:12s} K={k:5d} N={n:6d} {label:36s} {us:9.1f} us {row['gbs']:6.1f} GB/s{extra}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
