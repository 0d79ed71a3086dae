"""`edgec sweep`: build, evaluate and profile every (recipe, device) cell of a grid as Ray tasks.

A cell is one task (`run_cell`, module-level so Ray workers import it by name): it builds into
DIR/cells/<recipe>@<device>/artifact, optionally evaluates the artifact and measures its speed (on
this machine for `host`, a roofline estimate for any other device), and writes result.json there
atomically. A failed cell (any exception) records its one-line error and never stops the others.

Resumable: result.json keeps the cell's key (model path and SHA-256, the recipe's passes and options,
device, calibration text's SHA-256, evaluation and speed settings, edgec version) and the artifact's
manifest SHA-256; a cell whose result says ok for the same key, with that artifact still in place,
is reported "cached" and not run again. Failed cells run again.

The table at the end is edgec.compare's, made from the rows the cells returned (edgec.compare.entry).
Local Ray by default; `address` joins a running cluster (docs/sweep.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Callable

from . import __version__
from .compare import (SPEED_NEW, SPEED_PROMPT, artifact_id, assemble, check_devices, check_eval_options, entry,
                      evaluate_artifact, one_line, speed_of, write_json)
from .errors import EdgecError

RESULT = "result.json"
SWEEP_JSON = "sweep.json"
SWEEP_HTML = "sweep.html"
LOCAL_OBJECT_STORE = 200 << 20  # cells return small dicts; Ray's default (30% of RAM) only reserves memory
CONNECT_TIMEOUT_S = 3.0

Progress = Callable[[str], None]


# -- one cell: runs in a Ray worker -------------------------------------------------------------
def run_cell(spec: dict) -> dict:
    """Build, evaluate and time one (recipe, device) cell; write and return its result (never raises)."""
    from .artifact import open_artifact
    from .pipeline import build

    t0 = time.perf_counter()
    cell_dir = Path(spec["dir"])
    art, manifest, manifest_bytes, notes = cell_dir / "artifact", None, None, []
    result = {"name": spec["name"], "recipe": spec["recipe_name"], "device": spec["device"], "key": spec["key"],
              "status": "failed", "error": None, "artifact": str(art), "artifact_id": None}
    threads = spec["cpus"]
    try:
        _limit_threads(threads)
        cell_dir.mkdir(parents=True, exist_ok=True)
        build(spec["model"], art, device=spec["device"], recipe=spec["recipe"], calib=spec["calib"],
              calib_samples=spec["calib_samples"], calib_seqlen=spec["calib_seqlen"], progress=None, force=True)
        opened = open_artifact(art)
        manifest, manifest_bytes = opened.manifest, opened.manifest_bytes
        opened.close()
        quality = None
        if spec["eval"]:
            ev = spec["eval"]
            quality, notes = evaluate_artifact(art, manifest, text=ev["text"], window=ev["window"],
                                               max_tokens=ev["max_tokens"], threads=threads)
        speed = None
        if spec["profile"]:
            speed = speed_of(art, manifest, spec["device"], prompt_tokens=spec["profile"]["prompt_tokens"],
                             new_tokens=spec["profile"]["new_tokens"], threads=threads)
        result.update(status="ok", artifact_id=artifact_id(manifest_bytes),
                      entry=entry(art, manifest, name=spec["name"], device=spec["device"], quality=quality,
                                  speed=speed, notes=notes))
    except Exception as e:  # noqa: BLE001 - a failed cell is a row with its error, whatever failed
        result["error"] = one_line(e)
        if not isinstance(e, EdgecError):
            result["traceback"] = traceback.format_exc()
        result["entry"] = failed_entry(spec, result["error"], manifest)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(cell_dir / RESULT, result)
    return result


def failed_entry(spec: dict, error: str, manifest: dict | None = None) -> dict:
    """The row of a failed cell: what its artifact says if the build got that far, its error either way."""
    return entry(Path(spec["dir"]) / "artifact", manifest, name=spec["name"], device=spec["device"],
                 recipe=spec["recipe_name"], error=error)


def _limit_threads(n: int) -> None:
    """Keep a cell within its Ray CPUs: torch (the build's passes, the reference model) and the
    native libraries that read OMP_NUM_THREADS; the runtimes get `threads` directly."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)


# -- the grid -------------------------------------------------------------------------------------
def _split(value, what: str) -> list[str]:
    items = [x.strip() for x in (value.split(",") if isinstance(value, str) else value) if x.strip()]
    if not items:
        raise EdgecError(f"--{what} needs at least one name")
    return items


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _absolute(p) -> str | None:
    """A path as workers see it (they may start elsewhere); hf:... and names stay as they are."""
    if p is None:
        return None
    path = Path(p).expanduser()
    return str(path.resolve()) if path.exists() else str(p)


def plan(model, recipes, devices, output=None, *, evaluate: bool = False, text=None, window: int = 512,
         max_tokens: int | None = None, profile: bool = False, prompt_tokens: int = SPEED_PROMPT,
         new_tokens: int = SPEED_NEW, calib=None, calib_samples: int | None = None, calib_seqlen: int | None = None,
         cpus_per_cell: int = 1) -> tuple[Path, list[dict]]:
    """(DIR, one spec per cell) after every check a sweep can make without starting anything: recipes,
    devices, the model path, calibration text for calibrated recipes, the evaluation text."""
    from .frontend import model_hash, resolve_source
    from .limits import check_int
    from .pipeline import calib_config
    from .recipes import load_recipe

    recipes = [_absolute(r) if Path(r).suffix else r for r in _split(recipes, "recipes")]  # a file, as workers see it
    devices = check_devices(_split(devices, "devices"))
    source = resolve_source(None if model is None else str(model))
    check_int(cpus_per_cell, "--cpus-per-cell", 1)
    loaded = []
    for r in recipes:
        rec = load_recipe(r)
        cfg = calib_config(rec, calib, calib_samples, calib_seqlen)
        calib_key = None
        if rec.needs_calibration:
            from .calibration import read_text

            calib_key = {"sha256": _sha(read_text(cfg.source)), "samples": cfg.samples, "seqlen": cfg.seqlen,
                         "seed": cfg.seed}
        loaded.append((r, rec, calib_key))
    names = [rec.name for _, rec, _ in loaded]
    if len(set(names)) < len(names):
        raise EdgecError(f"--recipes names a recipe twice: {', '.join(names)}")
    eval_spec = None
    if evaluate:
        eval_spec = {"text": _absolute(text), "window": window, "max_tokens": max_tokens,
                     "text_sha256": check_eval_options(text, window, max_tokens)}
    profile_spec = None
    if profile:
        if prompt_tokens < 1 or new_tokens < 2:
            raise EdgecError("sweep needs --prompt-tokens >= 1 and --new-tokens >= 2")
        profile_spec = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "threads": cpus_per_cell}
    out = Path(output) if output else Path("build") / f"sweep-{source.name}"
    if out.exists() and not out.is_dir():
        raise EdgecError(f"the sweep folder {out} is a file")
    out = out.expanduser().resolve()
    model_key = {"path": "default" if source.kind == "default" else str(source.path), "sha256": model_hash(source)}
    specs = []
    for r, rec, calib_key in loaded:
        for dev in devices:
            name = f"{rec.name}@{dev}"
            key = {"model": model_key, "recipe": rec.to_dict(), "device": dev, "calib": calib_key,
                   "eval": eval_spec and {k: v for k, v in eval_spec.items() if k != "text"},
                   "profile": profile_spec, "edgec": __version__}
            specs.append({"name": name, "recipe": r, "recipe_name": rec.name,
                          "device": dev, "dir": str(out / "cells" / name), "model": None if source.kind == "default"
                          else str(source.path), "calib": _absolute(calib) if calib_key else None,
                          "calib_samples": calib_samples, "calib_seqlen": calib_seqlen, "eval": eval_spec,
                          "profile": profile_spec, "cpus": cpus_per_cell, "key": json.loads(json.dumps(key))})
    return out, specs


