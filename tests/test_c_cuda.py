"""targets/c/cuda: the CUDA kernels (quantized GEMV, attention) of the GPU devices (jetson-*, cuda).

Without a GPU: ec_cuda.cu compiles warning-free (nvcc, host compiler and ptxas warnings are errors,
register spills included) for every gpu_arch of edgec's device profiles plus sm_90 (H100 / H200),
the header is valid plain C, and the self-check program builds and reports "no device".
With a GPU (nvidia-smi sees one): the self-check passes, and the kernels, called through ctypes,
agree with the CPU kernel of targets/c/runtime/linear.c (GEMV, same weights in the same layout)
and with the IR's reference of the `attention` op (output and cache update).
Skipped entirely only when nvcc is absent.
"""
from __future__ import annotations

import ctypes
import glob
import shutil
import subprocess
import time
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from edgec.devices import get_device, list_devices
from edgec.ir.ops import get_op
from test_c_kernels import CASES, QW, RUNTIME, Lib, _compile, case_id, make_qweight, materialize

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "targets" / "c" / "cuda"
SOURCE = CUDA_DIR / "ec_cuda.cu"
EXTRA_ARCHS = ("sm_90",)  # Hopper (H100 / H200): the datacenter GPUs the cuda profile also covers
# strictest settings the toolchain takes: nvcc's own warnings, the host compiler's and ptxas's
# (spills, local memory) are errors
NVCC_FLAGS = ["-std=c++17", "-O3", f"-I{RUNTIME}", "--Werror", "all-warnings",
              "-Xcompiler", "-Wall,-Wextra,-Werror", "-Xptxas", "-warn-spills,-warn-lmem-usage,-Werror"]
f32 = np.float32
NO_DEVICE = 77  # the self-check program's exit status without a GPU


def _find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    cands = sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))
    return cands[-1] if cands else None


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = _find_nvcc()
    if path is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed: the CUDA kernels cannot be compiled here")
    return path


def _run(cmd, **kw):
    t = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout}\n{r.stderr}"
    return r, time.perf_counter() - t


def profile_archs() -> list[str]:
    """The gpu_arch of every GPU device profile (host is detected at run time, so left out)."""
    archs = set()
    for name in list_devices():
        if name == "host":
            continue
        dev = get_device(name)
        if dev.kind == "gpu" and dev.gpu_arch:
            archs.add(dev.gpu_arch)
    return sorted(archs)


def _gencode(archs) -> list[str]:
    out = []
    for a in archs:
        num = a.removeprefix("sm_")
        out += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    return out


@lru_cache(maxsize=None)
def _supported(nvcc_path: str) -> frozenset[str]:
    r = subprocess.run([nvcc_path, "--list-gpu-code"], capture_output=True, text=True)
    return frozenset(r.stdout.split()) if r.returncode == 0 else frozenset()


def gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


# ----------------------------------------------------------------------------- no GPU needed
def test_profiles_name_the_gpu_archs():
    archs = profile_archs()
    assert "sm_87" in archs, archs  # Jetson Orin (Nano and AGX)
    assert all(a.startswith("sm_") and a[3:].isdigit() for a in archs), archs


def test_kernels_compile_for_every_gpu_profile(nvcc, tmp_path):
    """One nvcc -c call with a -gencode per arch (the profiles' and sm_90), warnings as errors."""
    archs = sorted(set(profile_archs()) | set(EXTRA_ARCHS))
    supported = _supported(nvcc)
    missing = [a for a in archs if supported and a not in supported]
    todo = [a for a in archs if a not in missing]
    assert todo, f"this nvcc targets none of {archs}"
    obj = tmp_path / "ec_cuda.o"
    _, secs = _run([nvcc, *NVCC_FLAGS, "--threads", "0", *_gencode(todo), "-c", SOURCE, "-o", obj])
    assert obj.stat().st_size > 0
    print(f"nvcc -c for {', '.join(todo)}: {secs:.1f} s")
    if missing:
        pytest.skip(f"compiled for {todo}; this nvcc cannot target {missing}")


