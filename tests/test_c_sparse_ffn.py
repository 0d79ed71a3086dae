"""targets/c/runtime/sparse_ffn.c: the sparse decode FFN kernels against numpy and edgec.ir.quant.

Every case is one or more kernel calls plus a check of their results. The native builds (AVX2, AVX2 without
F16C, AVX-512 and -DEC_SCALAR, as in test_c_kernels.py) run them through ctypes; the aarch64 builds (NEON
with and without dotprod) run all of them in one qemu-aarch64 call of tests/c/sparse_main.c on files.

The reference is the dense gated FFN in float64 over the dequantized weights, restricted to the active set:
y = sum_{j in S} act(Wg x)_j (Wu x)_j Wd[:, j], with Wd stored transposed (neuron rows).
"""
from __future__ import annotations

import ctypes
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_c_kernels import ARM_VARIANTS, CFLAGS, CPU_NEEDS, QW, VARIANTS, _cpu_has, _ptr, make_qweight

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "targets" / "c" / "runtime"
DRIVER = Path(__file__).parent / "c" / "sparse_main.c"
SOURCES = [RUNTIME / "sparse_ffn.c", RUNTIME / "linear.c", RUNTIME / "ec_rt.c"]
NATIVE = {**VARIANTS, "avx2-nof16c": (["-mavx2", "-mfma"], "avx2")}  # halves through the scalar loop
NATIVE_NEEDS = {**CPU_NEEDS, "avx2-nof16c": ("avx2", "fma")}
ARM = {k: ARM_VARIANTS[k] for k in ("a76", "armv8")}
f32 = np.float32


def _act_codes() -> dict[str, int]:
    """EC_SILU & co. from ec_rt.h's unary-op enum (implicit values)."""
    body = re.search(r"enum\s*\{([^}]*\bEC_SILU\b[^}]*)\}", (RUNTIME / "ec_rt.h").read_text()).group(1)
    names = [n.strip() for n in body.split(",") if n.strip()]
    assert all("=" not in n for n in names), names
    return {n: i for i, n in enumerate(names)}


ACT = _act_codes()
SQRT_2_PI = math.sqrt(2 / math.pi)
_erf = np.vectorize(math.erf)
ACT_REF = {  # float64 references; C computes in float32
    "silu": lambda g: g / (1 + np.exp(-g)),
    "gelu": lambda g: 0.5 * g * (1 + _erf(g / math.sqrt(2))),
    "gelu_tanh": lambda g: 0.5 * g * (1 + np.tanh(SQRT_2_PI * (g + 0.044715 * g ** 3))),
    "relu": lambda g: np.maximum(g, 0),
}
ACT_CODE = {"silu": ACT["EC_SILU"], "gelu": ACT["EC_GELU"], "gelu_tanh": ACT["EC_GELU_TANH"], "relu": ACT["EC_RELU"]}

# name -> (bits, group, symmetric, mins); "f16": IEEE halves. The SIMD paths take 4- and 8-bit with g % 8 == 0
# (32-code runs, then 8-code runs, then a scalar tail past the last multiple of 8); the rest the scalar loops.
FORMATS = {
    "q4g32s": (4, 32, True, False), "q4g32a": (4, 32, False, False), "q4g32m": (4, 32, False, True),
    "q4g128": (4, 128, True, False), "q4g16": (4, 16, False, False), "q4g0": (4, 0, True, False),
    "q4g20": (4, 20, True, False), "q8g0": (8, 0, True, False), "q8g32": (8, 32, False, False),
    "q8g32s": (8, 32, True, False), "q8g64m": (8, 64, False, True), "q5g32": (5, 32, False, False),
    "q6g16": (6, 16, True, False), "q3g64": (3, 64, False, False), "q2g32": (2, 32, False, True), "f16": None,
}


# ----------------------------------------------------------------------------- weights
class F16W:
    """IEEE-half rows [n, k]."""

    def __init__(self, rng, n, k):
        self.n, self.k = n, k
        self.half = np.ascontiguousarray(rng.standard_normal((n, k)).astype(np.float16))
        self.bits16 = self.half.view(np.uint16)
        self.w = self.half.astype(f32)