def cached(spec: dict) -> dict | None:
    """The cell's earlier result if it is ok, for the same key, and its artifact is still the one it built."""
    cell_dir = Path(spec["dir"])
    try:
        r = json.loads((cell_dir / RESULT).read_text())
        same = artifact_id((cell_dir / "artifact" / "manifest.json").read_bytes()) == r.get("artifact_id")
    except (OSError, ValueError):
        return None
    return r if isinstance(r, dict) and r.get("status") == "ok" and r.get("key") == spec["key"] and same else None


# -- Ray --------------------------------------------------------------------------------------------
def check_address(address: str) -> tuple[str, int]:
    """HOST:PORT of a Ray cluster that answers a TCP connect, else a one-line error (nothing waits on Ray's
    own retries, which take a minute)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EdgecError(f"--address must be HOST:PORT (the head node's GCS port, 6379 by default), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise EdgecError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                         "`ray start --head` or leave --address out for a local Ray") from None
    return host, int(port)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise EdgecError("edgec sweep runs its cells on Ray, which is not installed: pip install 'edgec[sweep]'") \
            from None
    return ray


def _send_ray_token() -> None:
    """A cluster started with `ray start` where a Ray token exists (~/.ray/auth_token: a local ray.init writes
    one) requires it, but a client given an explicit address sends it only with RAY_AUTH_MODE=token. Sending it
    to a cluster without authentication is harmless, so send it whenever there is one and no mode is set."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def _restore_sigterm(handler) -> None:
    """ray.init installs its own SIGTERM handler (a stack dump, then exit); keep the caller's, so a killed sweep
    unwinds like Ctrl-C: it cancels its cells and stops its Ray (edgec.cli turns SIGTERM into KeyboardInterrupt)."""
    if callable(handler):
        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: signals are not ours to set
            pass


