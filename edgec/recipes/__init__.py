"""Recipes: named or file-based lists of compression passes with their options.

A recipe file (TOML or YAML) looks like:

    name = "fp16"
    description = "fp16 weight storage, fp32 compute"
    [[passes]]
    name = "fp16_weights"      # any registered pass; other keys are its options

Named recipes ship as TOML files beside this module.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgec.errors import EdgecError

_DIR = Path(__file__).resolve().parent


@dataclass
class Recipe:
    name: str
    description: str = ""
    passes: list[tuple[str, dict]] = field(default_factory=list)
    source: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "passes": [{"name": n, **o} for n, o in self.passes]}


def list_recipes() -> dict[str, str]:
    """Named recipes -> one-line description."""
    return {p.stem: _parse(p).description for p in sorted(_DIR.glob("*.toml"))}


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


def _parse(path: Path) -> Recipe:
    from edgec.passes import get_pass

    data = _read(path)
    passes = []
    for i, entry in enumerate(data.get("passes") or []):
        if not isinstance(entry, dict) or "name" not in entry:
            raise EdgecError(f"recipe {path}: passes[{i}] needs a 'name'")
        opts = {k: v for k, v in entry.items() if k != "name"}
        get_pass(entry["name"]).check_options(opts)
        passes.append((entry["name"], opts))
    return Recipe(str(data.get("name", path.stem)), str(data.get("description", "")), passes, str(path))


def load_recipe(recipe: str | Path | None) -> Recipe:
    """A named recipe (`fp16`) or a recipe file path (`my.toml`, `my.yaml`)."""
    name = str(recipe or "fp32")
    path = Path(name)
    if path.suffix in (".toml", ".yaml", ".yml"):
        if not path.is_file():
            raise EdgecError(f"recipe file {name!r} does not exist")
        return _parse(path)
    named = _DIR / f"{name}.toml"
    if not named.is_file():
        raise EdgecError(f"unknown recipe {name!r}; choose one of: {', '.join(list_recipes())} "
                         "or pass a .toml/.yaml recipe file (see `edgec recipes`)")
    return _parse(named)
