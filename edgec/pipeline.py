"""`edgec build`: frontend -> IR -> passes -> target -> artifact, one readable list.

Phases (each a list of passes, see `phases` and edgec.passes):
  1. import       model folder / GGUF / default -> torch.export -> IR
  2. canonicalize dead code, constant folding
  3. raise        rms_norm, rotary, gated MLPs
  4. compress     the recipe's passes (fp16 weights, quantization, pruning, ...)
  5. fuse         merged QKV / gate-up linears, add+rms_norm, rotary tables (skipped by fuse=False)
  6. lower        KV cache, so one graph serves prefill and decode
  7. prelower     the backend's own rewrites (edgec.backends.Backend.prelower)
  8. compile      the backend writes its files into the artifact
  9. write        tokenizer, IR text, build report, manifest (atomic)
A recipe's pass may join raise, fuse or lower instead of compress (its `phase` key).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

from . import __version__
from .artifact import ArtifactWriter
from .backends import Backend, get_backend
from .devices import get_device
from .errors import EdgecError
from .interface import ModelInterface
from .recipes import load_recipe

Progress = Callable[[str], None]


def default_output(model_name: str, recipe: str) -> Path:
    return Path("build") / f"{model_name}-{Path(recipe).stem}"


def _signature(graph) -> dict:
    return ModelInterface.of_graph(graph).to_signature()


def _generation_info(tokenizer, model) -> dict:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    return {"eos_token_ids": eos, "bos_token_id": tokenizer.bos_token_id,
            "has_chat_template": bool(getattr(tokenizer, "chat_template", None))}


def calib_config(recipe, calib=None, calib_samples=None, calib_seqlen=None, device_default: str | None = None):
    """Calibration settings: command-line values win over the recipe's [calibration] table.
    device_default: the device profile whose default recipe this is (named in the error)."""
    from .calibration import CalibConfig

    cfg = CalibConfig.from_settings(recipe.calibration, calib, calib_samples, calib_seqlen)
    if recipe.needs_calibration:
        from .calibration import read_text

        if cfg.source is None:
            whose = (f", the {device_default} profile's default recipe," if device_default else "")
            other = "; or choose a recipe that needs none, e.g. --recipe int4" if device_default else ""
            raise EdgecError(f"recipe {recipe.name!r}{whose} needs calibration data: pass --calib FILE "
                             f"(text in the model's language, e.g. ../shared/data/wikitext-2/valid.txt){other}")
        read_text(cfg.source)  # fail on a missing file now, not after loading the model
    return cfg


def phases(recipe, fuse: bool = True) -> list[tuple[str, list[tuple[str, dict]]]]:
    """Phases 2-6 as (name, passes): the fixed passes of each phase, then the recipe's for it."""
    from .passes import CANONICALIZE, FUSE, LOWER, RAISE

    lower = [(name, {**opts, **recipe.kv_cache}) for name, opts in LOWER]
    out = [("canonicalize", CANONICALIZE), ("raise", RAISE + recipe.passes_for("raise")),
           ("compress", recipe.passes_for("compress"))]
    if fuse:
        out.append(("fuse", FUSE + recipe.passes_for("fuse")))
    out.append(("lower", lower + recipe.passes_for("lower")))
    return out


def backend_options_for(backend: Backend, device, recipe, given=None) -> dict:
    """The backend's options for this build: the device profile's table, then the recipe's, then
    `given` (a dict, or `key=value` strings from --backend-opt), each checked against the schema."""
    given = backend.parse_options(given) if isinstance(given, (list, tuple)) else \
        backend.check_options(given, "backend options")
    return {**backend.check_options(device.options_for(backend.name), f"device {device.name} [backend.{backend.name}]"),
            **backend.check_options(recipe.options_for(backend.name), f"recipe {recipe.name} [backend.{backend.name}]"),
            **given}


def compile_ir(model: str | Path | None, recipe, *, device=None, backend: str | None = None,
               progress: Progress | None = None, dump_ir: str | Path | None = None, calib=None,
               fuse: bool = True):
    """Phases 1-6: import MODEL and run every pass; returns (ImportedModel, PassManager).

    `imported.graph` is the final backend-neutral IR (the backend's prelower phase runs in
    write_artifact); tests run it in the reference interpreter. device/backend (default: host
    and its default backend) reach every pass through its PassContext.
    """
    from .frontend import import_model
    from .passes import PassContext, PassManager

    dev = get_device(device or "host") if device is None or isinstance(device, str) else device
    rec = recipe if hasattr(recipe, "passes") else load_recipe(recipe)
    calib = calib if calib is not None else calib_config(rec)
    imported = import_model(None if model is None else str(model), progress=progress)
    ctx = PassContext(imported.tokenizer, calib, progress, device=dev, backend=backend or dev.default_backend,
                      source=imported.source)
    pm = PassManager(progress=progress, dump_dir=Path(dump_ir) if dump_ir else None, context=ctx)
    for name, passes in phases(rec, fuse):
        pm.run(imported.graph, passes, name)
    imported.graph.facts.fused = bool(fuse)
    return imported, pm


