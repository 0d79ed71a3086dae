"""targets/c/runtime/linear.c: the C runtime's linear kernels against numpy and edgec.ir.quant.

Native builds (AVX2, AVX2 with 256-bit VNNI, AVX-512 VNNI and -DEC_SCALAR; those this CPU cannot run
are only compiled) are called through ctypes; the aarch64 builds (NEON with and
without dotprod) run tests/c/kernels_main.c under qemu-aarch64 on cases written to files.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgec.ir import quant

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "targets" / "c" / "runtime"
DRIVER = Path(__file__).parent / "c" / "kernels_main.c"
CFLAGS = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Werror"]
f32 = np.float32

VARIANTS = {  # name -> (flags, the path ec_linear_path must report)
    "avx2": (["-mavx2", "-mfma", "-mf16c"], "avx2"),
    "scalar": (["-DEC_SCALAR"], "scalar"),
    "vnni": (["-mavx2", "-mfma", "-mf16c", "-mavx512vnni", "-mavx512vl"], "avx2-vnni"),  # 256-bit vpdpbusd
    # edgec's x86 profile on AVX-512 VNNI CPUs: the 512-bit kernels
    "avx512": (["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"], "avx512-vnni"),
}
CPU_NEEDS = {"avx2": ("avx2", "fma", "f16c"), "vnni": ("avx2", "fma", "f16c", "avx512_vnni", "avx512vl"), "scalar": (),
             "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")}
ARM_VARIANTS = {"a76": (["-mcpu=cortex-a76"], "neon-dotprod"), "armv8": (["-march=armv8-a"], "neon"),
                # the pixel8 profile's ISA: the 8-bit decode kernels' usdot (i8mm)
                "i8mm": (["-march=armv8.2-a+dotprod+fp16+i8mm"], "neon-dotprod")}


def _cpu_has(features) -> bool:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return not features
    return all(f in flags for f in features)


class QW(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_int), ("group", ctypes.c_int), ("k", ctypes.c_int), ("kp", ctypes.c_int),
                ("groups", ctypes.c_int), ("packed", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("zeros", ctypes.c_void_p), ("mins", ctypes.c_void_p)]


def _ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


class Lib:
    def __init__(self, path: Path):
        self.lib = lib = ctypes.CDLL(str(path))
        vp, i, fl = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        for name in ("ec_linear_f32", "ec_linear_f16"):
            getattr(lib, name).argtypes = [vp, i, i, vp, vp, vp, i, i, i]
        lib.ec_linear_q.argtypes = [vp, i, ctypes.POINTER(QW), vp, vp, i, i, i]
        lib.ec_linear_q_i8.argtypes = [vp, i, ctypes.POINTER(QW), vp, vp, i, i, i]
        lib.ec_act_size.argtypes = [i, i]
        lib.ec_act_size.restype = ctypes.c_size_t
        lib.ec_quantize_act.argtypes = [vp, i, i, vp]
        lib.ec_quantize_act_rows.argtypes = [vp, i, i, vp, i, i]
        lib.ec_dequant_row.argtypes = [ctypes.POINTER(QW), i, vp]
        lib.ec_f16_to_f32.argtypes = [ctypes.c_uint16]
        lib.ec_f16_to_f32.restype = fl
        lib.ec_f32_to_f16.argtypes = [fl]
        lib.ec_f32_to_f16.restype = ctypes.c_uint16
        lib.ec_linear_path.restype = ctypes.c_char_p
        self.path = lib.ec_linear_path().decode()

    def linear(self, kind, x, w, bias, y, n0, n1):
        m, k = x.shape
        fn = self.lib.ec_linear_f32 if kind == "f32" else self.lib.ec_linear_f16
        fn(_ptr(x), m, k, _ptr(w), _ptr(bias), _ptr(y), y.shape[1], n0, n1)

    def act(self, x):
        m, k = x.shape
        buf = np.zeros(self.lib.ec_act_size(m, k) // 8 + 1, np.float64)  # 8-byte aligned
        self.lib.ec_quantize_act(_ptr(x), m, k, _ptr(buf))
        return buf

    def linear_q(self, x, qw, bias, y, n0, n1, fast):
        m = x.shape[0]
        if fast:
            self.lib.ec_linear_q_i8(_ptr(self.act(x)), m, ctypes.byref(qw.c), _ptr(bias), _ptr(y), y.shape[1], n0, n1)
        else:
            self.lib.ec_linear_q(_ptr(x), m, ctypes.byref(qw.c), _ptr(bias), _ptr(y), y.shape[1], n0, n1)

    def dequant_rows(self, qw):
        out = np.empty((qw.n, qw.k), f32)
        for n in range(qw.n):
            self.lib.ec_dequant_row(ctypes.byref(qw.c), n, _ptr(out[n]))
        return out


def _compile(cc, flags, sources, out, extra=()):
    cmd = [cc, *CFLAGS, *flags, f"-I{RUNTIME}", *map(str, sources), "-o", str(out), *extra, "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return out


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    return tmp_path_factory.mktemp("c_kernels")


@pytest.fixture(scope="session", params=list(VARIANTS))
def lib(request, build_dir):
    name = request.param
    flags, path = VARIANTS[name]
    so = _compile("gcc", [*flags, "-fPIC", "-shared"], [RUNTIME / "linear.c"], build_dir / f"linear_{name}.so")
    if not _cpu_has(CPU_NEEDS[name]):  # built (it compiles warning-free), not run
        pytest.skip(f"this CPU lacks {' / '.join(CPU_NEEDS[name])}")
    lib = Lib(so)
    assert lib.path == path
    return lib


# ----------------------------------------------------------------------------- weights
class QWeight:
    """A quantized weight in edgec's layout plus its ctypes view."""

    def __init__(self, packed, scales, zeros, mins, bits, group_size, k):
        lay = quant.PackedLayout.of(bits, group_size, k)
        self.n, self.k, self.bits, self.lay = packed.shape[0], k, bits, lay
        self.packed = np.ascontiguousarray(packed, np.uint8)
        self.scales = np.ascontiguousarray(scales, f32)
        self.zeros = np.ascontiguousarray(zeros, np.uint8)
        self.mins = None if mins is None else np.ascontiguousarray(mins, f32)
        assert self.packed.shape == (self.n, lay.row_bytes) and self.scales.shape == (self.n, lay.groups)
        self.c = QW(bits, lay.group, k, lay.kp, lay.groups, _ptr(self.packed), _ptr(self.scales), _ptr(self.zeros),
                    _ptr(self.mins))
        self.w = quant.dequantize(self.packed, self.scales, self.zeros, bits, group_size, k, mins=self.mins)


