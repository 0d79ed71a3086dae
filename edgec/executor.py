"""What every backend's executor offers the runtime: one protocol, so the generation loop,
eval, profile and the benchmarks never branch on a backend's name.

An Executor runs the compiled graph: `run(feeds)` is one call with every input of the
model interface (a cache of exactly `past` rows in, `past+n` rows out), and
`sequence(capacity)` is one generation's KV cache, where a backend keeps the cache
in place (ONNX GroupQueryAttention, TVM device tensors). A backend without such a
cache returns `ForwardSequence(self, capacity)`, which feeds `run` back its own
presents.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .errors import EdgecError
from .interface import ModelInterface


class Sequence(Protocol):
    capacity: int   # rows of KV cache
    length: int     # tokens in the cache: the next token's position

    def run(self, ids: list[int], last_only: bool = False) -> np.ndarray:
        """Feed ids at positions length..; logits [len(ids), vocab] ([1, vocab] with last_only)."""

    def reset(self) -> None:
        """Empty the cache (same capacity)."""


class Executor(Protocol):
    interface: ModelInterface
    input_names: list[str]           # what the compiled model takes (the interface's inputs)
    output_names: list[str]
    context_length: int | None       # as compiled (None: not recorded)
    vocab_size: int | None
    threads: int | None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def sequence(self, capacity: int) -> Sequence: ...


def check_capacity(capacity: int) -> int:
    capacity = int(capacity)
    if capacity <= 0:
        raise EdgecError(f"KV capacity must be > 0, got {capacity}")
    return capacity


def check_fits(seq, n: int) -> None:
    if n == 0 or seq.length + n > seq.capacity:
        raise EdgecError(f"{n} more tokens do not fit the KV cache ({seq.length} of {seq.capacity} used)")


def forward_feeds(interface: ModelInterface, ids, start: int, cache: dict,
                  rows: int | None = None) -> dict[str, np.ndarray]:
    """The feeds of one call: ids at positions start.., the cache, and (if the interface has the
    input) how many last rows get logits (default: all)."""
    n = len(ids)
    feeds = {interface.tokens: np.asarray([ids], np.int64),
             interface.positions: np.arange(start, start + n, dtype=np.int64)[None], **cache}
    if interface.logits_rows:
        feeds[interface.logits_rows] = np.array([n if rows is None else rows], np.int64)
    return feeds


def empty_cache(interface: ModelInterface) -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, dtype) for name, (dtype, shape) in interface.empty_cache_shapes().items()}


class ForwardSequence:
    """The Sequence protocol over `executor.run`: each call's presents become the next call's pasts."""

    def __init__(self, executor: Executor, capacity: int):
        self.executor, self.capacity = executor, check_capacity(capacity)
        self.reset()

    def reset(self) -> None:
        self.length = 0
        self.cache = empty_cache(self.executor.interface)

    def run(self, ids, last_only: bool = False) -> np.ndarray:
        check_fits(self, len(ids))
        iface = self.executor.interface
        out = self.executor.run(forward_feeds(iface, list(ids), self.length, self.cache, 1 if last_only else None))
        self.cache = {past: out[present] for past, present in iface.present_of().items()}
        self.length += len(ids)
        logits = out[iface.logits][0]
        return logits[-1:] if last_only else logits
