"""`edgec compare`: artifacts side by side (size, bits per weight, quality, speed) with the Pareto front.

Speed is measured on this machine when the artifact runs here and estimated (edgec.estimate, a roofline
model) for any other device; every row says which. Quality comes from `--eval` or from an evaluation
recorded earlier: an artifact is a checksummed folder that may hold only the files its manifest lists,
so records live in the cache, cache_dir("evals")/<sha256 of manifest.json>.json, one entry per
(text, window, windows, reference); the same manifest bytes mean the same artifact wherever it lies.

`edgec sweep` makes its rows with `entry` and its table with `assemble` and `format_compare`, so the
two commands print one table.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .errors import EdgecError

# Speed runs are short: enough tokens for a stable decode rate, not a benchmark (edgec profile is).
SPEED_PROMPT, SPEED_NEW = 32, 16
EVALS = "evals"
NOT_EVALUATED = "not evaluated; pass --eval"

Progress = Callable[[str], None]


# -- small shared pieces ------------------------------------------------------------------------
def write_json(path: Path, data) -> None:
    """Write JSON through a temp file and a rename, so a reader (or a killed writer) never sees half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{display_name(path)}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def one_line(e: BaseException) -> str:
    """An exception as one line: EdgecError's own message, anything else prefixed with its type."""
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(e, EdgecError) else f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def runs_elsewhere(e: EdgecError) -> bool:
    """The artifact is native code for another machine (an aarch64 build here): not a fault of the artifact.
    The runtimes say so in these words (targets/c/executor.py; edgec.profile keys on them too)."""
    return "cannot run on this" in str(e)


def display_name(path) -> str:
    """An artifact's name in the table: its folder's, or for a sweep cell's `artifact` folder the cell's
    (`edgec compare DIR/cells/*/artifact` then reads int4@rpi5, not artifact)."""
    path = Path(path)
    return path.parent.name if path.name == "artifact" and path.parent.name else path.name


def artifact_id(manifest_bytes: bytes) -> str:
    """The artifact's identity: SHA-256 of its manifest.json (which holds every file's SHA-256).
    `edgec inspect` shows it as the manifest digest."""
    return hashlib.sha256(manifest_bytes).hexdigest()


def _manifest_bytes(artifact) -> bytes:
    return artifact if isinstance(artifact, bytes) else (Path(artifact) / "manifest.json").read_bytes()


# -- recorded evaluations -----------------------------------------------------------------------
def _eval_key(r: dict) -> str:
    return f"{r['text_sha256']}|{r['window']}|{r['windows']}|{r.get('reference') or '-'}"


