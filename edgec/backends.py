"""The backend contract, written once, and the registry of backends (imported lazily, so `edgec`
never loads TVM or a toolchain it does not use).

A backend is a `Backend` subclass in edgec.targets.<name>.backend, exported there as BACKEND:

- `options`: the schema of its table, `[backend.<name>]` in device profiles and recipes and
  `--backend-opt key=value` on the command line (later sources win; unknown keys are refused with
  the valid ones listed). `stage="build"` options shape the compiled files; `stage="run"` ones
  configure the executor and may be overridden when the artifact is opened.
- `prelower`: passes run on the final IR before `compile` (phase "prelower", seen in --dump-ir):
  graph rewrites only this backend wants.
- `check(device, recipe, options)`: fail before any slow work; returns the options compile gets.
- `compile(graph, out_dir, device, options, progress)`: writes the backend's files into
  out_dir (the artifact's model/) and returns metadata for the manifest ({"files": [...], ...}).
- `open(files, interface, options, threads)`: an `Executor` (edgec.executor) over the verified files.
- `traces_ops`: True if `open(..., trace_dir=DIR)` gives an executor whose `op_trace()` returns,
  per run, (wall microseconds, "op type@where" -> [calls, kernel microseconds]) (`edgec profile`);
  `where` is a layer label (edgec.ir.cost.layer_labels), a node name that begins with the IR node's
  first output name (`name/...`), or empty when the backend cannot tell.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import EdgecError

_TYPES = {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list of strings"}


@dataclass(frozen=True)
class Option:
    """One backend option: its type, default, limits and what it does (for errors and --help)."""

    type: type
    default: Any = None
    doc: str = ""
    stage: str = "run"          # "build": shapes the compiled files; "run": configures the executor
    choices: tuple = ()
    min: float | None = None
    max: float | None = None

    def check(self, key: str, value, where: str):
        """value converted to the option's type, or a one-line EdgecError saying what is allowed."""
        if self.type is str and isinstance(value, os.PathLike):
            value = os.fspath(value)
        ok = isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if self.type is list:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            value = list(value) if ok else value
        if not ok:
            raise EdgecError(f"{where}: {key} must be {_TYPES[self.type]}, got {value!r}")
        if self.choices and value not in self.choices:
            raise EdgecError(f"{where}: {key} must be one of {list(self.choices)}, got {value!r}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise EdgecError(f"{where}: {key} must be between {self.min} and {self.max}, got {value!r}")
        return value

    def parse(self, key: str, text: str, where: str):
        """A command-line string (`--backend-opt key=text`) as the option's type."""
        if self.type is bool:
            low = text.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise EdgecError(f"{where}: {key} must be true or false, got {text!r}")
            return self.check(key, low in ("1", "true", "yes", "on"), where)
        if self.type is list:
            return self.check(key, [t.strip() for t in text.split(",") if t.strip()], where)
        try:
            value = self.type(text)
        except ValueError:
            raise EdgecError(f"{where}: {key} must be {_TYPES[self.type]}, got {text!r}") from None
        return self.check(key, value, where)


class Backend:
    """The contract every backend implements (see the module docstring)."""

    name: str = ""
    description: str = ""
    options: dict[str, Option] = {}
    prelower: list[tuple[str, dict]] = []
    traces_ops: bool = False

    def check_options(self, options: dict | None, where: str) -> dict:
        """The given options, each checked against the schema (no defaults filled in; None = unset)."""
        options = {k: v for k, v in (options or {}).items() if v is not None}
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise EdgecError(f"{where}: the {self.name} backend has no option(s) {unknown}; "
                             f"valid: {', '.join(sorted(self.options)) or 'none'}")
        return {k: self.options[k].check(k, v, where) for k, v in options.items()}

    def parse_options(self, pairs: list[str] | tuple[str, ...], where: str = "--backend-opt") -> dict:
        """`key=value` strings (the command line) as checked options."""
        out = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise EdgecError(f"{where}: expected key=value, got {pair!r}")
            if key not in self.options:
                self.check_options({key: text}, where)  # raises, listing the valid keys
            out[key] = self.options[key].parse(key, text, where)
        return out

    def resolve(self, options: dict) -> dict:
        """Every option with its default filled in."""
        return {k: options.get(k, o.default) for k, o in self.options.items()}

    def run_options(self, options: dict) -> dict:
        return {k: v for k, v in options.items() if k in self.options and self.options[k].stage == "run"}

    # -- what a backend implements -------------------------------------------------
    def check(self, device, recipe, options: dict) -> dict:
        return options

    def compile(self, graph, out_dir, device, options: dict,
                progress: Callable[[str], None] | None = None) -> dict:
        raise NotImplementedError

    def open(self, files, *, interface=None, options: dict | None = None, threads: int | None = None):
        raise NotImplementedError


# name -> (module exporting BACKEND, one line for --help without importing it)
BACKENDS = {
    "onnx": ("edgec.targets.onnx.backend", "ONNX Runtime (CPU; CUDA EP on GPUs)"),
    "tvm": ("edgec.targets.tvm.backend", "Apache TVM (llvm for x86-64/aarch64, cuda); needs apache-tvm"),
    "c": ("edgec.targets.c.backend", "edgec's embedded C runtime: generated C + a small runtime, no dependencies "
          "(x86-64 AVX2, aarch64 NEON)"),
    "reference": ("edgec.targets.reference.backend", "edgec's IR interpreter: no runtime dependency, slow "
                  "(for debugging a build)"),
}
PLANNED: dict[str, str] = {}


def get_backend(name: str) -> Backend:
    if name in BACKENDS:
        return importlib.import_module(BACKENDS[name][0]).BACKEND
    if name in PLANNED:
        raise EdgecError(f"backend {name!r} ({PLANNED[name]}) is not available in this version; "
                         f"use one of: {', '.join(BACKENDS)}")
    raise EdgecError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


def describe(name: str) -> str:
    return BACKENDS[name][1]
