"""`edgec build`: frontend -> IR -> passes -> target -> artifact, one readable list.

Phases (each a list of passes, see edgec.passes):
  1. import      model folder / GGUF / default -> torch.export -> IR
  2. canonicalize dead code, constant folding
  3. raise        rms_norm, rotary, gated MLPs
  4. compress     the recipe's passes (fp16 weights, quantization, pruning, ...)
  5. fuse         merged QKV / gate-up linears, add+rms_norm, rotary tables (skipped by fuse=False)
  6. lower        KV cache, so one graph serves prefill and decode
  7. compile      the backend writes its files into the artifact
  8. write        tokenizer, IR text, build report, manifest (atomic)
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
from .backends import get_backend, load_module
from .devices import get_device
from .errors import EdgecError
from .recipes import load_recipe

Progress = Callable[[str], None]


def default_output(model_name: str, recipe: str) -> Path:
    return Path("build") / f"{model_name}-{Path(recipe).stem}"


def _signature(graph) -> dict:
    def spec(v):
        return {"name": v.name, "dtype": v.dtype, "shape": list(v.shape)}

    return {"inputs": [spec(v) for v in graph.inputs], "outputs": [spec(v) for v in graph.outputs]}


def _generation_info(tokenizer, model) -> dict:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    return {"eos_token_ids": eos, "bos_token_id": tokenizer.bos_token_id,
            "has_chat_template": bool(getattr(tokenizer, "chat_template", None))}


def calib_config(recipe, calib=None, calib_samples=None, calib_seqlen=None):
    """Calibration settings: command-line values win over the recipe's [calibration] table."""
    from .calibration import CalibConfig

    cfg = CalibConfig.from_settings(recipe.calibration, calib, calib_samples, calib_seqlen)
    if recipe.needs_calibration:
        from .calibration import read_text

        if cfg.source is None:
            raise EdgecError(f"recipe {recipe.name!r} needs calibration data: pass --calib FILE "
                             "(e.g. ../shared/data/wikitext-2/valid.txt)")
        read_text(cfg.source)  # fail on a missing file now, not after loading the model
    return cfg


def compile_ir(model: str | Path | None, recipe, *, progress: Progress | None = None,
               dump_ir: str | Path | None = None, calib=None, fuse: bool = True):
    """Phases 1-6: import MODEL and run every pass; returns (ImportedModel, PassManager).

    `imported.graph` is the final IR that a backend compiles; tests run it in
    the reference interpreter.
    """
    from .frontend import import_model
    from .passes import CANONICALIZE, FUSE, LOWER, RAISE, PassContext, PassManager

    rec = recipe if hasattr(recipe, "passes") else load_recipe(recipe)
    calib = calib if calib is not None else calib_config(rec)
    imported = import_model(None if model is None else str(model), progress=progress)
    ctx = PassContext(imported.tokenizer, calib, progress)
    pm = PassManager(progress=progress, dump_dir=Path(dump_ir) if dump_ir else None, context=ctx)
    pm.run(imported.graph, CANONICALIZE, "canonicalize")
    pm.run(imported.graph, RAISE, "raise")
    pm.run(imported.graph, rec.passes, "compress")
    if "accuracy_level" in rec.onnx:  # the recipe picks MatMulNBits' compute type (else the target's default)
        imported.graph.meta["matmul_nbits_accuracy_level"] = rec.onnx["accuracy_level"]
    if fuse:
        pm.run(imported.graph, FUSE, "fuse")
    imported.graph.meta["fused"] = bool(fuse)
    pm.run(imported.graph, [(name, {**opts, **rec.kv_cache}) for name, opts in LOWER], "lower")
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


