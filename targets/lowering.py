"""The lowering core every backend shares: IR op -> lowering, explicit fallbacks, per-lowering state.

A lowering is `fn(cx, node)`: it emits the backend's code for one IR node
(what it returns is the backend's business: ONNX appends nodes to its context
and returns None, TVM returns Relax expressions). A specialised lowering (a
contrib kernel, a fused form) is registered over the general one and names
it: `@table.register("linear", fallback=_linear)`. Where it does not apply it
returns NotImplemented, and `table.lower` runs the fallback. Registering a
second lowering for an op without naming the current one is an error, so the
chain is written in the code and never decided by file names or import order.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterator

from edgec.errors import UnsupportedModelError
from edgec.ir import Graph, Node, Value

Lowering = Callable[[Any, Node], Any]


class LoweringTable(Mapping):
    """IR op name -> the lowering tried first (a read-only mapping); `lower` follows fallbacks."""

    def __init__(self, backend: str):
        self.backend = backend  # for messages: "ONNX", "TVM"
        self._first: dict[str, Lowering] = {}
        self._fallback: dict[tuple[str, Lowering], Lowering] = {}

    def register(self, *ops: str, fallback: Lowering | None = None):
        """Decorator: fn lowers `ops`; with `fallback`, it replaces that (registered) lowering of each
        op and returns NotImplemented where the fallback should run instead."""

        def deco(fn: Lowering) -> Lowering:
            for op in ops:
                current = self._first.get(op)
                if current is not fallback:
                    have = getattr(current, "__qualname__", None)
                    raise ValueError(f"{self.backend} lowering of {op!r}: {fn.__qualname__} names fallback "
                                     f"{getattr(fallback, '__qualname__', None)}, but the table has {have}")
                if fallback is not None:
                    self._fallback[(op, fn)] = fallback
                self._first[op] = fn
            return fn

        return deco

    def lower(self, cx, node: Node):
        """Run node's lowering, and its fallbacks in turn while they return NotImplemented."""
        fn = self._first[node.op]
        while (out := fn(cx, node)) is NotImplemented:
            fn = self._fallback[(node.op, fn)]
        return out

    def fallback_of(self, op: str, fn: Lowering) -> Lowering | None:
        """The lowering fn names as its fallback for op (None: fn is the last resort)."""
        return self._fallback.get((op, fn))

    def __getitem__(self, op: str) -> Lowering:
        return self._first[op]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)


class LoweringContext:
    """What every backend's lowering context has besides its own emission state.

    - `absorbed`: ids of IR nodes a consumer's lowering emitted as part of its own
      (a dequantize folded into a matmul): the driver skips them.
    - `state(owner)`: a dict kept for the whole graph by one lowering (e.g. values
      computed once per graph), keyed by that lowering, so no lowering bolts
      attributes onto the context or shares globals with another.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.absorbed: set[int] = set()
        self._users: dict[Value, list[Node]] | None = None
        self._state: dict[Any, dict] = {}

    def users(self, v: Value) -> list[Node]:
        """The IR nodes that read v (computed once per graph)."""
        if self._users is None:
            self._users = self.graph.users()
        return self._users.get(v, [])

    def state(self, owner) -> dict:
        return self._state.setdefault(owner, {})


def check_supported(graph: Graph, table: LoweringTable) -> None:
    """Fail with the names of the graph's ops the table cannot lower (before any is lowered)."""
    missing = sorted({n.op for n in graph.nodes} - set(table))
    if missing:
        raise UnsupportedModelError(f"the {table.backend} target has no lowering for IR op(s) "
                                    f"{', '.join(map(repr, missing))}")
