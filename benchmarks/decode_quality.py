"""Quality beside speed: every system of benchmarks/decode.py scored on the same WikiText-2 windows.

The `edgec eval` protocol (edgec.eval.evaluate_many): the first --quality-tokens
tokens of the WikiText-2 test split in non-overlapping 512-token windows, each
from an empty context, KL and top-1 against the source GGUF dequantized to fp32
(transformers). edgec artifacts and the transformers folder are scored by
edgec.eval itself, the peers through benchmarks/peer_scorers.py on the very
same token ids. Results are cached in --work/quality.json, keyed by the
system's model files (names, sizes, modification times), the text and the
token count, so a rerun scores only what changed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from decode_systems import SYSTEMS

WINDOW = 512


def fingerprint(path: Path) -> str:
    """Names, sizes and modification times of a model's files: changes when it is rebuilt."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def scorer_for(name: str, path: Path, gguf: Path, threads: int, tokenizer):
    """What edgec.eval scores for a system: a path it opens itself, or a peer scorer."""
    from peer_scorers import LlamaCppScorer, OnnxDecoderScorer, genai_dims

    kind = SYSTEMS[name]["kind"]
    if kind in ("edgec", "torch"):
        return path
    if kind == "llama":
        return LlamaCppScorer(path, tokenizer, WINDOW, threads, name=name)
    if kind in ("ortgenai", "ortexport"):
        from edgec.eval import source_parameters
        from edgec.frontend import resolve_source

        params = source_parameters(resolve_source(str(gguf)))  # the source's, for bits/weight
        return OnnxDecoderScorer(path / "model.onnx", tokenizer, threads, name, parameters=params,
                                 dims=genai_dims(path) if kind == "ortgenai" else None)
    raise ValueError(f"no scorer for {name} ({kind})")


def perplexities(names: list[str], paths: dict[str, Path], gguf: Path, work: Path, max_tokens: int,
                 threads: int, say) -> tuple[dict[str, dict], list[str]]:
    """{system: EvalResult dict} for the systems that could be scored, and notes for the others."""
    from edgec.eval import default_text_path, evaluate_many, read_eval_text

    from peer_scorers import gguf_tokenizer

    text_path, body = read_eval_text(default_text_path())
    text_sha = hashlib.sha256(body.encode()).hexdigest()[:16]
    cache_file = work / "quality.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    out, notes, todo = {}, [], []
    for n in names:
        key = {"model": fingerprint(paths[n]), "text": text_sha, "max_tokens": max_tokens}
        if cache.get(n, {}).get("key") == key:
            out[n] = cache[n]["result"]
        else:
            todo.append((n, key))
    if not todo:
        return out, notes
    tokenizer = gguf_tokenizer(gguf)  # the source's own: every peer is fed the ids edgec.eval computes
    # the same model file is scored once (systems that differ only in how they run it share it)
    by_model: dict[str, list[tuple[str, dict]]] = {}
    for n, key in todo:
        by_model.setdefault(str(paths[n]) + "|" + SYSTEMS[n]["kind"], []).append((n, key))
    targets, groups = [], []
    for group in by_model.values():
        n = group[0][0]
        try:
            targets.append(scorer_for(n, paths[n], gguf, threads, tokenizer))
            groups.append(group)
        except Exception as e:  # noqa: BLE001  (one peer that cannot be scored does not stop the rest)
            notes.append(f"`{n}`: no perplexity ({str(e).splitlines()[0][:200]})")
    if targets:
        say(f"perplexity of {len(targets)} models on the first {max_tokens:,} tokens of {text_path.name}")

        def run(ts):
            return evaluate_many(ts, reference=gguf, text=text_path, max_tokens=max_tokens, window=WINDOW,
                                 progress=say, threads=threads)

        try:
            results = run(targets)
        except Exception:  # noqa: BLE001  one at a time, so one model that fails costs only its own row
            results = []
            for t, group in zip(targets, groups):
                try:
                    results.append(run([t])[0])
                except Exception as e:  # noqa: BLE001
                    results.append(None)
                    notes.append(f"`{group[0][0]}`: no perplexity ({str(e).splitlines()[0][:200]})")
        for group, res in zip(groups, results):
            if res is None:
                continue
            for n, key in group:
                out[n] = res.to_dict()
                cache[n] = {"key": key, "result": out[n]}
        cache_file.write_text(json.dumps(cache, indent=2) + "\n")
    return out, notes