def test_header_is_plain_c(tmp_path):
    """C callers include ec_cuda.h without CUDA headers (streams are void *)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = tmp_path / "use.c"
    src.write_text('#include "ec_cuda.h"\n'
                   'int main(void) { int n; return ec_cuda_device_count(&n) == EC_CUDA_OK ? 0 : 1; }\n')
    _run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{CUDA_DIR}", f"-I{RUNTIME}",
          "-fsyntax-only", src])


def test_selftest_program(nvcc, tmp_path):
    """-DEC_CUDA_SELFTEST_MAIN builds a program that checks both kernel families against a host
    reference: it passes on a GPU, and reports 'no device' (exit 77) without one."""
    gpu = gpu_present()
    arch = ["-arch=native"] if gpu else _gencode(["sm_90"])
    exe = tmp_path / "ec_cuda_selftest"
    _, secs = _run([nvcc, *NVCC_FLAGS, *arch, "-DEC_CUDA_SELFTEST_MAIN", SOURCE, "-o", exe])
    print(f"self-check program built in {secs:.1f} s")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    if gpu:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "ok" in r.stdout
    else:
        assert r.returncode == NO_DEVICE, r.stdout + r.stderr
        assert "no CUDA device" in r.stdout


# ----------------------------------------------------------------------------- on a GPU
class Cuda:
    """libec_cuda.so through ctypes; device buffers are freed by free_all()."""

    def __init__(self, path: Path):
        self.lib = lib = ctypes.CDLL(str(path))
        vp, i, i64, fl, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_size_t
        lib.ec_cuda_last_error.restype = ctypes.c_char_p
        lib.ec_cuda_device_count.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.ec_cuda_malloc.argtypes = [ctypes.POINTER(vp), sz]
        lib.ec_cuda_free.argtypes = [vp]
        lib.ec_cuda_copy.argtypes = [vp, vp, sz]
        lib.ec_cuda_sync.argtypes = [vp]
        lib.ec_cuda_linear_q.argtypes = [vp, i, ctypes.POINTER(QW), vp, vp, i, vp]
        lib.ec_cuda_attention_workspace_size.argtypes = [i64] * 4
        lib.ec_cuda_attention_workspace_size.restype = sz
        lib.ec_cuda_attention_f32.argtypes = [vp] * 6 + [i64, vp, vp] + [i64] * 8 + [fl, fl, i64, vp, sz, vp]
        lib.ec_cuda_selftest.argtypes = [ctypes.c_char_p, sz]
        self.live: list[int] = []

    def check(self, rc, what):
        assert rc == 0, f"{what}: error {rc}: {self.lib.ec_cuda_last_error().decode()}"

    def alloc(self, nbytes) -> int:
        p = ctypes.c_void_p()
        self.check(self.lib.ec_cuda_malloc(ctypes.byref(p), max(int(nbytes), 1)), "ec_cuda_malloc")
        self.live.append(p.value)
        return p.value

    def put(self, a) -> int | None:
        if a is None:
            return None
        a = np.ascontiguousarray(a)
        p = self.alloc(a.nbytes)
        if a.nbytes:
            self.check(self.lib.ec_cuda_copy(p, a.ctypes.data, a.nbytes), "ec_cuda_copy")
        return p

    def get(self, p, shape, dtype=f32):
        out = np.empty(shape, dtype)
        self.check(self.lib.ec_cuda_sync(None), "ec_cuda_sync")
        if out.nbytes:
            self.check(self.lib.ec_cuda_copy(out.ctypes.data, p, out.nbytes), "ec_cuda_copy")
        return out

    def free_all(self):
        for p in self.live:
            self.lib.ec_cuda_free(p)
        self.live.clear()


@pytest.fixture(scope="module")
def cuda(nvcc, tmp_path_factory):
    if not gpu_present():
        pytest.skip("no NVIDIA GPU here (nvidia-smi -L lists none): the kernels were only compiled")
    so = tmp_path_factory.mktemp("cuda") / "libec_cuda.so"
    _run([nvcc, *NVCC_FLAGS, "-arch=native", "-shared", "-Xcompiler", "-fPIC", SOURCE, "-o", so])
    lib = Cuda(so)
    n = ctypes.c_int()
    if lib.lib.ec_cuda_device_count(ctypes.byref(n)) != 0:
        pytest.skip(f"the CUDA runtime finds no device: {lib.lib.ec_cuda_last_error().decode()}")
    yield lib
    lib.free_all()


@pytest.fixture(scope="module")
def cpu(tmp_path_factory):
    """linear.c's portable build: the CPU reference of ec_cuda_linear_q (its exact path)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    so = _compile("gcc", ["-DEC_SCALAR", "-fPIC", "-shared"], [RUNTIME / "linear.c"],
                  tmp_path_factory.mktemp("cpu") / "linear_scalar.so")
    return Lib(so)