def signing_key(sign=None, progress: Progress | None = None):
    """The key an artifact is signed with: None/True -> the user's own (created on first use,
    which progress is told), a path -> that private key, a key -> itself, False -> unsigned."""
    from . import signing

    if sign is False:
        return None
    if hasattr(sign, "sign") and hasattr(sign, "public_key"):  # already a private key
        return sign
    if sign is None or sign is True:
        path = signing.default_key_path()
        first = not path.exists()
        key = signing.default_key(create=True)
        if first and progress:
            progress(f"created your signing key {path} (share the .pub beside it "
                     "with those who run your artifacts)")
        return key
    return signing.load_private_key(sign)


def default_recipe(source, device) -> str:
    """The recipe when none is given: `source` for an already quantized GGUF (its blocks kept
    exactly, no second rounding), else the device profile's."""
    from .frontend.gguf_blocks import is_quantized_gguf

    if source.kind in ("gguf", "default") and is_quantized_gguf(source.path):
        return "source"
    return device.default_recipe


def build(model: str | Path | None = None, output: str | Path | None = None, device: str = "host",
          backend: str | None = None, recipe: str | Path | None = None, *,
          progress: Progress | None = None, dump_ir: str | Path | None = None,
          force: bool = False, sign=None, calib: str | Path | None = None, calib_samples: int | None = None,
          calib_seqlen: int | None = None, fuse: bool = True, max_context: int | None = None,
          backend_options: dict | list[str] | None = None, memory_budget: str | None = None,
          offload: str | None = None, sparsity_budget: str | float | None = None) -> Path:
    """Compile MODEL for DEVICE and write the artifact; returns its path (fuse=False: no FUSE phase).

    max_context caps the context length (default: the model's) and with it the KV cache.
    backend_options: the backend's options (a dict, or `key=value` strings), over the device
    profile's and the recipe's [backend.<name>] tables; e.g. TVM's {"tune_minutes": 5}. An
    existing OUTPUT is replaced only if it is a verified edgec artifact with nothing else in it
    (force: extra files allowed). sign: see signing_key (default: the user's own key).
    memory_budget / offload: hot/cold neuron offloading (the C backend's options of those names; with
    calibration text, the activation profile that picks the hot neurons is measured too).
    sparsity_budget: CATS activation sparsity chosen for this perplexity increase ("5%" or 0.05).
    """
    from .artifact import check_output, clean_stale
    from .frontend import resolve_source

    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    # Validate every option, the model path and the output path before any slow work.
    dev = get_device(device)
    be = get_backend(backend or dev.default_backend)
    source = resolve_source(None if model is None else str(model))
    rec = load_recipe(recipe or default_recipe(source, dev))
    backend_options = _with_offload(be, rec, backend_options, memory_budget, offload, sparsity_budget,
                                    calib is not None)
    options = be.check(dev, rec, backend_options_for(be, dev, rec, backend_options))
    if max_context is not None:
        if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 1:
            raise EdgecError(f"max-context must be a whole number >= 1, got {max_context!r}")
        rec.kv_cache["max_context"] = max_context
    cfg = calib_config(rec, calib, calib_samples, calib_seqlen,
                       device_default=dev.name if recipe is None and rec.name == dev.default_recipe else None)
    out = Path(output) if output else default_output(source.name, rec.name)
    for stale in clean_stale(out):
        say(f"removed {stale.name}, left by a build that was killed")
    check_output(out, force=force)
    key = signing_key(sign, say)

    imported, pm = compile_ir(model, rec, device=dev, backend=be.name, progress=say, dump_ir=dump_ir,
                              calib=cfg, fuse=fuse)
    write_artifact(imported, pm, out, device=dev, backend=be, recipe=rec, progress=say, force=force,
                   sign=False if key is None else key, started=t_start, options=options)
    say(f"wrote {out} in {time.perf_counter() - t_start:.1f}s")
    return out


def _share(text, what: str) -> float:
    """`5%` or 0.05 -> 0.05."""
    s = str(text).strip()
    try:
        v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise EdgecError(f"{what} {text!r} is not a share: give a percentage (5%) or a fraction (0.05)") from None
    if not 0 < v < 10:
        raise EdgecError(f"{what} {text!r} must be above 0% (and below 1000%)")
    return v