def record_eval(artifact, result) -> Path | None:
    """Remember an artifact's evaluation (an EvalResult or its dict) in the cache; `artifact` is its folder
    or its manifest bytes. A cache that cannot be written loses the record, never the evaluation. Two
    evaluations of one artifact finishing at the same moment may keep only one: it is a cache."""
    r = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    try:
        path = _evals_file(_manifest_bytes(artifact))
        records = _read_records(path)
        records[_eval_key(r)] = {**r, "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(path, {"artifact": r.get("target"), "records": records})
        return path
    except OSError:
        return None


def _evals_file(manifest_bytes: bytes) -> Path:
    from .cache import cache_dir

    return cache_dir(EVALS) / f"{artifact_id(manifest_bytes)}.json"


def _read_records(path: Path) -> dict:
    try:
        records = json.loads(path.read_text()).get("records")
        return records if isinstance(records, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def recorded_evals(artifact, text_sha256: str | None = None) -> list[dict]:
    """The artifact's recorded evaluations, the most complete first (most tokens, then with a KL);
    only those on the text with this SHA-256 when given."""
    try:
        records = _read_records(_evals_file(_manifest_bytes(artifact)))
    except OSError:
        return []
    found = [r for r in records.values() if isinstance(r, dict) and isinstance(r.get("tokens"), int)
             and (text_sha256 is None or r.get("text_sha256") == text_sha256)]
    return sorted(found, key=lambda r: (r["tokens"], r.get("kl") is not None), reverse=True)


# -- quality and speed of one artifact ------------------------------------------------------------
def evaluate_artifact(path, manifest: dict, *, text=None, window: int = 512, max_tokens: int | None = None,
                      threads: int | None = None, trusted_keys=(), allow_unsigned: bool = False,
                      progress: Progress | None = None) -> tuple[dict | None, list[str]]:
    """(EvalResult dict, notes) of the artifact now (edgec.eval.evaluate records it). KL against its source
    model when that is here; perplexity alone otherwise. (None, note) when it cannot run on this machine."""
    from .eval import artifact_source, evaluate

    name, notes = display_name(path), []
    try:
        reference = artifact_source(manifest)
    except EdgecError:
        reference = False
        notes.append(f"{name}: perplexity only (no KL): its source model {manifest['source'].get('path')} is not "
                     "here, or not the one it was built from")
    try:
        r = evaluate(path, reference=reference, text=text, max_tokens=max_tokens, window=window,
                     progress=progress, threads=threads, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
    except EdgecError as e:
        if not runs_elsewhere(e):
            raise
        return None, [f"{name}: not evaluated: {e}"]
    return r.to_dict(), notes


def speed_of(path, manifest: dict, device: str | None = None, *, prompt_tokens: int = SPEED_PROMPT,
             new_tokens: int = SPEED_NEW, threads: int | None = None, trusted_keys=(), allow_unsigned: bool = False,
             progress: Progress | None = None) -> dict:
    """{"device", "source", "decode_tok_s", "prefill_tok_s", ...} of the artifact on `device`: measured
    here for "host"; the roofline estimate for any other device; None: measured here when it runs here,
    else estimated for the device it was built for.

    Measures with edgec.profile.measure_speed (a warm-up, then one timed generation): the speed `edgec
    profile` reports, without its op traces and estimates, which a table of many artifacts does not use.
    """
    built_for = manifest["device"]["name"]
    if device in (None, "host"):
        from .profile import measure_speed

        try:
            s = measure_speed(path, prompt_tokens, new_tokens, threads, trusted_keys=trusted_keys,
                              allow_unsigned=allow_unsigned)
            return {"device": "host", "source": "measured", "decode_tok_s": 1000 / s["decode_ms_per_token"],
                    "prefill_tok_s": prompt_tokens * 1000 / s["prefill_ms"], "prompt_tokens": prompt_tokens,
                    "new_tokens": new_tokens, "threads": threads}
        except EdgecError as e:
            if device == "host" or built_for == "host" or not runs_elsewhere(e):
                raise
    from .estimate import estimate

    dev = device or built_for
    e = estimate(path, dev, prompt_tokens=prompt_tokens, new_tokens=new_tokens, threads=threads,
                 trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, progress=progress)
    return {"device": dev, "source": "estimate", "decode_tok_s": e.decode_tok_s, "prefill_tok_s": e.prefill_tok_s,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}


def bits_per_weight(manifest: dict) -> float | None:
    """8 x the artifact's weight bytes / its source model's parameters (as `edgec eval` reports it); None
    when the source model is not here to count them (read from its config or GGUF header, not loaded)."""
    from .eval import artifact_weight_bytes, source_parameters
    from .frontend import resolve_source

    src = manifest.get("source") or {}
    try:
        source = resolve_source(None if src.get("kind") == "default" else src.get("path"))
    except EdgecError:
        return None
    params = source_parameters(source)
    return 8 * artifact_weight_bytes(manifest) / params if params else None


# -- rows and the table -------------------------------------------------------------------------
def entry(artifact, manifest: dict | None = None, *, name: str | None = None, device: str | None = None,
          recipe: str | None = None, quality: dict | None = None, recorded: bool = False,
          speed: dict | None = None, error: str | None = None, notes=()) -> dict:
    """One row of the table with what explains it: {"row", "notes", "protocol", "speed"}, plain JSON so a
    sweep cell can return it. manifest None: the artifact is missing or did not open (error says why);
    device and recipe then fill their columns. quality: an EvalResult dict (recorded: read from the cache)."""
    m, q, s = manifest or {}, quality or {}, speed or {}
    row = {"name": name or display_name(artifact), "artifact": str(artifact),
           "recipe": (m.get("recipe") or {}).get("name", recipe), "backend": (m.get("backend") or {}).get("name"),
           "device": s.get("device") or device or (m.get("device") or {}).get("name"),
           "size_mb": m["total_size"] / 1e6 if "total_size" in m else None,
           "bits_per_weight": q.get("bits_per_weight") or (bits_per_weight(m) if m else None),
           "perplexity": q.get("perplexity"), "kl": q.get("kl"),
           "decode_tok_s": s.get("decode_tok_s"), "prefill_tok_s": s.get("prefill_tok_s"),
           "speed_source": s.get("source"), "error": error}
    notes = list(notes)
    if quality:
        how = f"recorded {q.get('recorded_at', '')[:10]}" if recorded else "evaluated now"
        ref = f", KL vs {Path(q['reference']).name}" if q.get("reference") else ", no reference (no KL)"
        notes.append(f"{row['name']}: quality {how} on {Path(q['text']).name} ({q['tokens']:,} tokens in "
                     f"{q['windows']} windows of {q['window']}{ref})")
    elif error is None and not any(n.startswith(f"{row['name']}: not evaluated") for n in notes):
        notes.append(f"{row['name']}: {NOT_EVALUATED}")
    protocol = [q["text_sha256"], q["window"], q["tokens"], q.get("reference")] if quality else None
    return {"row": row, "notes": notes, "protocol": protocol, "speed": speed}


def assemble(entries: list[dict]) -> dict:
    """The compare dict (edgec.report.write_compare_html renders it) from `entry` results."""
    rows = [e["row"] for e in entries]
    scored = [r for r in rows if not r["error"]]
    metric = "kl" if scored and all(r["kl"] is not None for r in scored) else "perplexity"
    out_notes = _grouped([n for e in entries for n in e["notes"]], {r["name"] for r in rows})
    if len({json.dumps(e["protocol"]) for e in entries if e["protocol"]}) > 1:
        out_notes.append("quality comes from different texts, windows, token counts or references: "
                         "compare those rows with care")
    speeds = [e["speed"] for e in entries if e["speed"]]
    measured = [s for s in speeds if s["source"] == "measured"]
    if measured:
        s = measured[0]
        threads = s.get("threads")
        out_notes.append(f"measured: on the machine that ran it (this one, or a sweep's Ray node), a "
                         f"{s['prompt_tokens']}-token prompt then {s['new_tokens']} greedy tokens after a warm-up "
                         f"({threads or 'default'} thread{'s' * (threads != 1)})")
    if any(s["source"] == "estimate" for s in speeds):
        out_notes.append("estimate: a roofline estimate (edgec.estimate) from the device profile's published "
                         "figures and the backend's efficiency measured on this machine; not a measurement "
                         "(`edgec profile ART --device D` lists its sources)")
    return {"rows": rows, "quality_metric": metric,
            "devices": list(dict.fromkeys(r["device"] for r in rows if r["device"])),
            "notes": out_notes}


def _grouped(notes: list[str], names: set[str]) -> list[str]:
    """"a: X" and "b: X" as one "a, b: X" (a sweep's cells share their evaluation text), in order."""
    groups: dict[str, list[str]] = {}
    for n in notes:
        name, sep, rest = n.partition(": ")
        key = rest if sep and name in names else n
        groups.setdefault(key, [])
        if key != n:
            groups[key].append(name)
    return [f"{', '.join(dict.fromkeys(who))}: {k}" if who else k for k, who in groups.items()]


def pareto_rows(compare: dict) -> dict[str, list[str]]:
    """Per device, the names of the rows on the Pareto front of decode speed against the quality metric."""
    from .report import pareto_front

    metric, out = compare["quality_metric"], {}
    for dev in compare["devices"]:
        rows = [r for r in compare["rows"] if r["device"] == dev and not r["error"]
                and r["decode_tok_s"] is not None and r[metric] is not None]
        front = pareto_front([(r["decode_tok_s"], r[metric]) for r in rows])
        if front:
            out[dev] = [rows[i]["name"] for i in sorted(front, key=lambda i: -rows[i]["decode_tok_s"])]
    return out


def _cell(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_compare(compare: dict) -> str:
    """The aligned text table, the Pareto front per device, errors and notes."""
    head = ["name", "recipe", "backend", "device", "size MB", "bits/w", "perplexity", "KL",
            "decode tok/s", "prefill tok/s", "speed"]
    body = [[r["name"], r["recipe"] or "-", r["backend"] or "-", r["device"] or "-", _cell(r["size_mb"], ".1f"),
             _cell(r["bits_per_weight"], ".2f"), _cell(r["perplexity"], ".3f"), _cell(r["kl"], ".5f"),
             _cell(r["decode_tok_s"], ",.1f"), _cell(r["prefill_tok_s"], ",.1f"),
             "error" if r["error"] else r["speed_source"] or "-"] for r in compare["rows"]]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) if i < 4 or i == 10 else str(x).rjust(w)
                       for i, (x, w) in enumerate(zip(row, widths))).rstrip() for row in [head, *body]]
    metric = "KL" if compare["quality_metric"] == "kl" else "perplexity"
    front = pareto_rows(compare)
    lines.append("")
    lines.append(f"Pareto front (decode tok/s vs {metric}): " + ("; ".join(
        f"{dev}: {', '.join(names)}" for dev, names in front.items()) or f"none (no row has both speed and {metric})"))
    lines += [f"error: {r['name']}: {r['error']}" for r in compare["rows"] if r["error"]]
    lines += [f"note: {n}" for n in compare["notes"]]
    return "\n".join(lines)


# -- edgec compare --------------------------------------------------------------------------------
def check_devices(devices) -> list[str]:
    """Every name a device profile (a one-line error naming the known ones otherwise), in order, once."""
    from .devices import get_device

    for d in devices:
        get_device(d)
    return list(dict.fromkeys(devices))


def check_eval_options(text, window: int, max_tokens: int | None) -> str:
    """The evaluation text's SHA-256, after the checks `evaluate` would make only later, per artifact."""
    from .eval import read_eval_text

    if window < 2:
        raise EdgecError(f"--window must be >= 2 tokens, got {window}")
    if max_tokens is not None and max_tokens < window:
        raise EdgecError(f"--max-tokens must be at least one window ({window} tokens), got {max_tokens}")
    return hashlib.sha256(read_eval_text(text)[1].encode()).hexdigest()


def compare(paths, devices=(), *, evaluate: bool = False, text=None, window: int = 512,
            max_tokens: int | None = None, prompt_tokens: int = SPEED_PROMPT, new_tokens: int = SPEED_NEW,
            threads: int | None = None, trusted_keys=(), allow_unsigned: bool = False,
            progress: Progress | None = None) -> dict:
    """The compare dict of the artifacts at `paths`: one row per artifact, or per artifact and device.

    devices: () = measure each artifact here when it runs here, else estimate it for the device it was
    built for; else one row per device ("host" measured, others estimated). evaluate: run edgec.eval now
    (and record it); else the most complete recorded evaluation (on `text` when given). An artifact that
    fails gets its row with the one-line error; bad options fail before any slow work.
    """
    say = progress or (lambda msg: None)
    paths = [Path(p) for p in paths]
    if not paths:
        raise EdgecError("compare needs at least one artifact directory")
    devices = check_devices(devices)
    if prompt_tokens < 1 or new_tokens < 2:
        raise EdgecError("compare needs --prompt-tokens >= 1 and --new-tokens >= 2")
    text_sha = check_eval_options(text, window, max_tokens) if evaluate or text is not None else None
    run = {"threads": threads, "trusted_keys": trusted_keys, "allow_unsigned": allow_unsigned, "progress": say}
    entries = []
    for i, path in enumerate(paths, 1):
        say(f"[{i}/{len(paths)}] {path}")
        entries += _entries(path, devices, text_sha, run, evaluate=evaluate, text=text, window=window,
                            max_tokens=max_tokens, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    return assemble(entries)


def _entries(path: Path, devices: list[str], text_sha: str | None, run: dict, *, evaluate: bool, text, window: int,
             max_tokens: int | None, prompt_tokens: int, new_tokens: int) -> list[dict]:
    """compare's entries for one artifact: one per device (one for the default device when none given)."""
    from .artifact import open_artifact

    name, say = display_name(path), run["progress"]
    try:
        art = open_artifact(path)
        manifest, manifest_bytes = art.manifest, art.manifest_bytes
        art.close()
    except EdgecError as e:
        return [entry(path, device=devices[0] if len(devices) == 1 else None, error=one_line(e))]
    errors, notes, quality, recorded = [], [], None, False
    if evaluate:
        say(f"evaluating {path}")
        try:
            quality, notes = evaluate_artifact(path, manifest, text=text, window=window, max_tokens=max_tokens, **run)
        except EdgecError as e:
            errors.append(f"eval: {one_line(e)}")
    else:
        found = recorded_evals(manifest_bytes, text_sha)
        quality, recorded = (found[0], True) if found else (None, False)
    built_for, out = manifest["device"]["name"], []
    for dev in devices or [None]:
        row_errors, row_notes, s = list(errors), list(notes), None
        say(f"measuring {name}" if dev in (None, "host") else f"estimating {name} for {dev}")
        try:
            s = speed_of(path, manifest, dev, prompt_tokens=prompt_tokens, new_tokens=new_tokens, **run)
        except EdgecError as e:
            if runs_elsewhere(e):
                row_notes.append(f"{name}: no speed for {dev or 'this machine'}: {e}")
            else:
                row_errors.append(one_line(e))
        if s and dev is None and s["device"] != built_for:
            row_notes.append(f"{name}: built for {built_for}, measured on this machine; "
                             f"--device {built_for} estimates it there")
        out.append(entry(path, manifest, device=dev, quality=quality, recorded=recorded, speed=s,
                         error="; ".join(row_errors) or None, notes=row_notes))
    return out


__all__ = ["assemble", "compare", "entry", "evaluate_artifact", "format_compare", "record_eval", "recorded_evals",
           "speed_of"]