def test_selftest_entry_point(cuda):
    msg = ctypes.create_string_buffer(512)
    rc = cuda.lib.ec_cuda_selftest(msg, len(msg))
    assert rc == 0, msg.value.decode()


def _gpu_linear(cuda, x, qw, bias, misalign=False):
    """y from ec_cuda_linear_q; misalign: x 4 bytes past a 16-byte boundary (its scalar-load path)."""
    m, n = x.shape[0], qw.n
    dev = QW(qw.c.bits, qw.c.group, qw.c.k, qw.c.kp, qw.c.groups, cuda.put(qw.packed), cuda.put(qw.scales),
             cuda.put(qw.zeros), cuda.put(qw.mins))
    dy = cuda.alloc(m * n * 4)
    if misalign:
        dx = cuda.alloc(x.nbytes + 4) + 4
        cuda.check(cuda.lib.ec_cuda_copy(dx, np.ascontiguousarray(x).ctypes.data, x.nbytes), "ec_cuda_copy")
    else:
        dx = cuda.put(x)
    cuda.check(cuda.lib.ec_cuda_linear_q(dx, m, ctypes.byref(dev), cuda.put(bias), dy, n, None),
               "ec_cuda_linear_q")
    y = cuda.get(dy, (m, n))
    cuda.free_all()
    return y


# a quarter of test_c_kernels' cases: every bit width (2, 4, 8: the fast path; 3, 5, 6: the generic one),
# group kinds, symmetry and mins, M = 1, 3, 17
GPU_CASES = [c for c in CASES if c["seed"] % 4 == 0]


@pytest.mark.parametrize("c", GPU_CASES, ids=case_id)
def test_linear_matches_cpu_kernel(cuda, cpu, c):
    """The same ec_qweight (bytes for bytes) through the GPU and linear.c's exact path."""
    qw, x, bias, _, _ = materialize(c)
    y_cpu = np.empty((x.shape[0], qw.n), f32)
    cpu.linear_q(x, qw, bias, y_cpu, 0, qw.n, fast=False)
    y_gpu = _gpu_linear(cuda, x, qw, bias)
    # fp32 sums in another order; the tolerance is relative to the sum of |terms|, as in test_c_kernels
    scale = np.abs(x.astype(np.float64)) @ np.abs(qw.w.T.astype(np.float64)) + (0 if bias is None else np.abs(bias))
    err = np.abs(y_gpu.astype(np.float64) - y_cpu)
    assert np.all(np.isfinite(y_gpu))
    assert np.all(err <= 1e-4 * scale + 1e-30), f"max error {err.max():.3g}"


@pytest.mark.parametrize("m", [1, 5])
def test_linear_decode_sizes(cuda, cpu, m):
    """SmolLM2-135M-like rows (K = 576, 1536) in the common int4 / int8 formats, misaligned x too."""
    rng = np.random.default_rng(21)
    for k, bits, g, sym, mins in ((576, 4, 32, True, False), (576, 4, 128, False, False), (1536, 4, 64, False, True),
                                  (576, 8, 0, True, False), (1536, 8, 32, False, False)):
        qw = make_qweight(rng, 193, k, bits, g, sym, mins)
        x = rng.standard_normal((m, k)).astype(f32)
        bias = rng.standard_normal(193).astype(f32)
        y_cpu = np.empty((m, 193), f32)
        cpu.linear_q(x, qw, bias, y_cpu, 0, 193, fast=False)
        scale = np.abs(x) @ np.abs(qw.w.T) + np.abs(bias)
        for misalign in (False, True):
            y = _gpu_linear(cuda, x, qw, bias, misalign)
            np.testing.assert_array_less(np.abs(y - y_cpu), 1e-4 * scale + 1e-30)


