"""Load an artifact and generate: the Python side of `edgec run`.

The backend executes one graph for prefill and decode; this loop feeds it
token ids, absolute positions and the KV cache it returned last step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .artifact import load_manifest
from .backends import get_backend, load_module
from .errors import EdgecError
from .sampling import check_options, sample


class CompiledModel:
    """An artifact ready to run. Use `edgec.load(path)`."""

    def __init__(self, path: str | Path, *, threads: int | None = None, verify: bool = True):
        self.path = Path(path)
        self.manifest = load_manifest(self.path, verify=verify)
        backend = get_backend(self.manifest["backend"]["name"])
        executor_cls = getattr(load_module(backend), backend.executor)
        self.executor = executor_cls(self.path / "model", threads=threads)
        graph = self.manifest["graph"]
        self.context_length = int(graph.get("context_length") or 2048)
        self._past = [(v["name"], v["dtype"], v["shape"]) for v in graph["inputs"]
                      if v["name"].startswith("past_")]
        self.eos_token_ids = set(self.manifest.get("generation", {}).get("eos_token_ids") or [])
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path / "tokenizer")
        return self._tokenizer

    # -- one forward step ------------------------------------------------------
    def empty_cache(self) -> dict[str, np.ndarray]:
        return {name: np.zeros([0 if isinstance(d, str) else d for d in shape], dtype)
                for name, dtype, shape in self._past}

    def forward(self, ids: list[int], start: int, cache: dict[str, np.ndarray]):
        """Run ids at positions start.. with the given cache; returns (logits[n, V], new cache)."""
        n = len(ids)
        feeds = {"input_ids": np.asarray([ids], np.int64),
                 "position_ids": np.arange(start, start + n, dtype=np.int64)[None], **cache}
        out = self.executor.run(feeds)
        new_cache = {name: out[name.replace("past_", "present_", 1)] for name in cache}
        return out["logits"][0], new_cache

    def _check_ids(self, ids: list[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise EdgecError("the prompt is empty; give at least one token")
        if len(ids) >= self.context_length:
            raise EdgecError(f"the prompt is {len(ids)} tokens but the model's context is "
                             f"{self.context_length}; shorten the prompt")
        return ids

    # -- public API ------------------------------------------------------------
    def logits(self, input_ids: list[int]) -> np.ndarray:
        """Logits for every position of input_ids: [len(input_ids), vocab]."""
        ids = [int(i) for i in input_ids]
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
        ids = self._check_ids(prompt_ids)
        rng = np.random.default_rng(seed)
        logits, cache = self.forward(ids, 0, self.empty_cache())
        pos = len(ids)
        for i in range(max_new_tokens):
            tok = sample(logits[-1], rng, temperature, top_k, top_p)
            yield tok
            if (stop_at_eos and tok in self.eos_token_ids) or pos + 1 >= self.context_length \
                    or i + 1 == max_new_tokens:
                return
            logits, cache = self.forward([tok], pos, cache)
            pos += 1

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


def load(path: str | Path, *, threads: int | None = None) -> CompiledModel:
    """Open an artifact (verifying its manifest and checksums)."""
    return CompiledModel(path, threads=threads)
