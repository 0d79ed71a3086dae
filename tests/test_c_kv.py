"""The C backend's KV cache kept in place in its three storage forms: float32, fp16 (backend option
kv_cache=fp16) and int8 (recipe int8-kv: int8 rows plus one float scale per row and head).

Logits are compared with the library's exact linear path (int8_activations off), where the C runtime
follows the interpreter's float32 math up to summation order and fused multiply-adds (~1e-6 relative;
test_conformance.py). Tolerances below say why they are what they are."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import edgec
from edgec.backends import get_backend
from edgec.errors import EdgecError
from edgec.executor import forward_feeds
from edgec.ir.quant import quantize_rows_int8
from helpers import IDS

N = 12
PREFILL = 8  # prefill blocks of >= 8 queries take the transposed-keys path; the steps after it the decode path


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory):
    """GQA (4 heads over 2 KV heads) with a sliding window of 6: IDS run past the window."""
    from tiny import save_tiny

    return save_tiny("mistral", tmp_path_factory.mktemp("hf") / "tiny-mistral")


@pytest.fixture(scope="module")
def arts(tiny_llama, tiny_mistral, tmp_path_factory):
    """(arch, form) -> artifact; forms: ref8 (reference backend, int8-kv), c8, c32, c16."""
    root = tmp_path_factory.mktemp("ckv")
    cache = {}

    def get(arch, form):
        if (arch, form) not in cache:
            model = {"llama": tiny_llama, "mistral": tiny_mistral}[arch]
            kw = {"ref8": dict(backend="reference", recipe="int8-kv"), "c8": dict(backend="c", recipe="int8-kv"),
                  "c32": dict(backend="c", recipe="fp32"),
                  "c16": dict(backend="c", recipe="fp32", backend_options={"kv_cache": "fp16"})}[form]
            cache[arch, form] = edgec.build(model, root / f"{arch}-{form}", **kw)
        return cache[arch, form]

    return get


def exact(art):
    """The C artifact's executor with fp32 activations (the interpreter's math)."""
    return get_backend("c").open(art / "model", options={"int8_activations": False})


def stepwise(seq, ids, prefill=PREFILL):
    """Logits of a prefill of `prefill` tokens, then one token per step."""
    out = [seq.run(ids[:prefill])] + [seq.run([t]) for t in ids[prefill:]]
    return np.concatenate(out)


def run_ids(art, ids=IDS, n=N, extra=()):
    cmd = [str(art / "model" / "edgec-run"), str(art), "--ids", ",".join(map(str, ids)), "-n", str(n), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [int(t) for t in proc.stdout.split()]


# ------------------------------------------------------------------ int8 KV
def test_int8_cache_is_bound_in_place(arts):
    art = arts("llama", "c8")
    meta = exact(art).meta
    assert [c["dtype"] for c in meta["caches"]] == ["int8", "float32"] * 4  # 2 layers x (key, key_scale, value, ...)
    assert meta["inputs"] == ["input_ids", "position_ids", "logits_rows"] and meta["outputs"] == ["logits"]
    src = (art / "model" / "src" / "model.c").read_text()
    assert src.count("ec_attention_i8(") == 2
    assert "ec_quantize_rows(" not in src and "ec_dequantize_rows(" not in src  # done by the kernel, in place


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("prefill", [3, PREFILL])
def test_int8_logits_match_the_reference(arch, prefill, arts):
    """Prefill then single-token steps through Python's executor against the reference backend of the
    same recipe. The int8 codes are the interpreter's (test below), so what is left is float32 rounding
    (summation order, FMAs, scales applied to whole dot products in decode): measured <= 1e-6 of the
    logits' range. 1e-4 of it leaves room for that and is 100x below what one cache row quantized
    differently or read as float32 would do (int8 vs fp32 caches differ by ~1.5e-2 of the range here)."""
    want = stepwise(edgec.load(arts(arch, "ref8")).sequence(64), IDS, prefill)
    got = stepwise(exact(arts(arch, "c8")).sequence(64), IDS, prefill)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_int8_cache_rows_are_the_interpreters(arts):
    """The cache the library wrote in place holds the interpreter's presents: the same int8 codes (its
    float rows agree with the interpreter's to float32 rounding, so a code could differ only for a value
    within ~1e-6 of a rounding boundary: at most 1, rarely) and the same scales to a few ulp."""
    ref = edgec.load(arts("llama", "ref8")).sequence(64).inner
    ref.run(IDS)
    seq = exact(arts("llama", "c8")).sequence(64)
    seq.run(IDS)
    n = len(IDS)
    for c, buf in zip(seq.ex.meta["caches"], seq.caches):
        got, want = buf[:, :, :n], ref.cache[c["past"]]
        assert buf.dtype == want.dtype and got.shape == want.shape
        if c["dtype"] == "int8":
            diff = np.abs(got.astype(np.int32) - want)
            assert diff.max() <= 1 and (diff > 0).mean() <= 0.005, c["past"]
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=c["past"])
        assert not buf[:, :, n:].any()  # nothing written past the rows in use


def test_int8_run_with_given_pasts_matches_the_reference(arts):
    """executor.run (the conformance path: pasts fed, presents returned) over the int8 pasts of a reference run."""
    ref_ex, ex = edgec.load(arts("llama", "ref8")).executor, exact(arts("llama", "c8"))
    iface = ref_ex.interface
    from edgec.executor import empty_cache

    first = ref_ex.run(forward_feeds(iface, IDS[:PREFILL], 0, empty_cache(iface)))
    pasts = {past: first[present] for past, present in iface.present_of().items()}
    feeds = forward_feeds(iface, IDS[PREFILL:], PREFILL, pasts)
    # the C artifact also takes logits_rows (its prelower): the same feeds plus "every row"
    want, got = ref_ex.run(feeds), ex.run(forward_feeds(ex.interface, IDS[PREFILL:], PREFILL, pasts))
    assert np.abs(got["logits"] - want["logits"]).max() <= 1e-4 * np.abs(want["logits"]).max()
    for c in iface.cache:
        if c.past.dtype == "int8":
            assert np.abs(got[c.present].astype(np.int32) - want[c.present]).max() <= 1
        else:
            np.testing.assert_allclose(got[c.present], want[c.present], rtol=1e-5)


def test_quantize_rows_is_the_irs_bit_for_bit(arts):
    """ec_quantize_rows (what the kernel stores) against edgec.ir's quantize_rows on the same floats:
    random rows, exact halves (round half to even), clipped and all-zero rows."""
    lib = ctypes.CDLL(str(arts("llama", "c8") / "model" / "libedgec.so"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype(np.float32) * rng.uniform(1e-3, 30, (64, 1)).astype(np.float32)
    x[0] = 0
    x[1] = [127, 2.5, -3.5, 0.5, -0.5, 1.5, 126.5, -126.5] * 2  # scale 1: every value a tie
    x[2, :8] = 1e-30
    want_q, want_s = quantize_rows_int8(x)
    q, s = np.zeros(x.shape, np.int8), np.zeros((x.shape[0], 1), np.float32)
    lib.ec_quantize_rows(ctypes.c_void_p(q.ctypes.data), ctypes.c_void_p(s.ctypes.data),
                         ctypes.c_void_p(x.ctypes.data), ctypes.c_int64(x.shape[0]), ctypes.c_int64(x.shape[1]))
    assert np.array_equal(q, want_q) and np.array_equal(s.view(np.uint32), want_s.view(np.uint32))


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_int8_edgec_run_matches_python(arch, arts):
    art = arts(arch, "c8")
    want = edgec.load(art).generate(IDS, N)
    assert len(want) == N
    assert run_ids(art) == want


# ------------------------------------------------------------------ fp16 KV
@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_fp16_cache_close_to_fp32(arch, arts):
    """Each cached key/value rounded to fp16 once: a relative error <= 2^-11 per element, which two
    layers of attention and the head carry into the logits at ~1e-3 of their range (measured 0.7e-3 to
    1.1e-3). 3e-3 of the range holds that with margin; an fp16 cache read wrongly (bits as floats, a
    row off) is off by the logits' whole range. The greedy tokens stay those of fp32."""
    fp32, fp16 = exact(arts(arch, "c32")), exact(arts(arch, "c16"))
    assert [c["dtype"] for c in fp16.meta["caches"]] == ["float16"] * 4
    assert "ec_attention_f16(" in (arts(arch, "c16") / "model" / "src" / "model.c").read_text()
    for prefill in (3, PREFILL):
        want, got = stepwise(fp32.sequence(64), IDS, prefill), stepwise(fp16.sequence(64), IDS, prefill)
        assert np.abs(got - want).max() <= 3e-3 * np.abs(want).max()
        assert not np.array_equal(got, want)  # the cache really is fp16
    tokens = edgec.load(arts(arch, "c16")).generate(IDS, N)
    assert tokens == edgec.load(arts(arch, "c32")).generate(IDS, N)
    assert run_ids(arts(arch, "c16")) == tokens