def connect(address: str | None, cpus_per_cell: int, memory_per_cell: int | None) -> bool:
    """Start a local Ray or join the cluster at `address`; True when this call started the connection (so the
    sweep shuts it down). A Ray this process already joined is used as it is (an embedding program, tests)."""
    from .limits import available_cpus

    if address:
        _send_ray_token()  # before Ray is imported: it reads its settings from the environment then
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        on_term = signal.getsignal(signal.SIGTERM)
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(num_cpus=available_cpus(), object_store_memory=LOCAL_OBJECT_STORE, **quiet)
        except Exception as e:  # noqa: BLE001 - Ray raises several types for a refused connection or a failed start
            if not address:
                raise EdgecError(f"cannot start a local Ray: {one_line(e)}") from None
            raise EdgecError(f"cannot connect to the Ray cluster at {address}: {one_line(e)} (with token "
                             "authentication its token must be here: ~/.ray/auth_token, RAY_AUTH_TOKEN or "
                             "RAY_AUTH_TOKEN_PATH)") from None
        _restore_sigterm(on_term)
    elif address and ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1] != address.rsplit(":", 1)[-1]:
        raise EdgecError(f"this process is already connected to the Ray cluster at "
                         f"{ray.get_runtime_context().gcs_address}, not {address}")
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if not any(n.get("CPU", 0) >= cpus_per_cell for n in nodes):
            raise EdgecError(f"--cpus-per-cell {cpus_per_cell}: no Ray node has that many CPUs "
                             f"(largest: {max((n.get('CPU', 0) for n in nodes), default=0):g})")
        if memory_per_cell and not any(n.get("memory", 0) >= memory_per_cell for n in nodes):
            raise EdgecError(f"--memory-per-cell {memory_per_cell / 1e9:g} GB: no Ray node has that much memory "
                             f"(largest: {max((n.get('memory', 0) for n in nodes), default=0) / 1e9:.1f} GB)")
    except BaseException:
        if started:
            ray.shutdown()
        raise
    return started


