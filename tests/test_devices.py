"""Device profiles load, are typed right, and host detection gives usable numbers."""

import dataclasses
import json

import pytest

from edgec.backends import get_backend

from edgec.devices import Device, get_device, list_devices
from edgec.errors import EdgecError

REQUIRED = {"host", "x86-avx2", "rpi5", "pixel8", "jetson-orin-nano", "jetson-agx-orin", "cuda"}


def test_list_devices_has_required_names_sorted():
    names = list_devices()
    assert REQUIRED <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_device_fields_typed(name):
    d = get_device(name)
    assert isinstance(d, Device) and d.name == name
    for attr in ("description", "kind", "cpu_triple", "mcpu", "gpu_arch",
                 "default_backend", "default_recipe"):
        assert isinstance(getattr(d, attr), str), attr
    assert d.description and d.cpu_triple and d.default_recipe
    assert d.kind in ("cpu", "gpu")
    assert isinstance(d.cores, int) and d.cores > 0
    for attr in ("memory_gb", "memory_bandwidth_gbs", "peak_int8_tops", "peak_fp16_tflops"):
        value = getattr(d, attr)
        assert isinstance(value, float) and value > 0, attr
    for attr in ("cpu_features", "estimated"):
        value = getattr(d, attr)
        assert isinstance(value, tuple) and all(isinstance(x, str) for x in value), attr
    providers = d.options_for("onnx")["providers"]
    assert providers and providers[-1] == "CPUExecutionProvider"
    for backend, table in d.backend_options.items():  # every table is valid for its backend's schema
        get_backend(backend).check_options(table, f"device {d.name}")
    assert set(d.estimated) <= {f.name for f in dataclasses.fields(Device)}
    assert d.default_backend == "onnx"
    # GPU devices name their arch; CPU devices have none.
    assert (d.kind == "gpu") == d.gpu_arch.startswith("sm_")
    assert (d.kind == "gpu") == ("CUDAExecutionProvider" in providers)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_to_dict_is_json_and_round_trips(name):
    d = get_device(name)
    data = json.loads(json.dumps(d.to_dict()))
    assert Device(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}) == d


def test_device_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_device("rpi5").cores = 1


def test_published_figures():
    rpi = get_device("rpi5")
    assert (rpi.cores, rpi.mcpu, rpi.memory_gb) == (4, "cortex-a76", 8.0)
    assert rpi.cpu_triple.startswith("aarch64") and "dotprod" in rpi.cpu_features
    nano, agx = get_device("jetson-orin-nano"), get_device("jetson-agx-orin")
    assert (nano.gpu_arch, nano.cores, nano.memory_bandwidth_gbs) == ("sm_87", 6, 68.0)
    assert (agx.gpu_arch, agx.cores, agx.memory_gb, agx.memory_bandwidth_gbs) == ("sm_87", 12, 64.0, 204.8)
    assert get_device("pixel8").cores == 9
    assert {"avx2", "fma"} <= set(get_device("x86-avx2").cpu_features)


def test_host_detection():
    host = get_device("host")
    assert host.cores > 0 and host.memory_gb > 0
    assert host.peak_int8_tops > 0 and host.peak_fp16_tflops > 0
    assert host.cpu_triple.split("-")[0] in ("x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x")
    from edgec.hostperf import cached_figures

    measured = cached_figures()  # `edgec profile` / `edgec devices --measure` earlier in this test session
    if measured is None:
        assert "memory_bandwidth_gbs" in host.estimated and host.memory_bandwidth_gbs == 51.2  # the template
    else:
        assert "memory_bandwidth_gbs" not in host.estimated and host.memory_bandwidth_gbs == measured.bandwidth_gbs
    known = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avxvnni", "f16c",
             "neon", "dotprod", "fp16", "i8mm", "sve"}
    assert set(host.cpu_features) <= known
    assert host.default_recipe == "fp32"


def test_unknown_device_lists_all_names():
    with pytest.raises(EdgecError) as info:
        get_device("foo")
    message = str(info.value)
    assert "'foo'" in message and "\n" not in message
    for name in list_devices():
        assert name in message


PHONES_AND_BOARDS = ("rpi5", "pixel8", "jetson-orin-nano", "jetson-agx-orin")


def test_phones_and_boards_default_to_the_speed_recipe():
    from edgec.recipes import load_recipe

    for name in PHONES_AND_BOARDS:
        assert get_device(name).default_recipe == "int4-speed", name
    rec = load_recipe("int4-speed")
    assert [p for p, _ in rec.passes] == ["gptq", "quantize"] and rec.needs_calibration
    assert get_device("host").default_recipe == "fp32"  # a desktop build keeps the model as it is


def test_a_float_model_for_a_board_without_calib_is_a_one_line_error(tiny_llama, tmp_path):
    from click.testing import CliRunner

    from edgec.cli import main

    out = tmp_path / "rpi"
    r = CliRunner().invoke(main, ["build", str(tiny_llama), "-o", str(out), "--device", "rpi5", "-q"])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1, r.output
    assert "int4-speed" in r.output and "rpi5 profile's default recipe" in r.output and "--calib" in r.output
    assert "--recipe int4" in r.output and not out.exists()


def test_a_quantized_gguf_for_a_board_keeps_its_blocks(tmp_path):
    from gguf import GGMLQuantizationType

    from edgec.frontend import resolve_source
    from edgec.pipeline import default_recipe
    from tiny import save_tiny_gguf

    path = save_tiny_gguf(tmp_path / "t.gguf", GGMLQuantizationType.Q4_1)
    assert default_recipe(resolve_source(str(path)), get_device("rpi5")) == "source"
