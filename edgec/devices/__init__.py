"""Device profiles: what the planner, the backends and `edgec profile` know about a target.

Each device is one TOML file next to this module, so adding a device is a data
change, not a code change. `host` is a template completed by detection at run
time; every other profile carries published figures (sources in its comments).

Units: memory_gb is GiB (2**30 bytes, as RAM is sold); memory_bandwidth_gbs is
10**9 bytes/s and the peaks are 10**12 ops/s (as vendors publish them). Peaks
are dense (no structured sparsity). Field names listed in `estimated` hold
derived or assumed values rather than measured or vendor-published ones.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgec.errors import EdgecError

_DIR = Path(__file__).resolve().parent

# /proc/cpuinfo flag -> edgec feature name. Only what a backend may key on.
_X86_FLAGS = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
              "avx512_vnni": "avx512_vnni", "avx_vnni": "avxvnni", "f16c": "f16c"}
_ARM_FLAGS = {"asimd": "neon", "asimddp": "dotprod", "fphp": "fp16",
              "i8mm": "i8mm", "sve": "sve"}


@dataclass(frozen=True)
class Device:
    """One target device; immutable so a build cannot change it under the planner."""

    name: str
    description: str
    kind: str                       # "cpu" or "gpu"
    cpu_triple: str                 # e.g. "aarch64-linux-gnu"
    cpu_features: tuple[str, ...]   # e.g. ("neon", "dotprod", "fp16")
    mcpu: str                       # e.g. "cortex-a76"; "" for x86
    cores: int
    memory_gb: float
    memory_bandwidth_gbs: float
    peak_int8_tops: float
    peak_fp16_tflops: float
    gpu_arch: str                   # e.g. "sm_87"; "" when none
    default_backend: str            # "onnx" for now
    default_recipe: str
    estimated: tuple[str, ...] = ()  # names of fields whose values are estimates
    # Per-backend options, the [backend.<name>] tables (each backend's schema checks its own table).
    backend_options: dict = dataclasses.field(default_factory=dict, hash=False)

    def options_for(self, backend: str) -> dict:
        """This device's [backend.<backend>] table (empty if none)."""
        return dict(self.backend_options.get(backend) or {})

    def to_dict(self) -> dict:
        """Plain JSON-able dict (lists, not tuples) for manifests and `--json`."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


_FIELDS = {f.name: f for f in dataclasses.fields(Device)}
_TUPLES = {"cpu_features", "estimated"}
_FLOATS = {"memory_gb", "memory_bandwidth_gbs", "peak_int8_tops", "peak_fp16_tflops"}


def list_devices() -> list[str]:
    """Sorted names of all device profiles (one per TOML file)."""
    return sorted(p.stem for p in _DIR.glob("*.toml"))


def get_device(name: str) -> Device:
    """Load a device profile by name; `host` is filled in by detection."""
    names = list_devices()
    if name not in names:
        raise EdgecError(f"unknown device {name!r}; choose one of: {', '.join(names)} "
                         "(see `edgec devices`)")
    device = _load(_DIR / f"{name}.toml")
    return _detect_host(device) if name == "host" else device


def _load(path: Path) -> Device:
    """Parse and type-check one TOML file, so a typo fails here and not mid-build."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise EdgecError(f"device file {path} is not valid TOML: {e}") from None
    if isinstance(data.get("backend"), dict):  # the [backend.<name>] tables
        data["backend_options"] = data.pop("backend")
    missing = [k for k, f in _FIELDS.items()
               if k not in data and f.default is dataclasses.MISSING]
    unknown = [k for k in data if k not in _FIELDS]
    if missing or unknown:
        raise EdgecError(f"device file {path}: missing fields {missing}, unknown fields {unknown}")
    values = {}
    for key, value in data.items():
        if key in _TUPLES:
            ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
            value = tuple(value) if ok else value
        elif key in _FLOATS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif key == "cores":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif key == "backend_options":  # option names and values are checked by the backend that reads them
            ok = isinstance(value, dict) and all(isinstance(t, dict) for t in value.values())
        else:
            ok = isinstance(value, str)
        if not ok:
            raise EdgecError(f"device file {path}: field {key!r} has the wrong type "
                             f"({type(value).__name__})")
        values[key] = value
    if values["kind"] not in ("cpu", "gpu"):
        raise EdgecError(f"device file {path}: kind must be 'cpu' or 'gpu', not {values['kind']!r}")
    return Device(**values)