@pytest.mark.skipif(not (shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-gcc")),
                    reason="needs qemu-user and gcc-aarch64-linux-gnu (.ci/run installs them)")
@pytest.mark.parametrize("form", ["c8", "c16"])
def test_aarch64_build_matches_x86(form, arts, tiny_mistral, tmp_path):
    """The NEON build of each form (fp16 through the compiler's _Float16 there) gives x86-64's greedy tokens."""
    kw = dict(recipe="int8-kv") if form == "c8" else dict(recipe="fp32", backend_options={"kv_cache": "fp16"})
    art = edgec.build(tiny_mistral, tmp_path / form, device="rpi5", backend="c", **kw)
    cmd = ["qemu-aarch64", str(art / "model" / "edgec-run"), str(art), "--ids", ",".join(map(str, IDS)), "-n",
           str(N), "--exact"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [int(t) for t in proc.stdout.split()] == run_ids(arts("mistral", form), extra=("--exact",))


def test_kv_cache_option_is_checked(tiny_llama, tmp_path):
    with pytest.raises(EdgecError, match="kv_cache must be one of"):
        edgec.build(tiny_llama, tmp_path / "a", backend="c", backend_options={"kv_cache": "bf16"})
    with pytest.raises(EdgecError, match="kv_cache=fp16 and recipe int8-kv"):
        edgec.build(tiny_llama, tmp_path / "b", backend="c", recipe="int8-kv", backend_options={"kv_cache": "fp16"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------ memory
class _Options(ctypes.Structure):
    """edgec.h's edgec_options (filled from edgec_default_options, so fields added later keep their defaults)."""
    _fields_ = [("threads", ctypes.c_int), ("context", ctypes.c_int), ("exact", ctypes.c_int),
                ("verify", ctypes.c_int), ("huge_pages", ctypes.c_int), ("memory_budget", ctypes.c_int64)]


def c_api_cache_bytes(art, context: int) -> int:
    """edgec_cache_bytes of a context made through the C API (edgec_load, edgec_context)."""
    lib = ctypes.CDLL(str(art / "model" / "libedgec.so"))
    lib.edgec_load.restype = lib.edgec_context.restype = ctypes.c_void_p
    lib.edgec_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Options), ctypes.c_char_p, ctypes.c_size_t]
    lib.edgec_context.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.edgec_cache_bytes.restype = ctypes.c_size_t
    lib.edgec_cache_bytes.argtypes = lib.edgec_context_free.argtypes = lib.edgec_free.argtypes = [ctypes.c_void_p]
    err = ctypes.create_string_buffer(512)
    lib.edgec_default_options.restype = _Options
    opt = lib.edgec_default_options()
    opt.threads, opt.context, opt.exact = 1, context, 1
    model = lib.edgec_load(str(art).encode(), ctypes.byref(opt), err, 512)
    assert model, err.value
    ctx = lib.edgec_context(model, err, 512)
    assert ctx, err.value
    try:
        return int(lib.edgec_cache_bytes(ctx))
    finally:
        lib.edgec_context_free(ctx)
        lib.edgec_free(model)


def test_cache_memory_is_what_the_form_says(arts):
    """layers x 2 x kv_heads x context x (head_dim x element bytes + scale bytes), from the C API and
    from Python's sequence: tiny llama has 2 layers, 2 KV heads, head_dim 16."""
    context = 64
    per_row = {"c32": 16 * 4, "c16": 16 * 2, "c8": 16 * 1 + 4}
    got = {}
    for form, row in per_row.items():
        art = arts("llama", form)
        want = 2 * 2 * 2 * context * row
        got[form] = c_api_cache_bytes(art, context)
        assert got[form] == want, form
        assert exact(art).sequence(context).cache_bytes == want, form
    assert got["c16"] * 2 == got["c32"]
    assert got["c8"] / got["c32"] == pytest.approx(0.25 + 1 / 16)  # a quarter, plus a float scale per 16 codes