ATTN_CASES = {  # b, h, kvh, s, p, d, dv, window, softcap, in-place cache, workspace
    "decode-gqa-split": (1, 9, 3, 1, 777, 64, 64, 0, 0.0, True, True),
    "decode-gqa-one-block": (1, 9, 3, 1, 777, 64, 64, 0, 0.0, False, False),
    "prefill-window-softcap": (2, 4, 2, 6, 300, 128, 128, 100, 50.0, False, True),
    "prefill-no-past": (1, 4, 1, 12, 0, 48, 80, 0, 0.0, False, True),
    "gemma-heads": (1, 2, 1, 2, 33, 256, 256, 16, 30.0, True, True),
    "tiny-head": (1, 2, 2, 3, 1, 8, 8, 0, 0.0, False, True),
}


@pytest.mark.parametrize("name", list(ATTN_CASES))
def test_attention_matches_reference(cuda, name):
    """Output and cache update against the IR's attention reference (edgec.ir.ops)."""
    b, h, kvh, s, p, d, dv, window, softcap, in_place, use_ws = ATTN_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    scale = d ** -0.5
    q = rng.standard_normal((b, h, s, d)).astype(f32)
    k = rng.standard_normal((b, kvh, s, d)).astype(f32)
    v = rng.standard_normal((b, kvh, s, dv)).astype(f32)
    pk = rng.standard_normal((b, kvh, p, d)).astype(f32)
    pv = rng.standard_normal((b, kvh, p, dv)).astype(f32)
    ref_out, ref_k, ref_v = get_op("attention").ref(q, k, v, pk, pv, scale=scale, softcap=softcap, window=window)
    ccap = p + s + 5
    ck = np.zeros((b, kvh, ccap, d), f32)
    cv = np.zeros((b, kvh, ccap, dv), f32)
    pcap = p + 2  # a past buffer with spare rows: the row capacity is honoured
    if in_place:
        ck[:, :, :p], cv[:, :, :p] = pk, pv
        pcap = ccap
    dck, dcv = cuda.put(ck), cuda.put(cv)
    if in_place:
        dpk, dpv = dck, dcv
    else:
        pkb = np.zeros((b, kvh, pcap, d), f32)
        pvb = np.zeros((b, kvh, pcap, dv), f32)
        pkb[:, :, :p], pvb[:, :, :p] = pk, pv
        dpk, dpv = cuda.put(pkb), cuda.put(pvb)
    wsb = cuda.lib.ec_cuda_attention_workspace_size(b, h, s, dv) if use_ws else 0
    ws = cuda.alloc(wsb) if use_ws else None
    dout = cuda.alloc(b * s * h * dv * 4)
    rc = cuda.lib.ec_cuda_attention_f32(dout, cuda.put(q), cuda.put(k), cuda.put(v), dpk if p else None,
                                        dpv if p else None, pcap, dck, dcv, ccap, b, h, kvh, s, p, d, dv,
                                        scale, softcap, window, ws, wsb, None)
    cuda.check(rc, "ec_cuda_attention_f32")
    out = cuda.get(dout, (b, s, h, dv))
    got_k, got_v = cuda.get(dck, ck.shape), cuda.get(dcv, cv.shape)
    cuda.free_all()
    assert np.array_equal(got_k[:, :, :p + s], ref_k) and np.array_equal(got_v[:, :, :p + s], ref_v)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-5)


def test_attention_rejects_unsupported_shapes(cuda):
    """A head dimension above EC_CUDA_ATTN_MAX_D and H not a multiple of KV fail with EC_CUDA_EARG."""
    buf = cuda.alloc(4096)
    for h, kvh, d in ((4, 2, 512), (3, 2, 64)):
        rc = cuda.lib.ec_cuda_attention_f32(buf, buf, buf, buf, None, None, 0, buf, buf, 4, 1, h, kvh, 1, 0, d, d,
                                            1.0, 0.0, 0, None, 0, None)
        assert rc == 1, (h, kvh, d)
    cuda.free_all()