def make_weight(rng, fmt, n, k):
    if fmt == "f16":
        return F16W(rng, n, k)
    bits, g, sym, mins = FORMATS[fmt]
    return make_qweight(rng, n, k, bits, g, sym, mins)


def is_f16(w) -> bool:
    return isinstance(w, F16W)


# ----------------------------------------------------------------------------- references
def ffn_reference(ws, x, act, rows):
    """(y, tolerance scale, h, a) in float64 for the neurons `rows` (in list order)."""
    gate, up, down = (w.w.astype(np.float64) for w in ws)
    xd = x.astype(np.float64)
    rows = np.asarray(rows, np.int64)
    g, u = gate[rows] @ xd, up[rows] @ xd
    a = ACT_REF[act](g)
    h = a * u
    gs, us = np.abs(gate[rows]) @ np.abs(xd), np.abs(up[rows]) @ np.abs(xd)
    # h's error: act' (<= 1.2 for these) times g's, a times u's, and its own rounding
    hs = np.abs(a) * us + 1.2 * np.abs(u) * gs + np.abs(h)
    return down[rows].T @ h, np.abs(down[rows]).T @ hs, h, a


def check_close(got, want, scale, rtol, what):
    tol = rtol * scale + 1e-30
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(np.isfinite(got)), f"{what}: not finite"
    assert np.all(err <= tol), f"{what}: max error {err.max():.3g}, worst ratio {(err / tol).max():.3g} of the tolerance"
    return tol


def check_ffn_y(y, ws, x, act, rows, what, rtol=1e-4):
    """y against the reference for `rows`; and the tolerance is tight enough to see one neuron too few
    (or the rest of the neurons too many)."""
    d = ws[0].k
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        assert np.array_equal(y, np.zeros(d, f32)), f"{what}: no active neuron, y must be 0"
        return
    want, scale, h, _ = ffn_reference(ws, x, act, rows)
    tol = check_close(y, want, scale, rtol, what)
    j = int(np.argmax(np.abs(h) * np.abs(ws[2].w[rows]).max(1)))
    one = h[j] * ws[2].w[rows[j]].astype(np.float64)
    if np.abs(one).max() > 0:
        assert (np.abs(one) / tol).max() > 2, f"{what}: the check cannot tell one neuron's contribution"
    inter = ws[0].n
    if rows.size < inter:
        dense, _, _, _ = ffn_reference(ws, x, act, np.arange(inter))
        assert (np.abs(dense - want) / tol).max() > 10, f"{what}: the check cannot tell the dense result"


# ----------------------------------------------------------------------------- cases
# A case: (name, [call, ...], check(results)). Calls:
#   ("dot", w, x, rows)                      -> out [len(rows)]
#   ("axpy", w, h, rows, y0, c0, c1)        -> y [k]
#   ("ffn", (gate, up, down_t), x, act, rows or None, threshold, threads)  -> (count, y, selected or None)
# threads: 0 = no pool (NULL), else a pool of that many threads.
def dot_cases(fmts, dims, seed=0):
    out = []
    for fi, fmt in enumerate(fmts):
        for d in dims:
            rng = np.random.default_rng([seed, fi, d])
            w = make_weight(rng, fmt, 48, d)
            x = rng.standard_normal(d).astype(f32)
            x[5:40] *= 1e-3  # terms of very different magnitudes
            for rows in (rng.permutation(48)[:17], np.array([47, 0, 47, 3]), np.arange(48), np.array([], np.int64)):
                rows = rows.astype(np.int32)

                def check(res, w=w, x=x, rows=rows, what=f"dot {fmt} d{d} n{rows.size}"):
                    (out,) = res
                    wr = w.w[rows].astype(np.float64)
                    check_close(out, wr @ x, np.abs(wr) @ np.abs(x), 1e-5, what)

                out.append((f"dot-{fmt}-{d}-{rows.size}", [("dot", w, x, rows)], check))
    return out


