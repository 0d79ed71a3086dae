"""The manifest's schema: every field a runtime reads is checked here before use.

A manifest is data from disk (possibly edited, possibly hostile): parse() rejects
duplicate keys and oversized input, and validate() checks types, ranges and the
fields' consistency with each other (file table and total size, the model's
inputs and outputs, the KV cache pairs, vocabulary and token ids, context), so
the runtime never meets a wrong type or an impossible value. The backend then
checks the same fields against its own compiled files (see each executor).
"""
from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from .errors import ArtifactError
from .interface import ModelInterface
from .limits import MAX_CONTEXT  # noqa: F401 - one bound for configs, builds and manifests

FORMAT_VERSION = 2
MAX_FILES = 100_000
MAX_FILE_SIZE = 1 << 44  # 16 TiB
MAX_VOCAB = 1 << 24
NATIVE_BACKENDS = ("tvm", "c")  # their artifacts carry machine code the runtime loads
NATIVE_SUFFIXES = (".so", ".dylib", ".dll", ".o", ".a", ".bin.exe")
DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DIM = re.compile(r"^[A-Za-z0-9_+\-*/() ]{1,64}$")  # a symbolic size: seq, past+seq, ...
_REQUIRED = ("files", "format_version", "edgec_version", "created", "total_size", "backend", "graph",
             "generation", "source", "recipe", "device")


class _Bad(Exception):
    pass


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"key {k!r} appears twice")
        out[k] = v
    return out


def parse(data: bytes, where: str = "manifest.json") -> dict:
    """Parse and validate manifest bytes; ArtifactError (one line) on anything wrong."""
    try:
        text = data.decode("utf-8")
        manifest = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError, _Bad) as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ArtifactError(f"{where} is not valid JSON ({msg}); the artifact is corrupt, rebuild it") from None
    validate(manifest, where)
    return manifest


def validate(m, where: str = "manifest.json") -> None:
    """Raise ArtifactError unless M is a manifest this edgec can run (see the module docstring)."""
    try:
        _validate(m)
    except _Bad as e:
        why = "rebuild it with this edgec" if "format version" in str(e) else \
            "the artifact is corrupt or was edited, rebuild it"
        raise ArtifactError(f"{where}: {e}; {why}") from None


def _type(value, kind, name: str):
    ok = (type(value) is int) if kind is int else isinstance(value, kind)
    if not ok:
        kinds = {int: "an integer", str: "a string", dict: "an object", list: "a list", bool: "true/false"}
        raise _Bad(f"{name} must be {kinds.get(kind, kind)}, got {type(value).__name__}")
    return value