def _with_offload(be, rec, given, memory_budget, offload, sparsity_budget, calibrated: bool):
    """The build's backend options with --memory-budget/--offload, and the recipe with --sparsity-budget's cats
    pass and, for a sparse offload with calibration text, the profile pass that ranks the neurons."""
    if sparsity_budget is not None:
        rec.passes.append(("cats", {"budget": _share(sparsity_budget, "sparsity budget")}))
    if memory_budget is None and offload is None:
        return given
    if "memory_budget" not in be.options:
        raise EdgecError(f"--memory-budget offloads cold neurons in edgec's C runtime; the {be.name} backend does not: "
                         "add --backend c")
    if memory_budget is None:
        raise EdgecError("--offload needs --memory-budget SIZE (60MB, or 50% of the weights)")
    extra = {"memory_budget": str(memory_budget), **({"offload": offload} if offload else {})}
    if (offload or "sparse") == "sparse" and calibrated and not any(n == "reorder_neurons" for n, _ in rec.passes):
        rec.passes.append(("reorder_neurons", {"permute": False}))  # the profile the planner ranks neurons by
    if isinstance(given, (list, tuple)):
        return [*given, *(f"{k}={v}" for k, v in extra.items())]
    return {**(given or {}), **extra}


def write_artifact(imported, pm, out: Path, *, device, backend, recipe, progress: Progress | None = None,
                   force: bool = False, sign=None, started: float | None = None,
                   options: dict | None = None) -> Path:
    """Phases 7-9: the backend's prelower passes, its compile, and the artifact written atomically.

    options: the backend's checked options (default: the device's and the recipe's tables, checked).
    sign: see signing_key (default: the user's own key).
    """
    import torch
    import transformers

    from .frontend import model_hash
    from .ir import format_graph
    from .ir.cost import COSTS_FILE, cost_table

    say = progress or (lambda msg: None)
    dev, be, rec = device, backend, recipe
    if options is None:
        options = be.check(dev, rec, backend_options_for(be, dev, rec))
    graph = imported.graph
    t_start = started if started is not None else time.perf_counter()
    t_import = time.perf_counter() - t_start - sum(r.seconds for r in pm.records)
    pm.run(graph, list(be.prelower), "prelower")
    with ArtifactWriter(out, force=force, sign_key=signing_key(sign)) as w:
        say(f"compiling for {dev.name} with the {be.name} backend")
        t0 = time.perf_counter()
        backend_meta = be.compile(graph, w.dir / "model", dev, options, progress=say)
        t_compile = time.perf_counter() - t0
        say("writing tokenizer and build report")
        imported.tokenizer.save_pretrained(w.dir / "tokenizer")
        (w.dir / "graph.txt").write_text(format_graph(graph) + "\n")
        # per node: weight bytes, FLOPs and bytes moved per run (edgec profile's roofline, edgec.estimate)
        (w.dir / COSTS_FILE).write_text(json.dumps(cost_table(graph)) + "\n")
        report = {
            "fuse": graph.facts.fused,
            "passes": [r.to_dict() for r in pm.records],
            "seconds": {"import": round(t_import, 2), "passes": round(sum(r.seconds for r in pm.records), 2),
                        "compile": round(t_compile, 2)},
            "op_counts": graph.op_counts(),
        }
        (w.dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        for name, text in graph.attachments.items():  # e.g. activations.json (passes/reorder_neurons.py)
            (w.dir / name).write_text(text)
        src = imported.source
        w.manifest.update({
            "source": {"kind": src.kind, "path": str(src.path), "name": src.name,
                       "architecture": imported.architecture, "sha256": model_hash(src)},
            "recipe": rec.to_dict(),
            "device": dev.to_dict(),
            "backend": {"name": be.name, "options": _json_options(options),
                        **{k: v for k, v in backend_meta.items() if k != "weights"}},
            "weights": backend_meta.get("weights", {"tiers": {}}),  # the planner's blobs per memory tier
            "graph": {**_signature(graph), "interface": ModelInterface.of_graph(graph).to_dict(),
                      "kv_layers": graph.facts.kv_layers,
                      "context_length": graph.facts.context_length,
                      "parameters": graph.num_parameters(),
                      "weight_bytes": graph.weights.total_bytes(),
                      "op_counts": graph.op_counts()},
            "generation": _generation_info(imported.tokenizer, imported.model),
            "build": {"seconds": round(time.perf_counter() - t_start, 2), "python": sys.version.split()[0],
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "edgec": __version__, "platform": platform.platform(),
                      "fuse": graph.facts.fused},
        })
    return out


def _json_options(options: dict) -> dict:
    """The options as the manifest keeps them: plain JSON values (a loaded tuning log by its path)."""
    out = {}
    for k, v in options.items():
        if isinstance(v, dict) and "path" in v:
            v = str(v["path"])
        if isinstance(v, (bool, int, float, str, list)):
            out[k] = v
    return out


__all__ = ["EdgecError", "build", "compile_ir", "default_output", "phases", "write_artifact"]