def _run_on_ray(specs: list[dict], address, cpus_per_cell: int, memory_per_cell: int | None, report) -> None:
    """Run the cells as Ray tasks, `report(spec, result)` as each finishes."""
    started = connect(address, cpus_per_cell, memory_per_cell)
    ray = _import_ray()
    env = {k: v for k, v in os.environ.items() if k.startswith("EDGEC_")}  # config, cache, data folders
    options = {"num_cpus": cpus_per_cell, "max_retries": 0, "runtime_env": {"env_vars": env}}
    if memory_per_cell:
        options["memory"] = memory_per_cell
    task = ray.remote(run_cell).options(**options)
    pending = {}
    try:
        pending = {task.remote(spec): spec for spec in specs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the worker died (out of memory, a crash): that cell failed
                    result = {"name": spec["name"], "recipe": spec["recipe_name"], "device": spec["device"],
                              "key": spec["key"], "status": "failed", "error": f"the Ray task died: {one_line(e)}",
                              "seconds": None}
                    result["entry"] = failed_entry(spec, result["error"])
                report(spec, result)
    finally:
        for ref in pending:  # interrupted: the cells still running are not wanted any more
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort while unwinding
                pass
        if started:
            ray.shutdown()


def sweep(model, recipes, devices=("host",), output=None, *, evaluate: bool = False, text=None, window: int = 512,
          max_tokens: int | None = None, profile: bool = False, prompt_tokens: int = SPEED_PROMPT,
          new_tokens: int = SPEED_NEW, calib=None, calib_samples: int | None = None, calib_seqlen: int | None = None,
          address: str | None = None, cpus_per_cell: int = 1, memory_per_cell_gb: float | None = None,
          html=None, progress: Progress | None = None) -> dict:
    """Run the grid recipes x devices (see the module docstring); returns the sweep dict also written to
    DIR/sweep.json: {"model", "output", "cells": [{"name", "recipe", "device", "status", "seconds", "error"}],
    "compare": edgec.compare's dict}. html: the report's path (default DIR/sweep.html; False: none)."""
    say = progress or (lambda msg: None)
    if html not in (None, False):
        from .report import check_html_path

        check_html_path(html)
    if memory_per_cell_gb is not None and not memory_per_cell_gb > 0:
        raise EdgecError(f"--memory-per-cell must be a positive number of GB, got {memory_per_cell_gb}")
    if address:
        check_address(address)
    out, specs = plan(model, recipes, devices, output, evaluate=evaluate, text=text, window=window,
                      max_tokens=max_tokens, profile=profile, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                      calib=calib, calib_samples=calib_samples, calib_seqlen=calib_seqlen, cpus_per_cell=cpus_per_cell)
    if not address:
        from .limits import available_cpus

        if cpus_per_cell > available_cpus():
            raise EdgecError(f"--cpus-per-cell {cpus_per_cell}: this machine has {available_cpus()} CPUs for a "
                             "local Ray")
    results: dict[str, dict] = {}

    def report(spec, result, status=None):
        status = status or result["status"]
        results[spec["name"]] = {**result, "status": status}
        if status != "cached":
            write_json(Path(spec["dir"]) / RESULT, result)  # also when the worker wrote it on another node
        done = f"{result.get('seconds') or 0:.0f} s" if status == "ok" else ""
        say(f"[{len(results)}/{len(specs)}] {spec['name']} {status}"
            + (f": {result['error']}" if status == "failed" else f" {done}".rstrip()))

    (out / "cells").mkdir(parents=True, exist_ok=True)
    todo = []
    for spec in specs:
        hit = cached(spec)
        if hit:
            report(spec, hit, "cached")
        else:
            todo.append(spec)
    if todo:
        say(f"running {len(todo)} cell{'s' * (len(todo) != 1)} on "
            f"{'the Ray cluster at ' + address if address else 'a local Ray'} ({cpus_per_cell} CPU{'s' * (cpus_per_cell != 1)} each)")
        memory = int(memory_per_cell_gb * 1e9) if memory_per_cell_gb else None
        _run_on_ray(todo, address, cpus_per_cell, memory, report)

    ordered = [results[s["name"]] for s in specs]
    data = {"model": str(model) if model is not None else "default", "output": str(out),
            "cells": [{k: r.get(k) for k in ("name", "recipe", "device", "status", "seconds", "error")}
                      for r in ordered],
            "compare": assemble([r["entry"] for r in ordered])}
    write_json(out / SWEEP_JSON, data)
    if html is not False:
        from .report import write_compare_html

        write_compare_html(data["compare"], html or out / SWEEP_HTML)
    return data


__all__ = ["cached", "check_address", "plan", "run_cell", "sweep"]