def make_qweight(rng, n, k, bits, group_size, sym, mins, search=False) -> QWeight:
    w = rng.standard_normal((n, k)).astype(f32)
    w[:, rng.integers(0, k, 3)] *= 6  # outliers
    lay = quant.PackedLayout.of(bits, group_size, k)
    if bits in quant.SUPPORTED_BITS:
        packed, scales, zeros = quant.quantize_rtn(w, quant.QuantSpec(bits, group_size, sym), search=search)
    else:  # 5, 6 bits (imported ggml blocks): random codes, padding at the zero point
        zeros = (np.full((n, lay.groups), 1 << (bits - 1)) if sym else rng.integers(0, 1 << bits, (n, lay.groups))
                 ).astype(np.uint8)
        codes = rng.integers(0, 1 << bits, (n, lay.kp)).astype(np.uint8)
        codes[:, k:] = np.repeat(zeros, lay.group, axis=1)[:, k:]
        packed = quant.pack(codes, bits)
        scales = (rng.standard_normal((n, lay.groups)) * 0.1).astype(f32)  # either sign
    m = (rng.standard_normal((n, lay.groups)) * 0.3).astype(f32) if mins else None
    return QWeight(packed, scales, zeros, m, bits, group_size, k)


# ----------------------------------------------------------------------------- references
def act_reference(x):
    """The documented activation quantization: per block of 32 (zero padded), d = amax / 127,
    q = rint(x * (127 / amax)) (float32 product, half to even). Returns (d [M, nb], q [M, nb*32])."""
    m, k = x.shape
    nb = -(-k // 32)
    xp = np.zeros((m, nb * 32), f32)
    xp[:, :k] = x
    xb = xp.reshape(m, nb, 32)
    amax = np.abs(xb).max(-1)
    d = (amax / f32(127)).astype(f32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, f32(127) / amax, f32(0)).astype(f32)
    q = np.clip(np.rint(xb * inv[..., None]), -127, 127).astype(np.int8)
    return d, q.reshape(m, -1)


def i8_reference(x, w):
    """y = sum_b d_b sum_k q_k w[n, k] in float64, and the scale of its terms (for tolerances)."""
    d, q = act_reference(x)
    k = x.shape[1]
    xd = (q.reshape(x.shape[0], -1, 32).astype(np.float64) * d[..., None]).reshape(x.shape[0], -1)[:, :k]
    return xd @ w.T.astype(np.float64), np.abs(xd) @ np.abs(w.T.astype(np.float64))


def _check_y(y, ref, scale, n0, n1, sentinel, rtol, what):
    assert np.array_equal(y[:, :n0].view(np.uint32), sentinel[:, :n0].view(np.uint32)), f"{what}: columns < n0 touched"
    assert np.array_equal(y[:, n1:].view(np.uint32), sentinel[:, n1:].view(np.uint32)), f"{what}: columns >= n1 touched"
    got, want, tol = y[:, n0:n1], ref[:, n0:n1], rtol * (scale[:, n0:n1] + 1e-30)
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(np.isfinite(got)), what
    assert np.all(err <= tol), f"{what}: max error {err.max():.3g}, worst ratio {(err / tol).max():.3g} of the tolerance"


# ----------------------------------------------------------------------------- cases
KG = [(200, 32), (200, 128), (200, 0), (200, 16), (200, 96), (576, 0), (608, 0), (576, 128), (1000, 64)]
CASES = []
for bits, (k, g), (sym, mins) in itertools.product((2, 3, 4, 5, 6, 8), KG, ((True, False), (False, False), (False, True), (True, True))):
    if mins and sym and bits != 4:
        continue
    i = len(CASES)
    CASES.append(dict(bits=bits, k=k, g=g, sym=sym, mins=mins, m=(1, 3, 17)[i % 3], bias=i % 2 == 0,
                      search=sym and i % 4 < 2, sub=i % 5 == 0, seed=i))


def case_id(c):
    return f"b{c['bits']}-k{c['k']}-g{c['g']}-{'sym' if c['sym'] else 'asym'}{'-mins' if c['mins'] else ''}-m{c['m']}"


def materialize(c):
    rng = np.random.default_rng(c["seed"])
    n = 40
    qw = make_qweight(rng, n, c["k"], c["bits"], c["g"], c["sym"], c["mins"], search=c["search"])
    x = rng.standard_normal((c["m"], c["k"])).astype(f32)
    x[:, 32:64] = 0  # an all-zero block (d = 0)
    if c["m"] > 1:
        x[1] *= 1e-3  # rows of very different magnitude
    bias = rng.standard_normal(n).astype(f32) if c["bias"] else None
    n0, n1 = (5, 29) if c["sub"] else (0, n)
    return qw, x, bias, n0, n1


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_quantized_linear(lib, c):
    qw, x, bias, n0, n1 = materialize(c)
    n = qw.n
    b = 0 if bias is None else bias.astype(np.float64)
    sentinel = np.full((x.shape[0], n), 1234.5, f32)
    # exact path: x @ dequantize(...).T
    y = sentinel.copy()
    lib.linear_q(x, qw, bias, y, n0, n1, fast=False)
    exact = x.astype(np.float64) @ qw.w.T.astype(np.float64) + b
    scale = np.abs(x.astype(np.float64)) @ np.abs(qw.w.T.astype(np.float64)) + np.abs(b)
    _check_y(y, exact, scale, n0, n1, sentinel, 1e-5, f"exact {case_id(c)}")
    # int8 path: the same int8 activations in numpy
    y8 = sentinel.copy()
    lib.linear_q(x, qw, bias, y8, n0, n1, fast=True)
    ref8, scale8 = i8_reference(x, qw.w)
    _check_y(y8, ref8 + b, scale8 + np.abs(b), n0, n1, sentinel, 1e-4, f"int8 {case_id(c)}")
    # ... and close to the exact result on random data
    rel = np.linalg.norm(y8[0, n0:n1] - exact[0, n0:n1]) / np.linalg.norm(exact[0, n0:n1])
    assert rel < 0.03, rel


def test_cases_cover_the_formats():
    """The case list reaches every kernel: negative scales, mins, odd groups, partial pairs."""
    kinds = set()
    neg = False
    for c in CASES:
        g = quant.effective_group(c["g"], c["k"])
        kinds.add((c["bits"], "g64" if g % 64 == 0 else "g32" if g % 32 == 0 else "seg"))
        if c["search"] and c["bits"] == 4 and not neg:
            qw, *_ = materialize(c)
            neg = bool((qw.scales < 0).any())
    assert neg, "the search option made no negative scale"
    assert {(b, k) for b in (2, 3, 4, 5, 6, 8) for k in ("g64", "g32", "seg")} <= kinds


@pytest.mark.parametrize("m", [1, 70])
def test_decode_and_prefill_shapes(lib, m):
    """The common formats at K=576 and 608 (odd pair count), an odd number of rows (the decode kernels
    take four rows at a time), groups of several 512-bit quads (g256) or of three blocks (g96), and M=70
    (more rows than one n-block)."""
    rng = np.random.default_rng(7)
    for k in (576, 608):
        x = rng.standard_normal((m, k)).astype(f32)
        for bits, g, sym, mins in ((4, 128, True, False), (4, 64, False, False), (4, 192, True, False),
                                   (4, 32, False, True), (4, 32, True, False), (8, 0, True, False),
                                   (8, 32, True, False), (8, 64, False, True), (4, 256, False, True),
                                   (8, 96, False, False)):
            qw = make_qweight(rng, 50, k, bits, g, sym, mins, search=sym)
            sentinel = np.full((m, 50), -7.0, f32)
            bias = rng.standard_normal(50).astype(f32)
            y = sentinel.copy()
            lib.linear_q(x, qw, bias, y, 3, 46, fast=True)
            ref, scale = i8_reference(x, qw.w)
            _check_y(y, ref + bias, scale + np.abs(bias), 3, 46, sentinel, 1e-4, f"int8 m{m} k{k} b{bits} g{g}")
            y = sentinel.copy()
            lib.linear_q(x, qw, None, y, 3, 46, fast=False)
            exact = x.astype(np.float64) @ qw.w.T.astype(np.float64)
            _check_y(y, exact, np.abs(x) @ np.abs(qw.w.T), 3, 46, sentinel, 1e-5, f"exact m{m} k{k} b{bits} g{g}")


# prefill (M >= the panel threshold: 5 on x86, 8 elsewhere): weight rows unpacked once into panels of 32
# (AVX-512) or 8 rows, a register tile of act rows x panel rows, K cut into chunks of at most 1024
# (AVX-512) or 4096 codes, DS_j kept for a bounded number of rows at a time
PREFILL_FORMATS = [  # bits, group, sym, mins
    (4, 128, True, False), (4, 128, False, False), (4, 64, True, False), (4, 32, True, False),
    (4, 32, False, False), (4, 32, False, True), (4, 256, False, True), (4, 0, True, False),
    (8, 0, True, False), (8, 32, True, False), (8, 64, False, True), (8, 96, False, False),
    (5, 32, False, True), (6, 32, True, False), (2, 64, False, False), (3, 32, True, False)]


@pytest.mark.parametrize("bits,g,sym,mins", PREFILL_FORMATS, ids=lambda v: str(v))
def test_prefill_panels(lib, bits, g, sym, mins):
    """M around the panel threshold and odd, N not a multiple of a panel, K not a multiple of the
    group (nor of 32), with and without bias, column ranges starting and ending inside panels; and
    the panels' columns computed in pieces (as threads split them) bit for bit equal to one call."""
    rng = np.random.default_rng(bits * 1000 + g + 2 * sym + mins)
    n = 45
    for m, k, with_bias, (n0, n1) in ((4, 576, True, (0, n)), (5, 200, False, (3, 41)), (7, 608, True, (0, n)),
                                      (8, 576, False, (1, n)), (9, 1000, True, (0, 40)), (33, 300, False, (0, n)),
                                      (70, 576, True, (2, 43))):
        qw = make_qweight(rng, n, k, bits, g, sym, mins, search=sym)
        x = rng.standard_normal((m, k)).astype(f32)
        x[:, 32:64] = 0
        x[1] *= 1e-3
        bias = rng.standard_normal(n).astype(f32) if with_bias else None
        b = 0 if bias is None else bias.astype(np.float64)
        sentinel = np.full((m, n), -7.0, f32)
        y = sentinel.copy()
        lib.linear_q(x, qw, bias, y, n0, n1, fast=True)
        ref, scale = i8_reference(x, qw.w)
        what = f"int8 m{m} k{k} b{bits} g{g} {'sym' if sym else 'asym'}{'+mins' if mins else ''}"
        _check_y(y, ref + b, scale + np.abs(b), n0, n1, sentinel, 1e-4, what)
        if m < (8 if lib.path == "scalar" else 5):  # the tile kernels pair columns differently
            continue
        cut = sorted({n0, n0 + 1, (n0 + n1) // 2, n1 - 3, n1})
        y2 = sentinel.copy()
        xq = lib.act(x)
        for a, e in zip(cut, cut[1:]):
            lib.lib.ec_linear_q_i8(_ptr(xq), m, ctypes.byref(qw.c), _ptr(bias), _ptr(y2), n, a, e)
        assert np.array_equal(y.view(np.uint32), y2.view(np.uint32)), f"{what}: split columns differ"


def test_prefill_long_rows(lib):
    """K long enough for several panel chunks (groups that fit a chunk and groups that do not) and
    enough groups that DS_j is kept for a few rows at a time."""
    rng = np.random.default_rng(17)
    m, k, n = 70, 4640, 20
    x = rng.standard_normal((m, k)).astype(f32)
    for bits, g, sym, mins in ((4, 32, False, True), (4, 128, True, False), (8, 0, True, False), (4, 2048, False, False)):
        qw = make_qweight(rng, n, k, bits, g, sym, mins)
        sentinel = np.full((m, n), 3.0, f32)
        y = sentinel.copy()
        lib.linear_q(x, qw, None, y, 0, n, fast=True)
        ref, scale = i8_reference(x, qw.w)
        _check_y(y, ref, scale, 0, n, sentinel, 1e-4, f"int8 m{m} k{k} b{bits} g{g}")


def test_quantize_act_rows_compose(lib):
    """ec_quantize_act_rows over disjoint row ranges writes what one ec_quantize_act call writes."""
    rng = np.random.default_rng(4)
    for m, k in ((3, 576), (9, 100), (40, 1536)):
        x = rng.standard_normal((m, k)).astype(f32)
        whole = lib.act(x)
        parts = np.zeros_like(whole)
        for a, e in ((0, 1), (1, m // 2), (m // 2, m)):
            lib.lib.ec_quantize_act_rows(_ptr(x), m, k, _ptr(parts), a, e)
        assert np.array_equal(whole.view(np.uint8), parts.view(np.uint8)), (m, k)


def test_activation_quantization_matches_reference(lib):
    """ec_quantize_act's block scales and codes equal the documented numpy rule (white box: the
    buffer's first M*nb2 floats are d, the codes in order start at the offset computed here)."""
    rng = np.random.default_rng(3)
    for m, k in ((1, 576), (3, 100), (2, 31), (1, 33)):
        x = (rng.standard_normal((m, k)) * rng.uniform(1e-3, 10)).astype(f32)
        x[0, :8] = [0.5, -0.5, 1.5, 2.5, 127, -127, 63.5, 64.5]  # ties after scaling (amax 127 -> id 1)
        d, q = act_reference(x)
        buf = lib.act(x).view(np.uint8)
        nb = -(-k // 32)
        nb2 = 2 * -(-nb // 2)
        a32 = lambda v: (v + 31) & ~31  # noqa: E731
        off_qn = a32(m * nb2 * 4) * 2 + m * (nb2 // 2) * 32
        dd = buf[: m * nb2 * 4].view(f32).reshape(m, nb2)
        qn = buf[off_qn: off_qn + m * nb2 * 32].view(np.int8).reshape(m, nb2 * 32)
        assert np.array_equal(dd[:, :nb], d), (m, k)
        assert np.array_equal(qn[:, : nb * 32], q), (m, k)
        assert not dd[:, nb:].any() and not qn[:, nb * 32:].any()


def test_dequant_row_is_bit_exact(lib):
    rng = np.random.default_rng(11)
    for bits, k, g, sym, mins in ((2, 200, 32, False, False), (3, 200, 0, True, False), (4, 576, 128, True, False),
                                  (4, 200, 32, False, True), (5, 256, 32, False, True), (6, 200, 16, True, False),
                                  (8, 100, 0, True, False), (8, 96, 32, False, True)):
        qw = make_qweight(rng, 9, k, bits, g, sym, mins, search=sym)
        got = lib.dequant_rows(qw)
        assert np.array_equal(got.view(np.uint32), qw.w.view(np.uint32)), (bits, k, g)


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_float_linear(lib, kind):
    rng = np.random.default_rng(5)
    for m, k, n, (n0, n1), with_bias in ((1, 576, 30, (0, 30), True), (3, 7, 9, (2, 7), False),
                                         (17, 100, 13, (0, 13), True), (5, 1, 6, (1, 6), True),
                                         (1, 1001, 11, (3, 10), False)):
        x = rng.standard_normal((m, k)).astype(f32)
        w = rng.standard_normal((n, k)).astype(f32)
        wk = w.astype(np.float16) if kind == "f16" else w
        wf = wk.astype(np.float64)
        bias = rng.standard_normal(n).astype(f32) if with_bias else None
        b = 0 if bias is None else bias.astype(np.float64)
        sentinel = np.full((m, n), np.nan, f32)
        y = sentinel.copy()
        lib.linear(kind, x, wk.view(np.uint16) if kind == "f16" else wk, bias, y, n0, n1)
        _check_y(y, x @ wf.T + b, np.abs(x) @ np.abs(wf.T) + np.abs(b), n0, n1, sentinel, 1e-5, f"{kind} {m}x{k}x{n}")


def test_half_conversions(lib):
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    to32 = np.array([lib.lib.ec_f16_to_f32(int(h)) for h in halves], f32)
    want = halves.view(np.float16).astype(f32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(to32), nan)
    assert np.array_equal(to32[~nan].view(np.uint32), want[~nan].view(np.uint32))
    rng = np.random.default_rng(1)
    bits = np.concatenate([
        rng.integers(0, 1 << 32, 40000, dtype=np.uint64).astype(np.uint32),  # any float
        # around every half: exact values, ties, just above and below ties
        (want[~nan].astype(f32).view(np.uint32)[::7, None] + np.array([0, 1, 0xffffffff, 0x1000, 0xfff, 0x1001], np.uint32)).ravel(),
        np.array([0x33000000, 0x33000001, 0x477fe000, 0x477ff000, 0x477fefff, 0x38800000, 0x387fffff, 0x7f800000,
                  0xff800000, 0x7fc00000, 0x80000000, 1], np.uint32),
    ])
    fl = bits.view(f32)
    got = np.array([lib.lib.ec_f32_to_f16(float(v)) for v in fl], np.uint16)
    with np.errstate(over="ignore"):
        ref = fl.astype(np.float16)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got.view(np.float16)), nan)
    bad = np.flatnonzero(got[~nan] != ref[~nan].view(np.uint16))
    assert bad.size == 0, [hex(b) for b in bits[~nan][bad[:5]]]


# ----------------------------------------------------------------------------- aarch64 under qemu
def _write_case(path: Path, op, x, w, bias, y, n0, n1, qw=None):
    m, k = x.shape if x is not None else (0, qw.k)
    n = y.shape[1] if y is not None else qw.n
    lay = (qw.bits, qw.lay.group, qw.lay.kp, qw.lay.groups, int(qw.mins is not None)) if qw else (0, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(struct.pack("<12i", op, m, k, n, n0, n1, int(bias is not None), *lay))
        if x is not None:
            f.write(np.ascontiguousarray(x, f32).tobytes())
        if bias is not None:
            f.write(bias.astype(f32).tobytes())
        if qw is None:
            f.write(np.ascontiguousarray(w).tobytes())
        else:
            for a in (qw.packed, qw.scales, qw.zeros, qw.mins):
                if a is not None:
                    f.write(a.tobytes())
        if y is not None:
            f.write(y.astype(f32).tobytes())


@pytest.fixture(scope="session")
def arm_drivers(build_dir):
    missing = [t for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"aarch64 cross tools missing: {', '.join(missing)}")
    return {name: _compile("aarch64-linux-gnu-gcc", [*flags, "-static"], [DRIVER, RUNTIME / "linear.c"],
                           build_dir / f"kernels_{name}")
            for name, (flags, _) in ARM_VARIANTS.items()}


@pytest.mark.parametrize("arm", list(ARM_VARIANTS))
def test_aarch64_kernels(arm_drivers, arm, tmp_path):
    """Every quantized case (exact and int8), fp32/fp16 and dequant_row on NEON, in one qemu run."""
    checks, args = [], []

    def add(op, check, **kw):
        i = len(checks)
        _write_case(tmp_path / f"in{i}", op, **kw)
        args.extend([str(tmp_path / f"in{i}"), str(tmp_path / f"out{i}")])
        checks.append(check)

    for c in CASES[::2] + CASES[1::6]:
        qw, x, bias, n0, n1 = materialize(c)
        b = 0 if bias is None else bias.astype(np.float64)
        sentinel = np.full((x.shape[0], qw.n), 1234.5, f32)
        exact = x.astype(np.float64) @ qw.w.T.astype(np.float64) + b
        scale = np.abs(x) @ np.abs(qw.w.T) + np.abs(b)
        ref8, scale8 = i8_reference(x, qw.w)
        add(2, (exact, scale, n0, n1, sentinel, 1e-5, f"exact {case_id(c)}"), x=x, w=None, bias=bias, y=sentinel,
            n0=n0, n1=n1, qw=qw)
        add(3, (ref8 + b, scale8 + np.abs(b), n0, n1, sentinel, 1e-4, f"int8 {case_id(c)}"), x=x, w=None, bias=bias,
            y=sentinel, n0=n0, n1=n1, qw=qw)
        if c["m"] == 3:
            add(4, ("rows", qw.w), x=None, w=None, bias=None, y=None, n0=0, n1=0, qw=qw)
    rng = np.random.default_rng(2)
    # the prefill panels (M >= 8 on NEON): every format, odd M, partial panels and column ranges; K of
    # several panel chunks and enough groups that DS_j is kept for a few rows at a time
    for i, (bits, g, sym, mins) in enumerate(PREFILL_FORMATS):
        m, k, n0, n1 = ((9, 608, 3, 41), (33, 200, 0, 45), (8, 1000, 1, 44))[i % 3]
        qw = make_qweight(rng, 45, k, bits, g, sym, mins)
        x = rng.standard_normal((m, k)).astype(f32)
        bias = rng.standard_normal(45).astype(f32) if i % 2 else None
        b = 0 if bias is None else bias.astype(np.float64)
        ref8, scale8 = i8_reference(x, qw.w)
        sentinel = np.full((m, 45), 1234.5, f32)
        add(3, (ref8 + b, scale8 + np.abs(b), n0, n1, sentinel, 1e-4, f"int8 prefill m{m} k{k} b{bits} g{g}"), x=x, w=None,
            bias=bias, y=sentinel, n0=n0, n1=n1, qw=qw)
    for bits, g, sym, mins in ((4, 32, False, True), (8, 0, True, False)):
        qw = make_qweight(rng, 20, 4640, bits, g, sym, mins)
        x = rng.standard_normal((70, 4640)).astype(f32)
        ref8, scale8 = i8_reference(x, qw.w)
        sentinel = np.full((70, 20), 1234.5, f32)
        add(3, (ref8, scale8, 0, 20, sentinel, 1e-4, f"int8 prefill long b{bits} g{g}"), x=x, w=None, bias=None,
            y=sentinel, n0=0, n1=20, qw=qw)
    for kind, op in (("f32", 0), ("f16", 1)):
        for m, k, n, n0, n1 in ((1, 576, 13, 0, 13), (6, 103, 10, 2, 9)):
            x = rng.standard_normal((m, k)).astype(f32)
            w = rng.standard_normal((n, k)).astype(f32)
            if kind == "f16":
                w = w.astype(np.float16)
            bias = rng.standard_normal(n).astype(f32)
            wf = w.astype(np.float64)
            sentinel = np.full((m, n), np.nan, f32)
            add(op, (x @ wf.T + bias, np.abs(x) @ np.abs(wf.T) + np.abs(bias), n0, n1, sentinel, 1e-5, f"{kind} {m}x{k}"),
                x=x, w=w.view(np.uint16) if kind == "f16" else w, bias=bias, y=sentinel, n0=n0, n1=n1)
    r = subprocess.run(["qemu-aarch64", str(arm_drivers[arm]), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == ARM_VARIANTS[arm][1]
    for i, chk in enumerate(checks):
        out = np.fromfile(tmp_path / f"out{i}", f32)
        if isinstance(chk[0], str):
            want = chk[1]
            assert np.array_equal(out.reshape(want.shape).view(np.uint32), want.view(np.uint32)), f"dequant_row case {i}"
        else:
            ref, scale, n0, n1, sentinel, rtol, what = chk
            _check_y(out.reshape(sentinel.shape), ref, scale, n0, n1, sentinel, rtol, f"{arm} {what}")


# the NEON decode kernels (one act row at a time, M < 8: each row in turn; four weight rows per pass, the
# rest one at a time): a row's blocks four at a time, the last nb % 4 (1 to 3) a partial quad; g32 / g64
# scales per block, g % 128 per group (four groups at a time at g128), 8-bit one group per row. Every format
# they take (and g96 / g192, left to the per-row kernels), K giving each partial quad (nb % 4 = 0..3, K not
# a multiple of 32 or of the group), N and column ranges not multiples of 4, M = 1..7.
DECODE_FORMATS = [  # bits, group, sym, mins
    (4, 128, True, False), (4, 128, False, False), (4, 128, False, True), (4, 256, True, False),
    (4, 384, False, True), (4, 64, True, False), (4, 64, False, True), (4, 32, True, False), (4, 32, False, False),
    (4, 32, False, True), (4, 32, True, True), (4, 192, True, False), (4, 96, False, False),
    (8, 0, True, False), (8, 0, False, True), (8, 32, True, False), (8, 32, False, True), (8, 64, False, False),
    (8, 128, True, False), (8, 256, False, True), (8, 512, True, False), (8, 96, True, False)]
DECODE_SHAPES = [  # m, k, n, n0, n1
    (1, 576, 45, 0, 45), (1, 608, 38, 3, 37), (1, 544, 41, 1, 41), (1, 512, 9, 0, 9), (1, 200, 13, 2, 13),
    (1, 40, 7, 0, 7), (1, 1000, 10, 0, 10), (2, 1000, 11, 1, 10), (3, 608, 9, 0, 9), (4, 544, 10, 2, 9),
    (5, 200, 7, 0, 7), (7, 576, 6, 1, 6)]


@pytest.mark.parametrize("arm", list(ARM_VARIANTS))
def test_aarch64_decode_kernels(arm_drivers, arm, tmp_path):
    """The NEON decode kernels against numpy: every format x shape above, in one qemu run."""
    checks, args = [], []
    for i, ((bits, g, sym, mins), (m, k, n, n0, n1)) in enumerate(itertools.product(DECODE_FORMATS, DECODE_SHAPES)):
        rng = np.random.default_rng(i)
        qw = make_qweight(rng, n, k, bits, g, sym, mins, search=sym and i % 2 == 0)
        x = rng.standard_normal((m, k)).astype(f32)
        x[:, 32:64] = 0  # an all-zero block (d = 0)
        if m > 1:
            x[1] *= 1e-3
        bias = rng.standard_normal(n).astype(f32) if i % 3 else None
        b = 0 if bias is None else bias.astype(np.float64)
        ref8, scale8 = i8_reference(x, qw.w)
        sentinel = np.full((m, n), 1234.5, f32)
        what = f"{arm} decode b{bits} g{g} {'sym' if sym else 'asym'}{'+mins' if mins else ''} m{m} k{k} n{n} [{n0}, {n1})"
        _write_case(tmp_path / f"in{i}", 3, x, None, bias, sentinel, n0, n1, qw)
        args.extend([str(tmp_path / f"in{i}"), str(tmp_path / f"out{i}")])
        checks.append((ref8 + b, scale8 + np.abs(b), n0, n1, sentinel, what))
    r = subprocess.run(["qemu-aarch64", str(arm_drivers[arm]), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == ARM_VARIANTS[arm][1]
    for i, (ref, scale, n0, n1, sentinel, what) in enumerate(checks):
        out = np.fromfile(tmp_path / f"out{i}", f32).reshape(sentinel.shape)
        _check_y(out, ref, scale, n0, n1, sentinel, 1e-4, what)


@pytest.mark.parametrize("arm", list(ARM_VARIANTS))
def test_aarch64_act_quantization(arm_drivers, arm, tmp_path):
    """ec_quantize_act on NEON (a vector path for whole blocks) gives the documented codes and block scales
    bit for bit, read back through one-hot 4-bit weights (w[n, k] = [k == n]: y[m, n] = d[m, n // 32] q[m, n],
    one product, exact): ties after scaling, an all-zero block, tiny and huge blocks, a partial last block."""
    m, k = 3, 600
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((m, k)) * rng.uniform(1e-3, 10, (m, 1))).astype(f32)
    x[0, :9] = [0.5, -0.5, 1.5, 2.5, -2.5, 127, -127, 63.5, 64.5]  # ties after scaling (amax 127 -> id 1)
    x[0, 32:64] = 0
    x[1, 64:96] *= 1e-35
    x[1, 96:128] *= 1e30
    x[2, 128:160] = (np.arange(32) * 0.5 + 0.25) * np.where(np.arange(32) % 3, 1, -1)  # ties: amax 63.5 -> id 2
    x[2, 159] = 63.5
    d, q = act_reference(x)
    lay = quant.PackedLayout.of(4, 128, k)
    codes = np.zeros((k, lay.kp), np.uint8)
    codes[np.arange(k), np.arange(k)] = 1
    qw = QWeight(quant.pack(codes, 4), np.ones((k, lay.groups), f32), np.zeros((k, lay.groups), np.uint8), None, 4, 128, k)
    sentinel = np.zeros((m, k), f32)
    _write_case(tmp_path / "in", 3, x, None, None, sentinel, 0, k, qw)
    r = subprocess.run(["qemu-aarch64", str(arm_drivers[arm]), str(tmp_path / "in"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "out", f32).reshape(m, k)
    want = (np.repeat(d, 32, axis=1)[:, :k] * q[:, :k].astype(f32)).astype(f32)
    bad = np.argwhere(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, [(int(i), int(j), float(got[i, j]), float(want[i, j])) for i, j in bad[:5]]
