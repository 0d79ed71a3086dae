"""Small artifacts written through the real ArtifactWriter, with a manifest that passes the schema.

For tests of the artifact layer itself (verification, replacement, signing,
fuzzing) that need no model: the backend named is `onnx` but nothing loads it.
"""
from __future__ import annotations

from edgec.artifact import ArtifactWriter

WEIGHTS = bytes(range(256)) * 4096 + b"tail"  # > 1 MiB: exercises chunked hashing


def manifest_fields(backend: str = "onnx", context: int = 128, vocab: int = 73, **extra) -> dict:
    """Every field the schema requires besides those ArtifactWriter fills in."""
    return {
        "backend": {"name": backend},
        "graph": {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": [1, "seq"]},
                             {"name": "position_ids", "dtype": "int64", "shape": [1, "seq"]}],
                  "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "seq", vocab]}],
                  "kv_layers": 0, "context_length": context, "parameters": 10, "weight_bytes": 40,
                  "op_counts": {"linear": 1}},
        "generation": {"eos_token_ids": [2], "bos_token_id": 1, "has_chat_template": False},
        "source": {"kind": "folder", "path": "/nowhere", "name": "fake", "architecture": "llama",
                   "sha256": "0" * 64},
        "recipe": {"name": "fp32", "description": "test"},
        "device": {"name": "host", "description": "test"},
        **extra,
    }


def write(out, weights: bytes = WEIGHTS, *, sign_key=None, force: bool = False, files=None, **fields):
    """An artifact at OUT with model/weights.bin, tokenizer/tokenizer.json and FILES {rel: bytes}."""
    with ArtifactWriter(out, sign_key=sign_key, force=force) as w:
        (w.dir / "model").mkdir()
        (w.dir / "model" / "weights.bin").write_bytes(weights)
        (w.dir / "tokenizer").mkdir()
        (w.dir / "tokenizer" / "tokenizer.json").write_text('{"v": 1}')
        for rel, data in (files or {}).items():
            (w.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (w.dir / rel).write_bytes(data)
        w.manifest.update(manifest_fields(**fields))
    return out