def _detect_host(template: Device) -> Device:
    """Fill the host template with what this machine reports, and with its measured bandwidth and int8 peak
    where they have been measured (edgec.hostperf); otherwise those stay the template's estimates."""
    cores = _cores()
    features = _cpu_features()
    ghz = _max_clock_ghz()
    int8_ops, fp16_flops = _ops_per_cycle(features)
    # Peaks count physical cores: SMT siblings share the vector units.
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or cores
    except ImportError:
        physical = cores
    compute_cores = max(1, min(cores, physical))
    host = dataclasses.replace(
        template,
        cpu_triple=_triple(),
        cpu_features=features,
        cores=cores,
        memory_gb=round(_memory_bytes() / 2**30, 2),
        peak_int8_tops=round(compute_cores * ghz * int8_ops / 1000, 3),
        peak_fp16_tflops=round(compute_cores * ghz * fp16_flops / 1000, 3),
        estimated=tuple(sorted(set(template.estimated) | {"memory_bandwidth_gbs"})),
    )
    from edgec.hostperf import cached_figures  # measured by `edgec profile` or `edgec devices --measure`

    measured = cached_figures()
    if measured is None:
        return host
    return dataclasses.replace(host, memory_bandwidth_gbs=measured.bandwidth_gbs,
                               peak_int8_tops=round(measured.peak_int8_gops / 1000, 3),
                               estimated=tuple(e for e in host.estimated
                                               if e not in ("memory_bandwidth_gbs", "peak_int8_tops")))


def _cores() -> int:
    """CPUs this process may use (respects taskset/cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _memory_bytes() -> int:
    """Physical memory, capped by a cgroup v2/v1 limit so containers are not overcommitted."""
    try:
        import psutil
        total = psutil.virtual_memory().total
    except ImportError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def _triple() -> str:
    """A GNU-style target triple for this machine."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    system = platform.system()
    suffix = {"Linux": "linux-gnu", "Darwin": "apple-darwin", "Windows": "pc-windows-msvc"}
    return f"{machine}-{suffix.get(system, system.lower())}"


def _cpu_features() -> tuple[str, ...]:
    """Vector features from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
            break  # all cores of one machine report the same ISA here
    table = _ARM_FLAGS if "asimd" in flags else _X86_FLAGS
    return tuple(sorted({table[f] for f in flags if f in table}))


def _max_clock_ghz() -> float:
    """Maximum core clock; falls back to 2.5 GHz where the OS hides it (VMs, containers)."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1e6
    except (OSError, ValueError):
        pass
    try:
        import psutil
        freq = psutil.cpu_freq()
        if freq and (freq.max or freq.current):
            return (freq.max or freq.current) / 1000
    except (ImportError, OSError, RuntimeError):
        pass
    return 2.5


def _ops_per_cycle(features: tuple[str, ...]) -> tuple[int, int]:
    """(int8 ops, fp16-or-fp32 flops) per cycle per core, assuming 2 vector pipes."""
    f = set(features)
    if "neon" in f:  # 2 x 128-bit ASIMD pipes
        int8 = 128 if "i8mm" in f else 64 if "dotprod" in f else 32
        return int8, 32 if "fp16" in f else 16
    if "avx512f" in f:  # 2 x 512-bit FMA
        return (256 if "avx512_vnni" in f else 128), 64
    if "avx2" in f:  # 2 x 256-bit FMA; fp16 is converted and computed in fp32
        return (128 if "avxvnni" in f else 64), (32 if "fma" in f else 16)
    return 16, 8