def axpy_cases(fmts, dims, seed=1):
    out = []
    for fi, fmt in enumerate(fmts):
        for d in dims:
            rng = np.random.default_rng([seed, fi, d])
            w = make_weight(rng, fmt, 40, d)
            rows = rng.permutation(40)[:23].astype(np.int32)  # 5 passes of 4 rows and 3 single rows
            h = rng.standard_normal(23).astype(f32)
            h[3] = 0
            y0 = rng.standard_normal(d).astype(f32)
            cuts = [0, 8, 64, 96, d] if d > 96 else [0, 8, d]  # pieces starting on multiples of 8
            calls = [("axpy", w, h, rows, y0, 0, d)]
            calls += [("axpy", w, h, rows, y0, a, b) for a, b in zip(cuts, cuts[1:])]
            calls.append(("axpy", w, h[:1], rows[:1], y0, 0, d))
            calls.append(("axpy", w, h[:0], rows[:0], y0, 0, d))

            def check(res, w=w, h=h, rows=rows, y0=y0, cuts=cuts, what=f"axpy {fmt} d{d}"):
                wr = w.w[rows].astype(np.float64)
                want = y0 + h @ wr
                check_close(res[0], want, np.abs(y0) + np.abs(h) @ np.abs(wr), 1e-5, what)
                pieced = y0.copy()
                for (a, b), y in zip(zip(cuts, cuts[1:]), res[1:]):
                    assert np.array_equal(y[:a].view(np.uint32), y0[:a].view(np.uint32)), f"{what}: columns < {a} touched"
                    assert np.array_equal(y[b:].view(np.uint32), y0[b:].view(np.uint32)), f"{what}: columns >= {b} touched"
                    pieced[a:b] = y[a:b]
                assert np.array_equal(pieced.view(np.uint32), res[0].view(np.uint32)), f"{what}: pieces differ from one call"
                one = y0 + h[0] * w.w[rows[0]].astype(np.float64)
                check_close(res[-2], one, np.abs(y0) + np.abs(h[0] * w.w[rows[0]]), 1e-5, f"{what} one row")
                assert np.array_equal(res[-1].view(np.uint32), y0.view(np.uint32)), f"{what}: no row, y must not change"

            out.append((f"axpy-{fmt}-{d}", calls, check))
    return out


def make_ffn(rng, fmts, d, inter):
    ws = tuple(make_weight(rng, f, inter, d) for f in fmts)
    x = (rng.standard_normal(d) / math.sqrt(d)).astype(f32)  # gate pre-activations of order 1
    return ws, x


def ffn_cases(fmts, d=202, inter=96, seed=2, threads=(0, 2), acts=("silu", "gelu", "gelu_tanh")):
    """Explicit lists: empty, one neuron, 30% (shuffled), all; each single-threaded and on a pool (bit for bit)."""
    out = []
    for fi, fmt in enumerate(fmts):
        rng = np.random.default_rng([seed, fi])
        ws, x = make_ffn(rng, (fmt,) * 3 if isinstance(fmt, str) else fmt, d, inter)
        act = acts[fi % len(acts)]
        sets = {"empty": np.array([], np.int32), "one": np.array([rng.integers(inter)], np.int32),
                "30pct": rng.permutation(inter)[: int(0.3 * inter)].astype(np.int32), "all": np.arange(inter, dtype=np.int32)}
        for sname, rows in sets.items():
            calls = [("ffn", ws, x, act, rows, 0.0, t) for t in threads]

            def check(res, ws=ws, x=x, act=act, rows=rows, what=f"ffn {fmt} {act} {sname}"):
                for (cnt, y, sel), t in zip(res, threads):
                    assert cnt == rows.size and sel is None, what
                    assert np.array_equal(y.view(np.uint32), res[0][1].view(np.uint32)), f"{what}: {t} threads differ"
                check_ffn_y(res[0][1], ws, x, act, rows, what)

            out.append((f"ffn-{fmt}-{sname}", calls, check))
    return out


