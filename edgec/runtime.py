"""Load an artifact and generate: the Python side of `edgec run`.

The backend executes one graph for prefill and decode through the executor
protocol (edgec.executor). Generation runs on a `sequence`: where the backend
can (ONNX with GroupQueryAttention, TVM device tensors), the KV cache stays in
place between steps, so a decode step's Python-side work does not grow with
the context (no concatenation, no copies, no allocation, no re-tokenizing:
see Detokenizer).
"""
from __future__ import annotations

import operator
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .artifact import check_trust, open_artifact
from .backends import get_backend
from .errors import ArtifactError, EdgecError
from .executor import empty_cache, forward_feeds
from .interface import ModelInterface
from .limits import useful_threads
from .manifest import vocab_size
from .sampling import check_options, sample


def built_options(manifest: dict) -> dict:
    """The options the artifact was built with (manifest backend.options; older artifacts kept the
    device profile's table for the backend under device.<name>)."""
    backend = manifest["backend"]
    options = backend.get("options")
    if options is None:
        options = (manifest.get("device") or {}).get(backend["name"]) or {}
    if not isinstance(options, dict):
        raise ArtifactError("manifest backend.options is not a table; rebuild the artifact")
    return options


class CompiledModel:
    """An artifact ready to run. Use `edgec.load(path)`.

    Opening verifies the artifact (edgec.artifact.open_artifact) and checks who signed it: an
    artifact that carries machine code (TVM, C) runs only if signed by a trusted key (yours, one
    in the config folder's trusted/, or `trust`) unless allow_unsigned. The backend is then handed
    exactly the verified files, and its compiled interface is checked against the manifest.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, verify: bool = True,
                 executor_kwargs: dict | None = None, trust=(), allow_unsigned: bool = False,
                 backend_options: dict | None = None):
        """backend_options: run options over the artifact's own (e.g. {"intra_op_threads": 2});
        executor_kwargs: extra arguments of the backend's open() (e.g. trace_dir, see edgec.backends)."""
        self.path = Path(path)
        threads = useful_threads(threads)
        self.artifact = open_artifact(self.path, verify=verify)
        self.trust = check_trust(self.artifact, trust, allow_unsigned)
        self.manifest = self.artifact.manifest
        self.backend = get_backend(self.manifest["backend"]["name"])
        built = self.backend.check_options(built_options(self.manifest),
                                           f"{self.path}: manifest backend.options")
        options = {**built, **self.backend.check_options(backend_options, "backend options")}
        self.interface = ModelInterface.from_manifest(self.manifest)
        self.executor = self.backend.open(self.artifact.files("model"), interface=self.interface,
                                          options=options, threads=threads, **dict(executor_kwargs or {}))
        graph = self.manifest["graph"]
        self.context_length = int(graph["context_length"])
        self.vocab_size = vocab_size(self.manifest)
        self._check_backend(graph)
        self.eos_token_ids = set(self.manifest["generation"].get("eos_token_ids") or [])
        self._tokenizer = None

    def _check_backend(self, graph: dict) -> None:
        """The manifest's interface, context and vocabulary must be what the backend compiled."""
        ex, where = self.executor, f"{self.path}: the manifest does not match the compiled model"
        if sorted(ex.input_names) != sorted(v["name"] for v in graph["inputs"]):
            raise ArtifactError(f"{where} (inputs); rebuild the artifact")
        if sorted(ex.output_names) != sorted(v["name"] for v in graph["outputs"]):
            raise ArtifactError(f"{where} (outputs); rebuild the artifact")
        for what, theirs, ours in (("context length", ex.context_length, self.context_length),
                                   ("vocabulary", ex.vocab_size, self.vocab_size)):
            if theirs is not None and theirs != ours:
                raise ArtifactError(f"{where} ({what} {ours} in the manifest, {theirs} compiled); "
                                    "rebuild the artifact")

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.artifact.files("tokenizer"), self.vocab_size, self.path)
        return self._tokenizer

    # -- one forward step ------------------------------------------------------
    def empty_cache(self) -> dict[str, np.ndarray]:
        return empty_cache(self.interface)

    def forward(self, ids: list[int], start: int, cache: dict[str, np.ndarray]):
        """Run ids at positions start.. with the given cache; returns (logits[n, V], new cache)."""
        out = self.executor.run(forward_feeds(self.interface, self.check_token_ids(ids), start, cache))
        new_cache = {past: out[present] for past, present in self.interface.present_of().items()}
        return out[self.interface.logits][0], new_cache

    def sequence(self, capacity: int | None = None):
        """A KV cache for one sequence of up to `capacity` tokens (edgec.executor.Sequence), ids checked."""
        return _CheckedSequence(self._sequence(capacity), self)

    def _sequence(self, capacity: int | None):
        """The backend's sequence without the id check (for callers whose ids are already in range)."""
        capacity = min(int(capacity or self.context_length), self.context_length)
        if capacity < 1:
            raise EdgecError(f"KV capacity must be > 0, got {capacity}")
        return self.executor.sequence(capacity)

    def check_token_ids(self, ids) -> list[int]:
        """ids as ints, each in 0..vocab-1 (an out-of-range id would read outside the embedding)."""
        try:
            out = [operator.index(i) for i in ids]
        except TypeError:
            raise EdgecError("token ids must be integers") from None
        bad = next((i for i in out if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise EdgecError(f"token id {bad} is out of range: this model's vocabulary has "
                             f"{self.vocab_size} ids (0..{self.vocab_size - 1})")
        return out

    def _check_ids(self, ids: list[int]) -> list[int]:
        ids = self.check_token_ids(ids)
        if not ids:
            raise EdgecError("the prompt is empty; give at least one token")
        if len(ids) >= self.context_length:
            raise EdgecError(f"the prompt is {len(ids)} tokens but the model's context is "
                             f"{self.context_length}; shorten the prompt")
        return ids

    # -- public API ------------------------------------------------------------
    def logits(self, input_ids: list[int]) -> np.ndarray:
        """Logits for every position of input_ids: [len(input_ids), vocab]."""
        ids = self.check_token_ids(input_ids)
        if not ids or len(ids) > self.context_length:
            raise EdgecError(f"logits() needs 1..{self.context_length} tokens, got {len(ids)}")
        return self.forward(ids, 0, self.empty_cache())[0]

    def stream(self, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop_at_eos: bool = True) -> Iterator[int]:
        """Yield new token ids one at a time."""
        if max_new_tokens <= 0:
            raise EdgecError(f"max-new-tokens must be > 0, got {max_new_tokens}")
        check_options(temperature, top_k, top_p)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise EdgecError(f"the seed must be a whole number >= 0, got {seed!r}")
        ids = self._check_ids(prompt_ids)
        rng = np.random.default_rng(seed)
        # the last token yielded is never fed back: len(ids) + max_new_tokens - 1 rows suffice
        # ids were checked above and sampled tokens are < vocab: no per-step id check needed
        seq = self._sequence(len(ids) + max_new_tokens - 1)
        logits = seq.run(ids, last_only=True)
        for i in range(max_new_tokens):
            tok = sample(logits[-1], rng, temperature, top_k, top_p)
            yield tok
            if (stop_at_eos and tok in self.eos_token_ids) or seq.length + 1 >= self.context_length \
                    or i + 1 == max_new_tokens:
                return
            logits = seq.run([tok])

    def generate(self, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 stop_at_eos: bool = True, callback: Callable[[int], None] | None = None) -> list[int]:
        """The new tokens only (stops at EOS unless stop_at_eos=False, or at the context end)."""
        out = []
        for tok in self.stream(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos):
            out.append(tok)
            if callback:
                callback(tok)
        return out

    def encode(self, text: str, chat: bool = False) -> list[int]:
        tok = self.tokenizer
        if chat:
            if not getattr(tok, "chat_template", None):
                raise EdgecError("this model has no chat template; run without --chat")
            ids = tok.apply_chat_template([{"role": "user", "content": text}],
                                          add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        return list(tok(text, add_special_tokens=False)["input_ids"])


class _CheckedSequence:
    """A backend's sequence with the token ids checked first (a decode step pays one range test)."""

    def __init__(self, seq, model: CompiledModel):
        self.inner, self._model = seq, model

    @property
    def length(self) -> int:
        return self.inner.length

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def reset(self) -> None:
        self.inner.reset()

    def run(self, ids, last_only: bool = False) -> np.ndarray:
        return self.inner.run(self._model.check_token_ids(ids), last_only=last_only)


def _load_tokenizer(files, vocab: int, where: Path):
    """The tokenizer from the verified files alone, copied into a private folder first: transformers
    looks for optional files (chat templates, special-token maps) by name, and only listed ones may count."""
    import tempfile

    names = files.listing()
    if not names:
        raise ArtifactError(f"{where}: the artifact has no tokenizer/ files; rebuild it")
    with tempfile.TemporaryDirectory(prefix="edgec-tok-") as tmp:
        for rel in names:
            target = Path(tmp) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files.read_bytes(rel))
        try:
            if "tokenizer.json" in names:
                # what AutoTokenizer resolves to here too; loading it directly keeps torch out of the
                # process: AutoTokenizer imports it through transformers' config code (~250 MB of RSS)
                from transformers import PreTrainedTokenizerFast

                tok = PreTrainedTokenizerFast.from_pretrained(tmp)
            else:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(tmp)
        except Exception as e:  # noqa: BLE001 - a corrupt tokenizer file fails in many ways
            raise ArtifactError(f"{where}: the tokenizer does not load ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:160] if str(e) else ''}); rebuild the artifact") from None
    if len(tok) > vocab:
        raise ArtifactError(f"{where}: the tokenizer has {len(tok)} tokens but the model only {vocab}; "
                            "rebuild the artifact")
    return tok


class Detokenizer:
    """Text of a growing token list, a piece per token, decoding a short window each time.

    Decoding all tokens so far at every step costs O(context) per token; this
    decodes only the tokens since the last emitted text plus one before them
    (so a tokenizer that strips a leading space strips it from both decodes),
    and waits while a multi-byte character is incomplete.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] were emitted; ids[read:] are pending

    def add(self, token: int) -> str:
        """Append token; returns the new text (possibly empty)."""
        self.ids.append(int(token))
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=self.skip)  # noqa: E731
        before = decode(self.ids[self._prefix:self._read])
        text = decode(self.ids[self._prefix:])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(before):]


def load(path: str | Path, *, threads: int | None = None, trusted_keys=(),
         allow_unsigned: bool = False) -> CompiledModel:
    """Open an artifact (verifying its manifest, files and signature; see CompiledModel)."""
    return CompiledModel(path, threads=threads, trust=trusted_keys, allow_unsigned=allow_unsigned)
