"""edgec.report: self-contained HTML reports with matplotlib plots, checked down to a headless browser render."""

import re
import subprocess
from pathlib import Path

import pytest

from edgec.errors import EdgecError
from edgec.report import pareto_front, write_compare_html, write_profile_html

CHROMIUM = Path("/usr/bin/chromium")
PROFILE_PLOTS = ("time", "roofline", "memory", "prompt")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="/usr/bin/chromium is absent (.ci/run installs Debian's chromium)")


def make_profile() -> dict:
    """A profile dict as `edgec profile --json` prints it, every optional part present."""
    ops = {"MatMulNBits": 0.9, "Attention": 0.3, "RMSNorm": 0.05, "Add": 0.02}
    layers = [{"layer": "embed", "ops": {"Gather": 0.01}, "ms": 0.01}]
    layers += [{"layer": str(i), "ops": dict(ops), "ms": sum(ops.values())} for i in range(4)]
    layers += [{"layer": "head", "ops": {"MatMulNBits": 1.1}, "ms": 1.1}]
    timeline = [[0.05 * i, 100 + 3 * i, "load"] for i in range(10)]
    timeline += [[0.5 + 0.05 * i, 140 + (i % 3), "prefill"] for i in range(6)]
    timeline += [[0.8 + 0.05 * i, 150 + (i % 2), "decode"] for i in range(20)] + [[1.9, 130, "idle"]]
    return {
        "artifact": "build/<tiny>&model", "backend": "onnx", "device": "host", "threads": 2,
        "prompt_tokens": 64, "new_tokens": 32, "prefill_ms": 40.0, "prefill_tok_s": 1600.0,
        "decode_ms_per_token": 6.4, "decode_tok_s": 156.2, "decode_kernel_ms": 5.9, "decode_overhead_ms": 0.5,
        "peak_memory_mb": 151.0, "weights_mb": 90.0, "memory_timeline": timeline,
        "weight_bytes_per_token": 9.0e7, "flops_per_token": 2.7e8, "achieved_gbs": 14.1, "achieved_gflops": 42.2,
        "roofline": {"bandwidth_gbs": 20.0, "peak_gflops": 400.0, "bandwidth_share": 0.7, "compute_share": 0.1,
                     "source": "measured on this machine: numpy streaming read of 1 GiB, 2 threads"},
        "decode_ops": [{"op": op, "calls": 4.0, "ms": ms * 4, "share": ms / 1.27} for op, ms in ops.items()],
        "prefill_ops": [{"op": "MatMulNBits", "calls": 5.0, "ms": 30.0, "share": 0.75},
                        {"op": "Attention", "calls": 4.0, "ms": 10.0, "share": 0.25}],
        "layers": layers,
        "roofline_ops": [{"op": op, "layer": str(i), "intensity": 2.0 * (k + 1) * (1 + 20 * (phase == "prefill")),
                          "gflops": 10.0 * (k + 1) * (1 + 5 * (phase == "prefill")), "ms": 0.1, "phase": phase}
                         for k, op in enumerate(ops) for i in range(2) for phase in ("decode", "prefill")]
        + [{"op": "Add", "layer": "0", "intensity": 0.0, "gflops": 1.0, "ms": 0.1, "phase": "decode"}],
        "by_prompt_length": [{"prompt_tokens": n, "prefill_tok_s": 2000.0 - n, "decode_tok_s": 160.0 - n / 32,
                              "estimated_prefill_tok_s": 1900.0 - n, "estimated_decode_tok_s": None}
                             for n in (16, 64, 256, 1024)],
        "estimates": [{"device": "rpi5", "description": "Raspberry Pi 5 <8 GB>", "label": "estimate",
                       "decode_tok_s": 30.5, "prefill_tok_s": 210.0, "memory_mb": 160.0, "bandwidth_gbs": 9.0,
                       "peak_gflops": 60.0, "sources": {"bandwidth_gbs": "datasheet: LPDDR4X-4267 <x32>"},
                       "bound": {"memory": 0.8, "compute": 0.1, "overhead": 0.1}}],
        "instructions_per_token": 123456789, "instructions_note": "aarch64 build counted under qemu",
        "notes": ["decode timings <b>include</b> the sampler"],
    }


def make_compare() -> dict:
    def row(name, device, size, ppl, speed, **kw):
        return {"name": name, "artifact": f"build/{name}", "recipe": name, "backend": "c", "device": device,
                "size_mb": size, "bits_per_weight": 4.5, "perplexity": ppl, "kl": None, "decode_tok_s": speed,
                "prefill_tok_s": 10 * (speed or 0), "speed_source": "measured", "error": None, **kw}

    return {"quality_metric": "perplexity", "devices": ["host", "rpi5"], "notes": ["same 16,384 tokens"],
            "rows": [row("fp32", "host", 540.0, 20.0, 40.0), row("fp16", "host", 270.0, 20.1, 70.0),
                     row("int8", "host", 140.0, 20.5, 120.0), row("int4-slow", "host", 80.0, 25.0, 100.0),
                     row("int4", "host", 80.0, 23.0, 160.0),
                     row("int4", "rpi5", 80.0, 23.0, 20.0, speed_source="estimate"),
                     row("int8", "rpi5", 140.0, 20.5, 12.0, speed_source="estimate"),
                     row("broken", "host", 0.0, None, None, error="build failed: <out of memory>"),
                     row("unscored", "host", 80.0, None, 150.0)]}


