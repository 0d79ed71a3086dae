"""Recipes: named or file-based lists of compression passes with their options.

A recipe file (TOML or YAML) looks like:

    name = "int4-gptq"
    description = "weight-only int4 GPTQ, group size 128"
    [calibration]              # optional: defaults for --calib/--calib-samples/--calib-seqlen
    samples = 128
    seqlen = 512
    [kv_cache]                 # optional: options of the kv_cache pass (e.g. bits = 8)
    [backend.onnx]             # optional: build options of a backend (its schema: targets/<name>/backend.py),
    accuracy_level = 4         #   e.g. MatMulNBits' compute type; they win over the device profile's
    [[passes]]
    name = "gptq"              # any registered pass; the other keys are its options
    phase = "compress"         # optional: the pipeline phase it joins (default compress; see PHASES)
    bits = 4
    group_size = 128

Named recipes ship as TOML files beside this module. Recipes compose with
`+`: `wanda-2:4+int4-gptq` runs wanda-2:4's passes, then int4-gptq's.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgec.errors import EdgecError

_DIR = Path(__file__).resolve().parent
# Phases a recipe's pass may join (edgec.pipeline runs them in this order); its passes run after
# the phase's own. compress holds nothing else: it is the recipe's.
PHASES = ("raise", "compress", "fuse", "lower")


@dataclass
class Recipe:
    name: str
    description: str = ""
    passes: list[tuple[str, dict]] = field(default_factory=list)
    source: str = ""
    calibration: dict = field(default_factory=dict)
    kv_cache: dict = field(default_factory=dict)
    backend_options: dict = field(default_factory=dict)  # backend name -> its [backend.<name>] table
    phases: dict = field(default_factory=dict)  # phase other than compress -> [(pass, options)]

    def passes_for(self, phase: str) -> list[tuple[str, dict]]:
        """The recipe's passes that join `phase` (compress: `passes`)."""
        return list(self.passes) if phase == "compress" else list(self.phases.get(phase, []))

    def options_for(self, backend: str) -> dict:
        return dict(self.backend_options.get(backend) or {})

    @property
    def needs_calibration(self) -> bool:
        from edgec.passes import get_pass

        return any(get_pass(n).needs_calibration for n, _ in self.passes)

    def to_dict(self) -> dict:
        passes = [{"name": n, **o} for n, o in self.passes]
        passes += [{"name": n, "phase": ph, **o} for ph, entries in self.phases.items() for n, o in entries]
        return {"name": self.name, "description": self.description, "source": self.source, "passes": passes,
                "calibration": self.calibration, "kv_cache": self.kv_cache, "backend": self.backend_options}


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = tomllib.loads(text)
    except OSError as e:
        raise EdgecError(f"cannot read recipe {path}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - TOML/YAML syntax errors
        raise EdgecError(f"recipe {path} is not valid {'YAML' if path.suffix != '.toml' else 'TOML'}: "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EdgecError(f"recipe {path} must be a table with 'name' and 'passes'")
    return data


_CALIB_KEYS = {"source", "samples", "seqlen", "seed"}


def _parse(path: Path) -> Recipe:
    from edgec.passes import get_pass

    data = _read(path)
    if "onnx" in data:
        raise EdgecError(f"recipe {path}: the [onnx] table is now [backend.onnx] (same keys)")
    unknown = set(data) - {"name", "description", "passes", "calibration", "kv_cache", "backend"}
    if unknown:
        raise EdgecError(f"recipe {path}: unknown key(s) {sorted(unknown)}")
    passes, phases = [], {}
    for i, entry in enumerate(data.get("passes") or []):
        if not isinstance(entry, dict) or "name" not in entry:
            raise EdgecError(f"recipe {path}: passes[{i}] needs a 'name'")
        phase = entry.get("phase", "compress")
        if phase not in PHASES:
            raise EdgecError(f"recipe {path}: passes[{i}] phase {phase!r} is not one of {', '.join(PHASES)}")
        opts = {k: v for k, v in entry.items() if k not in ("name", "phase")}
        get_pass(entry["name"]).check_options(opts)
        (passes if phase == "compress" else phases.setdefault(phase, [])).append((entry["name"], opts))
    calib = dict(data.get("calibration") or {})
    if set(calib) - _CALIB_KEYS:
        raise EdgecError(f"recipe {path}: [calibration] takes {sorted(_CALIB_KEYS)}")
    kv = dict(data.get("kv_cache") or {})
    get_pass("kv_cache").check_options(kv)
    backends = data.get("backend") or {}
    if not isinstance(backends, dict) or not all(isinstance(t, dict) for t in backends.values()):
        raise EdgecError(f"recipe {path}: [backend.<name>] must be tables of options")
    # each table is checked by its backend at build time (edgec.pipeline), with the valid keys listed
    return Recipe(str(data.get("name", path.stem)), str(data.get("description", "")), passes, str(path),
                  calib, kv, {k: dict(v) for k, v in backends.items()}, phases)


def _named() -> dict[str, Path]:
    """Recipe name (as written inside the file) -> file."""
    out = {}
    for p in sorted(_DIR.glob("*.toml")):
        out[str(_read(p).get("name", p.stem))] = p
    return out


def list_recipes() -> dict[str, str]:
    """Named recipes -> one-line description."""
    return {name: str(_read(p).get("description", "")) for name, p in _named().items()}


def _load_one(name: str) -> Recipe:
    path = Path(name)
    if path.suffix in (".toml", ".yaml", ".yml"):
        if not path.is_file():
            raise EdgecError(f"recipe file {name!r} does not exist")
        return _parse(path)
    named = _named()
    if name not in named:
        raise EdgecError(f"unknown recipe {name!r}; choose one of: {', '.join(named)} "
                         "or pass a .toml/.yaml recipe file (see `edgec recipes`)")
    return _parse(named[name])


def load_recipe(recipe: str | Path | None) -> Recipe:
    """A named recipe (`int4-gptq`), a recipe file, or a `+` composition of them."""
    spec = str(recipe or "fp32")
    parts = [_load_one(p.strip()) for p in spec.split("+")]
    if len(parts) == 1:
        return parts[0]
    merged = Recipe("+".join(p.name for p in parts),
                    " then ".join(p.description or p.name for p in parts), source=spec)
    for p in parts:
        merged.passes += p.passes
        merged.calibration.update(p.calibration)
        merged.kv_cache.update(p.kv_cache)
        for name, table in p.backend_options.items():
            merged.backend_options.setdefault(name, {}).update(table)
        for phase, entries in p.phases.items():
            merged.phases.setdefault(phase, []).extend(entries)
    return merged