def gap_threshold(absa, frac):
    """A threshold between two |act(g)| values near the `frac` quantile with a clear gap (so float32
    rounding cannot move a neuron across it)."""
    s = np.sort(absa)
    n = s.size
    lo, hi = max(0, int(n * frac) - n // 10), min(n - 1, int(n * frac) + n // 10)
    i = lo + int(np.argmax(s[lo + 1: hi + 1] - s[lo:hi]))
    assert s[i + 1] - s[i] > 1e-3 * s[-1], "no clear gap"
    return float((s[i] + s[i + 1]) / 2)


def cats_cases(fmts, d=202, inter=96, seed=3, threads=2):
    """CATS (threshold) form: selects exactly {j : |act(g_j)| > t} ascending, reports it, and gives the y of the
    explicit form for that list bit for bit; at 0/50/90% sparsity, and -1 (every neuron)."""
    out = []
    for fi, fmt in enumerate(fmts):
        rng = np.random.default_rng([seed, fi])
        ws, x = make_ffn(rng, (fmt,) * 3, d, inter)
        act = ("silu", "gelu")[fi % 2]
        absa = np.abs(ACT_REF[act](ws[0].w.astype(np.float64) @ x.astype(np.float64)))
        for frac in (0.5, 0.9, None):
            t = -1.0 if frac is None else gap_threshold(absa, frac)
            want = np.flatnonzero(absa > t).astype(np.int32)
            assert 0 < want.size <= inter and (frac is None) == (want.size == inter)
            calls = [("ffn", ws, x, act, None, t, 0), ("ffn", ws, x, act, None, t, threads), ("ffn", ws, x, act, want, 0.0, 0)]

            def check(res, ws=ws, x=x, act=act, want=want, what=f"cats {fmt} {act} t={t:.4g}"):
                for cnt, y, sel in res[:2]:
                    assert cnt == want.size, f"{what}: {cnt} active, want {want.size}"
                    assert np.array_equal(sel, want), f"{what}: selected {sel[:8]}..., want {want[:8]}..."
                    assert np.array_equal(y.view(np.uint32), res[2][1].view(np.uint32)), f"{what}: differs from the explicit list"
                check_ffn_y(res[2][1], ws, x, act, want, what)

            out.append((f"cats-{fmt}-{frac}", calls, check))
    return out


def relu_dense_cases(fmts, d=202, inter=96, seed=4):
    """ReLU-style FFN, threshold 0: the neurons with g > 0, and y equal to the dense FFN over all neurons."""
    out = []
    for fi, fmt in enumerate(fmts):
        rng = np.random.default_rng([seed, fi])
        ws, x = make_ffn(rng, (fmt,) * 3, d, inter)
        g = ws[0].w.astype(np.float64) @ x.astype(np.float64)
        gs = np.abs(ws[0].w.astype(np.float64)) @ np.abs(x.astype(np.float64))
        sure = np.abs(g) > 1e-4 * gs  # neurons whose sign float32 rounding cannot flip

        def check(res, ws=ws, x=x, g=g, sure=sure, what=f"relu-dense {fmt}"):
            cnt, y, sel = res[0]
            assert 0 < cnt < ws[0].n, f"{what}: {cnt} active: not a sparse case"
            assert np.array_equal(np.isin(np.flatnonzero(sure), sel), g[sure] > 0), f"{what}: wrong selection"
            check_ffn_y(y, ws, x, "relu", np.arange(ws[0].n), what)  # the dense FFN: all neurons

        out.append((f"relu-{fmt}", [("ffn", ws, x, "relu", None, 0.0, 2)], check))
    return out


MIXED = [("q4g32s", "q8g0", "f16"), ("f16", "q4g32a", "q4g32m")]  # gate, up, down_t of different formats


def smollm_case(threads=2):
    """SmolLM2's shape (D=576, I=1536), int4 g32 (down quantized along D), 50% and 10% active."""
    rng = np.random.default_rng(5)
    ws, x = make_ffn(rng, ("q4g32s",) * 3, 576, 1536)
    out = []
    for frac in (0.5, 0.1):
        rows = np.sort(rng.permutation(1536)[: int(frac * 1536)]).astype(np.int32)

        def check(res, rows=rows, what=f"smollm {frac}"):
            assert res[0][0] == rows.size
            assert np.array_equal(res[0][1].view(np.uint32), res[1][1].view(np.uint32)), f"{what}: threads differ"
            check_ffn_y(res[0][1], ws, x, "silu", rows, what)

        out.append((f"smollm-{frac}", [("ffn", ws, x, "silu", rows, 0.0, threads), ("ffn", ws, x, "silu", rows, 0.0, 0)],
                    check))
    return out


ALL_FMTS = list(FORMATS)


# ----------------------------------------------------------------------------- native builds (ctypes)
class FR(ctypes.Structure):
    _fields_ = [("q", ctypes.c_void_p), ("f16", ctypes.c_void_p), ("k", ctypes.c_int)]


class FW(ctypes.Structure):
    _fields_ = [("d", ctypes.c_int), ("inter", ctypes.c_int), ("act", ctypes.c_int), ("gate", FR), ("up", FR),
                ("down_t", FR)]


def _rows_struct(w):
    if is_f16(w):
        return FR(None, _ptr(w.bits16), w.k)
    return FR(ctypes.cast(ctypes.pointer(w.c), ctypes.c_void_p), None, w.k)


class Lib:
    def __init__(self, path: Path):
        self.lib = lib = ctypes.CDLL(str(path))
        vp, i, qp = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(QW)
        lib.ec_rows_dot_q.argtypes = [vp, qp, vp, i, vp]
        lib.ec_rows_dot_f16.argtypes = [vp, vp, i, vp, i, vp]
        lib.ec_rows_axpy_q_cols.argtypes = [vp, qp, vp, i, vp, i, i]
        lib.ec_rows_axpy_f16_cols.argtypes = [vp, vp, i, vp, i, vp, i, i]
        lib.ec_rows_axpy_q.argtypes = [vp, qp, vp, i, vp]
        lib.ec_rows_axpy_f16.argtypes = [vp, vp, i, vp, i, vp]
        lib.ec_ffn_sparse.argtypes = [vp, ctypes.POINTER(FW), vp, vp, i, ctypes.c_float, vp, vp, vp]
        lib.ec_ffn_sparse.restype = i
        lib.ec_ffn_sparse_scratch.argtypes = [i]
        lib.ec_ffn_sparse_scratch.restype = ctypes.c_size_t
        lib.ec_pool_new.argtypes = [i]
        lib.ec_pool_new.restype = vp
        lib.ec_linear_path.restype = ctypes.c_char_p
        self.path = lib.ec_linear_path().decode()
        self.pools = {}

    def pool(self, threads):
        if threads == 0:
            return None
        if threads not in self.pools:
            self.pools[threads] = self.lib.ec_pool_new(threads)
        return self.pools[threads]

    def call(self, c):
        kind = c[0]
        if kind == "dot":
            _, w, x, rows = c
            out = np.full(rows.size + 1, 777.0, f32)  # + a sentinel
            rp = _ptr(np.ascontiguousarray(rows, np.int32))
            if is_f16(w):
                self.lib.ec_rows_dot_f16(_ptr(x), _ptr(w.bits16), w.k, rp, rows.size, _ptr(out))
            else:
                self.lib.ec_rows_dot_q(_ptr(x), ctypes.byref(w.c), rp, rows.size, _ptr(out))
            assert out[-1] == 777.0, "ec_rows_dot wrote past out[n]"
            return out[:-1]
        if kind == "axpy":
            _, w, h, rows, y0, c0, c1 = c
            y = y0.copy()
            rows = np.ascontiguousarray(rows, np.int32)
            if is_f16(w):
                self.lib.ec_rows_axpy_f16_cols(_ptr(h), _ptr(w.bits16), w.k, _ptr(rows), rows.size, _ptr(y), c0, c1)
            else:
                self.lib.ec_rows_axpy_q_cols(_ptr(h), ctypes.byref(w.c), _ptr(rows), rows.size, _ptr(y), c0, c1)
            return y
        _, ws, x, act, rows, t, threads = c
        d, inter = ws[0].k, ws[0].n
        fw = FW(d, inter, ACT_CODE[act], *(_rows_struct(w) for w in ws))
        y = np.full(d + 1, np.nan, f32)
        y[-1] = 555.0
        scratch = np.full(self.lib.ec_ffn_sparse_scratch(inter) // 4 + 1, np.nan, f32)
        sel = np.full(inter + 1, -7, np.int32)
        lst = None if rows is None else np.concatenate([rows, [-99]]).astype(np.int32)  # non-NULL when empty
        cnt = self.lib.ec_ffn_sparse(self.pool(threads), ctypes.byref(fw), _ptr(x), _ptr(lst),
                                     -1 if rows is None else rows.size, t, _ptr(sel), _ptr(scratch), _ptr(y))
        assert y[-1] == 555.0, "ec_ffn_sparse wrote past y[d]"
        if rows is not None:
            assert (sel == -7).all(), "an explicit list must not write `selected`"
            return cnt, y[:-1], None
        assert sel[cnt] == -7, "selected written past its count"
        return cnt, y[:-1], sel[:cnt]


def _compile(cc, flags, sources, out):
    cmd = [cc, *CFLAGS, *flags, f"-I{RUNTIME}", *map(str, sources), "-o", str(out), "-lm", "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return out


@pytest.fixture(scope="session")
def sparse_build_dir(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    return tmp_path_factory.mktemp("c_sparse")


@pytest.fixture(scope="session", params=list(NATIVE))
def slib(request, sparse_build_dir):
    name = request.param
    flags, path = NATIVE[name]
    so = _compile("gcc", [*flags, "-fPIC", "-shared"], SOURCES, sparse_build_dir / f"sparse_{name}.so")
    if not _cpu_has(NATIVE_NEEDS[name]):  # built (it compiles warning-free), not run
        pytest.skip(f"this CPU lacks {' / '.join(NATIVE_NEEDS[name])}")
    lib = Lib(so)
    assert lib.path == path
    return lib


def _run_native(lib, cases):
    for name, calls, check in cases:
        check([lib.call(c) for c in calls])


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_rows_dot(slib, fmt):
    """ec_rows_dot_*: gathered rows (shuffled, repeated, all, none) at D = 200 (a partial 32-code run),
    202 (a scalar tail), 576."""
    _run_native(slib, dot_cases([fmt], (200, 202, 576)))


@pytest.mark.parametrize("fmt", ALL_FMTS)
def test_rows_axpy(slib, fmt):
    """ec_rows_axpy_*_cols: += semantics, column ranges untouched outside, pieces equal to one call."""
    _run_native(slib, axpy_cases([fmt], (200, 202, 576)))


@pytest.mark.parametrize("fmt", ALL_FMTS + MIXED, ids=str)
def test_ffn_explicit(slib, fmt):
    _run_native(slib, ffn_cases([fmt]))


@pytest.mark.parametrize("fmt", ["q4g32s", "q4g32a", "q8g0", "q8g32", "q5g32", "f16"])
def test_ffn_threshold(slib, fmt):
    _run_native(slib, cats_cases([fmt]))


def test_ffn_relu_threshold_zero_is_dense(slib):
    _run_native(slib, relu_dense_cases(["q4g32s", "q8g32", "f16"]))


def test_ffn_smollm_shape(slib):
    _run_native(slib, smollm_case())


def test_full_wrappers(slib):
    """ec_rows_axpy_q / _f16 (no column range) cover [0, k)."""
    rng = np.random.default_rng(9)
    for fmt in ("q4g32s", "q5g32", "f16"):
        w = make_weight(rng, fmt, 12, 202)
        rows = np.array([3, 11, 0], np.int32)
        h = rng.standard_normal(3).astype(f32)
        y = np.zeros(202, f32)
        if is_f16(w):
            slib.lib.ec_rows_axpy_f16(_ptr(h), _ptr(w.bits16), 202, _ptr(rows), 3, _ptr(y))
        else:
            slib.lib.ec_rows_axpy_q(_ptr(h), ctypes.byref(w.c), _ptr(rows), 3, _ptr(y))
        wr = w.w[rows].astype(np.float64)
        check_close(y, h @ wr, np.abs(h) @ np.abs(wr), 1e-5, f"axpy {fmt}")


# ----------------------------------------------------------------------------- aarch64 under qemu
def _write_weight(f, w):
    if is_f16(w):
        f.write(struct.pack("<6i", 1, 0, 0, 0, 0, 0))
        f.write(w.bits16.tobytes())
        return
    f.write(struct.pack("<6i", 0, w.bits, w.lay.group, w.lay.kp, w.lay.groups, int(w.mins is not None)))
    for a in (w.packed, w.scales, w.zeros, w.mins):
        if a is not None:
            f.write(a.tobytes())


def _write_call(path: Path, c):
    kind = c[0]
    with open(path, "wb") as f:
        if kind == "dot":
            _, w, x, rows = c
            f.write(struct.pack("<8if", 1, 0, w.k, w.n, 0, rows.size, 0, 0, 0.0))
            f.write(x.astype(f32).tobytes() + rows.astype(np.int32).tobytes())
            _write_weight(f, w)
        elif kind == "axpy":
            _, w, h, rows, y0, c0, c1 = c
            f.write(struct.pack("<8if", 2, 0, w.k, w.n, 0, rows.size, c0, c1, 0.0))
            f.write(h.astype(f32).tobytes() + rows.astype(np.int32).tobytes() + y0.astype(f32).tobytes())
            _write_weight(f, w)
        else:
            _, ws, x, act, rows, t, threads = c
            n = -1 if rows is None else rows.size
            f.write(struct.pack("<8if", 0, threads, ws[0].k, ws[0].n, ACT_CODE[act], n, 0, 0, t))
            f.write(x.astype(f32).tobytes())
            if rows is not None:
                f.write(rows.astype(np.int32).tobytes())
            for w in ws:
                _write_weight(f, w)


def _read_result(path: Path, c):
    data = path.read_bytes()
    if c[0] == "dot":
        return np.frombuffer(data, f32)
    if c[0] == "axpy":
        return np.frombuffer(data, f32).copy()
    d = c[1][0].k
    cnt = struct.unpack("<i", data[:4])[0]
    y = np.frombuffer(data[4: 4 + 4 * d], f32)
    sel = None if c[4] is not None else np.frombuffer(data[4 + 4 * d:], np.int32)
    if sel is not None:
        assert sel.size == cnt
    return cnt, y, sel


@pytest.fixture(scope="session")
def sparse_arm_drivers(sparse_build_dir):
    missing = [t for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"aarch64 cross tools missing: {', '.join(missing)}")
    return {name: _compile("aarch64-linux-gnu-gcc", [*flags, "-static"], [DRIVER, *SOURCES],
                           sparse_build_dir / f"sparse_{name}")
            for name, (flags, _) in ARM.items()}


@pytest.mark.parametrize("arm", list(ARM))
def test_aarch64_sparse_ffn(sparse_arm_drivers, arm, tmp_path):
    """The dot, axpy and FFN cases (explicit lists, CATS, ReLU = dense, SmolLM2's shape, 2 threads) on NEON,
    in one qemu run."""
    cases = (dot_cases(ALL_FMTS, (200, 202)) + axpy_cases(ALL_FMTS, (202, 576)) + ffn_cases(ALL_FMTS + MIXED)
             + cats_cases(["q4g32s", "q8g0", "q5g32", "f16"]) + relu_dense_cases(["q4g32a", "f16"]) + smollm_case())
    args, files = [], []
    for ci, (_, calls, _) in enumerate(cases):
        for k, c in enumerate(calls):
            i, o = tmp_path / f"in{ci}_{k}", tmp_path / f"out{ci}_{k}"
            _write_call(i, c)
            args += [str(i), str(o)]
            files.append(o)
    r = subprocess.run(["qemu-aarch64", str(sparse_arm_drivers[arm]), *args], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == ARM[arm][1]
    it = iter(files)
    for name, calls, check in cases:
        check([_read_result(next(it), c) for c in calls])