def assert_not_blank(png: Path, min_share: float = 0.01):
    """Pixel variance and a share of pixels away from the background (the corner colour)."""
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(png)[..., :3]
    assert pixels.var() > 0, png
    differs = np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 0.05
    assert differs.mean() > min_share, (png, differs.mean())


def assert_self_contained(text: str, n_images: int):
    assert "http://" not in text and "https://" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == n_images and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<style>" in text


@pytest.fixture(scope="module")
def profile_report(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("report") / "profile.html"
    return out, write_profile_html(make_profile(), out)


def test_profile_report_files_and_content(profile_report):
    out, written = profile_report
    assert written == [out.with_name(f"profile-{name}.png") for name in PROFILE_PLOTS] + [out]
    text = out.read_text()
    assert_self_contained(text, len(PROFILE_PLOTS))
    for png in written[:-1]:
        assert_not_blank(png)
    assert "build/&lt;tiny&gt;&amp;model" in text and "&lt;b&gt;include&lt;/b&gt;" in text  # escaped
    assert "<b>include" not in text
    assert "123,456,789" in text and "aarch64 build counted under qemu" in text
    assert "estimate" in text and "datasheet: LPDDR4X-4267 &lt;x32&gt;" in text
    assert "numpy streaming read of 1 GiB" in text
    assert not list(out.parent.glob(".*tmp*"))  # no temp files left


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium prints dbus/GPU warnings on stderr; only stdout and the exit status matter."""
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=3000", *args],
                          capture_output=True, text=True, timeout=60, check=True)


@needs_chromium
def test_chromium_renders_every_image(profile_report, tmp_path):
    out, _ = profile_report
    dom = run_chromium(tmp_path, "--dump-dom", out.resolve().as_uri()).stdout
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert loaded, dom[:500]
    assert int(loaded.group(1)) == len(PROFILE_PLOTS)


@needs_chromium
def test_chromium_screenshot_not_blank(profile_report, tmp_path):
    out, _ = profile_report
    shot = tmp_path / "shot.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", out.resolve().as_uri())
    assert_not_blank(shot)


def test_pareto_front():
    points = [(10.0, 5.0), (20.0, 6.0), (15.0, 7.0), (5.0, 5.0), (20.0, 6.0), (30.0, 9.0), (30.0, 10.0)]
    # (15,7) is beaten by (20,6); (5,5) by (10,5); (30,10) by (30,9); the two (20,6) tie and both stay
    assert pareto_front(points) == [0, 1, 4, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]


def test_compare_report(tmp_path):
    out = tmp_path / "compare.htm"
    written = write_compare_html(make_compare(), out)
    assert written == [tmp_path / "compare-quality.png", out]
    assert_not_blank(written[0])
    text = out.read_text()
    assert_self_contained(text, 1)
    assert "build failed: &lt;out of memory&gt;" in text  # the error row stays in the table
    assert "unscored" in text and "not measured" in text
    assert "estimate" in text and "same 16,384 tokens" in text


def test_compare_report_without_chartable_rows(tmp_path):
    compare = make_compare()
    compare["quality_metric"] = "kl"  # no row has a KL
    written = write_compare_html(compare, tmp_path / "c.html")
    assert written == [tmp_path / "c.html"]
    assert "chart not measured" in written[0].read_text()


@pytest.mark.parametrize("name, message", [
    ("missing/report.html", r"the folder .*missing for the report report.html does not exist: create it first"),
    ("report.png", r"must end in \.html or \.htm"),
    ("report", r"must end in \.html or \.htm"),
])
@pytest.mark.parametrize("writer, data", [(write_profile_html, make_profile()), (write_compare_html, make_compare())])
def test_bad_output_path(tmp_path, writer, data, name, message):
    with pytest.raises(EdgecError, match=message) as info:
        writer(data, tmp_path / name)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_profile_with_nothing_optional_still_renders(tmp_path):
    profile = {k: v for k, v in make_profile().items()
               if k not in ("peak_memory_mb", "weights_mb", "instructions_per_token", "instructions_note", "notes")}
    profile.update(layers=[], roofline_ops=[], memory_timeline=[], by_prompt_length=[], estimates=[], prefill_ops=[],
                   roofline=None, achieved_gflops=None)
    out = tmp_path / "bare.html"
    written = write_profile_html(profile, out)
    assert written == [tmp_path / "bare-time.png", out]  # the time plot falls back to decode_ops
    assert_not_blank(written[0])
    text = out.read_text()
    assert_self_contained(text, 1)
    for title in ("Roofline", "Memory over time", "Speed against prompt length"):
        assert f"{title}: not measured" in text
    assert "instructions per token" not in text
    profile["decode_ops"] = []
    assert write_profile_html(profile, out) == [out]
    assert "Decode time per layer and op type: not measured" in out.read_text()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import edgec.report

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(edgec.report.os, "replace", disk_full)
    with pytest.raises(EdgecError, match="cannot write the report .*No space left on device"):
        write_profile_html(make_profile(), tmp_path / "p.html")
    assert list(tmp_path.iterdir()) == []