def _int(value, name: str, lo: int, hi: int) -> int:
    _type(value, int, name)
    if not lo <= value <= hi:
        raise _Bad(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def _str(value, name: str, max_len: int = 4096) -> str:
    _type(value, str, name)
    if len(value) > max_len or "\0" in value:
        raise _Bad(f"{name} is not a plausible string")
    return value


def _validate(m) -> None:
    if not isinstance(m, dict):
        raise _Bad("the manifest must be a JSON object")
    if "format_version" not in m:
        raise _Bad("format_version is missing")
    version = m["format_version"]
    if type(version) is int and version != FORMAT_VERSION:
        raise _Bad(f"the artifact has format version {version}, but this edgec reads version "
                   f"{FORMAT_VERSION}")
    _int(version, "format_version", FORMAT_VERSION, FORMAT_VERSION)
    for key in _REQUIRED:
        if key not in m:
            raise _Bad(f"{key} is missing")
    _str(m["edgec_version"], "edgec_version", 64)
    _str(m["created"], "created", 64)
    files = _files(m["files"])
    _int(m["total_size"], "total_size", 0, MAX_FILE_SIZE * 16)
    if m["total_size"] != sum(e["size"] for e in files.values()):
        raise _Bad("total_size is not the sum of the file sizes")
    backend = _type(m["backend"], dict, "backend")
    _str(backend.get("name"), "backend.name", 32)
    for f in _type(backend.get("files", []), list, "backend.files"):
        if f"model/{_str(f, 'backend.files[]')}" not in files:
            raise _Bad(f"the backend's file model/{f} is not in the file table")
    _type(backend.get("options", {}), dict, "backend.options")
    if "weights" in m:
        _weights(_type(m["weights"], dict, "weights"), files)
    for key in ("source", "recipe", "device"):
        _type(m[key], dict, key)
    _str(m["recipe"].get("name"), "recipe.name", 256)
    _str(m["device"].get("name"), "device.name", 64)
    for key in ("name", "architecture", "kind"):
        _str(m["source"].get(key), f"source.{key}", 256)
    if "build" in m:
        _type(m["build"], dict, "build")
    vocab = _graph(_type(m["graph"], dict, "graph"))
    _generation(_type(m["generation"], dict, "generation"), vocab)


def _weights(weights: dict, files: dict) -> None:
    """The weight planner's blobs per memory tier: each a listed file, holding at most its size."""
    for tier, entry in _type(weights.get("tiers", {}), dict, "weights.tiers").items():
        _type(entry, dict, f"weights.tiers[{tier!r}]")
        rel = _str(entry.get("file"), f"weights.tiers[{tier!r}].file", 1024)
        if rel not in files:
            raise _Bad(f"the weight blob {rel} of tier {tier!r} is not in the file table")
        if _int(entry.get("bytes"), f"weights.tiers[{tier!r}].bytes", 0, MAX_FILE_SIZE) > files[rel]["size"]:
            raise _Bad(f"tier {tier!r} claims more bytes than {rel} holds")
        _int(entry.get("tensors"), f"weights.tiers[{tier!r}].tensors", 0, 1 << 32)


def _files(files) -> dict:
    _type(files, dict, "files")
    if not files:
        raise _Bad("the file table is empty")
    if len(files) > MAX_FILES:
        raise _Bad(f"the file table lists {len(files)} files")
    for rel, entry in files.items():
        p = PurePosixPath(rel)
        if (not rel or p.is_absolute() or p.as_posix() != rel or any(part in ("", ".", "..") for part in p.parts)
                or "\\" in rel or "\0" in rel or len(rel) > 1024 or rel in ("manifest.json", "signature.json")):
            raise _Bad(f"the file table lists an unsafe path {rel!r}")
        _type(entry, dict, f"files[{rel!r}]")
        if set(entry) != {"size", "sha256"}:
            raise _Bad(f"files[{rel!r}] must have exactly size and sha256")
        _int(entry["size"], f"files[{rel!r}].size", 0, MAX_FILE_SIZE)
        if not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"]):
            raise _Bad(f"files[{rel!r}].sha256 is not a SHA-256 hex digest")
    names = set(files)
    for rel in names:  # a file cannot also be a folder of other files
        if any(str(parent) in names for parent in PurePosixPath(rel).parents):
            raise _Bad(f"the file table lists {rel!r} inside another listed file")
    return files


def _values(vs, name: str) -> dict[str, dict]:
    out = {}
    for i, v in enumerate(_type(vs, list, name)):
        _type(v, dict, f"{name}[{i}]")
        n = _str(v.get("name"), f"{name}[{i}].name", 256)
        if v.get("dtype") not in DTYPES:
            raise _Bad(f"{name}[{i}].dtype must be one of {', '.join(DTYPES)}")
        for d in _type(v.get("shape"), list, f"{name}[{i}].shape"):
            if not ((type(d) is int and 0 <= d <= MAX_FILE_SIZE) or (isinstance(d, str) and _DIM.match(d))):
                raise _Bad(f"{name}[{i}].shape has an impossible dimension {d!r}")
        if n in out:
            raise _Bad(f"{name} lists {n!r} twice")
        out[n] = v
    return out


def _graph(g: dict) -> int:
    inputs, outputs = _values(g.get("inputs"), "graph.inputs"), _values(g.get("outputs"), "graph.outputs")
    if "interface" in g:
        _type(g["interface"], dict, "graph.interface")
    try:  # the interface's own rules (edgec.interface): roles, cache pairs
        iface = ModelInterface.from_manifest({"graph": g})
    except ArtifactError as e:
        raise _Bad(str(e).split("; rebuild")[0]) from None
    problem = iface.problem()
    if problem:
        raise _Bad(problem)
    vocab = _int(outputs[iface.logits]["shape"][-1], "the logits' vocabulary size", 1, MAX_VOCAB)
    _int(g.get("context_length"), "graph.context_length", 1, MAX_CONTEXT)
    _int(g.get("kv_layers"), "graph.kv_layers", 0, 100_000)
    if iface.kv_layers not in (0, g["kv_layers"]):
        raise _Bad("graph.kv_layers does not match the cache inputs")
    for key in ("parameters", "weight_bytes"):
        _int(g.get(key), f"graph.{key}", 0, MAX_FILE_SIZE)
    for k, v in _type(g.get("op_counts", {}), dict, "graph.op_counts").items():
        _int(v, f"graph.op_counts[{k!r}]", 0, 10**9)
    return vocab


def _generation(gen: dict, vocab: int) -> None:
    eos = _type(gen.get("eos_token_ids", []), list, "generation.eos_token_ids")
    for t in eos:
        _int(t, "generation.eos_token_ids[]", 0, vocab - 1)
    if gen.get("bos_token_id") is not None:
        _int(gen["bos_token_id"], "generation.bos_token_id", 0, vocab - 1)
    if "has_chat_template" in gen:
        _type(gen["has_chat_template"], bool, "generation.has_chat_template")


# -- what the runtime reads, after validate() -----------------------------------------------------
def vocab_size(m: dict) -> int:
    return next(v for v in m["graph"]["outputs"] if v["name"] == "logits")["shape"][-1]


def is_native_file(rel: str) -> bool:
    return rel.endswith(NATIVE_SUFFIXES)


def is_native(m: dict) -> bool:
    """True when running the artifact loads machine code from it (its trust needs a signature)."""
    return m["backend"]["name"] in NATIVE_BACKENDS or any(is_native_file(r) for r in m["files"])