def build(model: str | Path | None = None, output: str | Path | None = None, device: str = "host",
          backend: str | None = None, recipe: str | Path | None = None, *,
          progress: Progress | None = None, dump_ir: str | Path | None = None,
          force: bool = False, sign=None, calib: str | Path | None = None, calib_samples: int | None = None,
          calib_seqlen: int | None = None, fuse: bool = True, max_context: int | None = None,
          tune_minutes: float = 0.0, tune_log: str | Path | None = None) -> Path:
    """Compile MODEL for DEVICE and write the artifact; returns its path (fuse=False: no FUSE phase).

    max_context caps the context length (default: the model's) and with it the KV cache.
    tune_minutes > 0 tunes the TVM kernels with MetaSchedule for that long; tune_log reuses
    an earlier artifact's tuning log (TVM backend only). An existing OUTPUT is replaced only if
    it is a verified edgec artifact with nothing else in it (force: extra files allowed).
    sign: see signing_key (default: the user's own key).
    """
    from .artifact import check_output, clean_stale
    from .frontend import resolve_source

    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    # Validate every option, the model path and the output path before any slow work.
    dev = get_device(device)
    be = get_backend(backend or dev.default_backend)
    check_device = getattr(load_module(be), "check_device", None)  # e.g. TVM: triple, cross compiler
    if check_device is not None:
        check_device(dev)
    backend_options = {}
    if tune_minutes or tune_log is not None:
        if be.name != "tvm":
            raise EdgecError(f"--tune-minutes/--tune-log: tuning is TVM-only, but the backend is {be.name!r} "
                             "(pass --backend tvm)")
        from edgec.targets.tvm.compile import check_tuning

        backend_options = check_tuning(dev, tune_minutes, tune_log)
    rec = load_recipe(recipe or dev.default_recipe)
    if max_context is not None:
        if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 1:
            raise EdgecError(f"max-context must be a whole number >= 1, got {max_context!r}")
        rec.kv_cache["max_context"] = max_context
    cfg = calib_config(rec, calib, calib_samples, calib_seqlen)
    source = resolve_source(None if model is None else str(model))
    out = Path(output) if output else default_output(source.name, rec.name)
    for stale in clean_stale(out):
        say(f"removed {stale.name}, left by a build that was killed")
    check_output(out, force=force)
    key = signing_key(sign, say)

    imported, pm = compile_ir(model, rec, progress=say, dump_ir=dump_ir, calib=cfg, fuse=fuse)
    if "accuracy_level" not in rec.onnx and "accuracy_level" in dev.onnx:  # the recipe's choice wins
        imported.graph.meta["matmul_nbits_accuracy_level"] = int(dev.onnx["accuracy_level"])
    write_artifact(imported, pm, out, device=dev, backend=be, recipe=rec, progress=say,
                   force=force, sign=False if key is None else key, started=t_start, backend_options=backend_options)
    say(f"wrote {out} in {time.perf_counter() - t_start:.1f}s")
    return out


def write_artifact(imported, pm, out: Path, *, device, backend, recipe, progress: Progress | None = None,
                   force: bool = False, sign=None, started: float | None = None,
                   backend_options: dict | None = None) -> Path:
    """Phases 7-8: compile the final IR with the backend and write the artifact atomically.

    backend_options: extra keyword arguments for the backend's compile_graph (TVM tuning).
    sign: see signing_key (default: the user's own key).
    """
    import torch
    import transformers

    from .frontend import model_hash
    from .ir import format_graph

    say = progress or (lambda msg: None)
    dev, be, rec = device, backend, recipe
    graph = imported.graph
    t_start = started if started is not None else time.perf_counter()
    t_import = time.perf_counter() - t_start - sum(r.seconds for r in pm.records)
    with ArtifactWriter(out, force=force, sign_key=signing_key(sign)) as w:
        say(f"compiling for {dev.name} with the {be.name} backend")
        t0 = time.perf_counter()
        extra = {**backend_options, "progress": say} if backend_options else {}
        backend_meta = load_module(be).compile_graph(graph, w.dir / "model", device=dev, **extra)
        t_compile = time.perf_counter() - t0
        say("writing tokenizer and build report")
        imported.tokenizer.save_pretrained(w.dir / "tokenizer")
        (w.dir / "graph.txt").write_text(format_graph(graph) + "\n")
        report = {
            "fuse": graph.meta.get("fused", False),
            "passes": [r.to_dict() for r in pm.records],
            "seconds": {"import": round(t_import, 2), "passes": round(sum(r.seconds for r in pm.records), 2),
                        "compile": round(t_compile, 2)},
            "op_counts": graph.op_counts(),
        }
        (w.dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        src = imported.source
        w.manifest.update({
            "source": {"kind": src.kind, "path": str(src.path), "name": src.name,
                       "architecture": imported.architecture, "sha256": model_hash(src)},
            "recipe": rec.to_dict(),
            "device": dev.to_dict(),
            "backend": {"name": be.name, **backend_meta},
            "graph": {**_signature(graph), "kv_layers": graph.meta.get("kv_layers", 0),
                      "context_length": graph.meta.get("context_length"),
                      "parameters": graph.num_parameters(),
                      "weight_bytes": graph.weights.total_bytes(),
                      "op_counts": graph.op_counts()},
            "generation": _generation_info(imported.tokenizer, imported.model),
            "build": {"seconds": round(time.perf_counter() - t_start, 2), "python": sys.version.split()[0],
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "edgec": __version__, "platform": platform.platform(),
                      "fuse": graph.meta.get("fused", False)},
        })
    return out


__all__ = ["EdgecError", "build", "compile_ir", "default_output", "write_artifact"]
