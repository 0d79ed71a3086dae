"""The compiled model's I/O interface, described once: tensor names, roles and the KV cache.

Every artifact's graph has the same shape of interface: token ids and absolute
positions in, logits out, and per attention layer a cache that the caller
feeds back (`past` in, `present` out, `present` = `past` plus this call's rows
along `seq_axis`). The kv_cache pass names the cache tensors with
`kv_name`, the pipeline writes `ModelInterface.to_dict()` into the manifest,
and the runtime and every backend read the cache pairs from here instead of
repeating a naming convention.

Cache layout "bhsd": [batch, kv_heads, seq, head_dim] (seq_axis 2); int8
caches add a per-row scale tensor [batch, kv_heads, seq, 1] of the same role.
A backend may add `logits_rows` (its prelower phase): the caller says how many
of the last positions need logits (1 for a prompt's prefill in generation).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ArtifactError

TOKENS = "input_ids"
POSITIONS = "position_ids"
LOGITS = "logits"
LOGITS_ROWS = "logits_rows"  # optional int64 [1]: how many last positions get logits (passes/logits_rows.py)
CACHE_LAYOUT = "bhsd"
SEQ_AXIS = 2


def kv_name(side: str, kind: str, layer: int) -> str:
    """The name of one cache tensor: side 'past' or 'present', kind 'key', 'value', 'key_scale', ..."""
    if side not in ("past", "present"):
        raise ValueError(f"side must be 'past' or 'present', not {side!r}")
    return f"{side}_{kind}.{layer}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # ints and symbolic dims ('seq', 'past', ...)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class CacheSlot:
    """One cached tensor of one layer: fed in as `past`, returned grown as `present`."""

    layer: int
    kind: str       # "key", "value", "key_scale", "value_scale"
    past: TensorSpec
    present: str    # output name

    def to_dict(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "past": self.past.to_dict(), "present": self.present}


@dataclass(frozen=True)
class ModelInterface:
    """Inputs and outputs by role; `cache` lists every past/present pair in input order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cache: tuple[CacheSlot, ...] = ()
    layout: str = CACHE_LAYOUT
    seq_axis: int = SEQ_AXIS
    tokens: str = TOKENS
    positions: str = POSITIONS
    logits: str = LOGITS
    logits_rows: str | None = None   # the optional rows input, when the graph has one
    extra_inputs: tuple[str, ...] = field(default=())  # inputs with no role above (test graphs)

    # -- construction ------------------------------------------------------------
    @classmethod
    def from_signature(cls, inputs, outputs) -> "ModelInterface":
        """From (name, dtype, shape) specs (IR values or manifest entries), pairing caches by kv_name."""
        ins = tuple(_spec(v) for v in inputs)
        outs = tuple(_spec(v) for v in outputs)
        out_names = {s.name for s in outs}
        cache, extra = [], []
        for s in ins:
            slot = _slot(s)
            if slot is None:
                if s.name not in (TOKENS, POSITIONS, LOGITS_ROWS):
                    extra.append(s.name)
                continue
            if slot.present not in out_names:
                raise ValueError(f"cache input {s.name!r} has no output {slot.present!r}")
            cache.append(slot)
        rows = LOGITS_ROWS if any(s.name == LOGITS_ROWS for s in ins) else None
        return cls(ins, outs, tuple(cache), logits_rows=rows, extra_inputs=tuple(extra))

    @classmethod
    def of_graph(cls, graph) -> "ModelInterface":
        return cls.from_signature(graph.inputs, graph.outputs)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "ModelInterface":
        """The manifest's interface (graph.interface); artifacts without one are read by the naming rule."""
        graph = manifest["graph"]
        try:
            if "interface" not in graph:
                return cls.from_signature(graph["inputs"], graph["outputs"])
            d = graph["interface"]
            ins = tuple(_spec(v) for v in graph["inputs"])
            outs = tuple(_spec(v) for v in graph["outputs"])
            by_name, out_names = {s.name: s for s in ins}, {s.name for s in outs}
            cache = tuple(CacheSlot(int(c["layer"]), str(c["kind"]), by_name[c["past"]["name"]], str(c["present"]))
                          for c in d["cache"])
            rows = d.get("logits_rows")
            missing = [c.present for c in cache if c.present not in out_names]
            roles = {d["tokens"], d["positions"]} | {c.past.name for c in cache} | ({rows} if rows else set())
            if missing or not roles <= set(by_name) or d["logits"] not in out_names:
                raise ValueError("it names tensors the graph does not have")
            return cls(ins, outs, cache, str(d["layout"]), int(d["seq_axis"]), d["tokens"], d["positions"],
                       d["logits"], rows, tuple(n for n in by_name if n not in roles))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"the manifest's model interface is not valid ({e}); rebuild the artifact") from None

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "positions": self.positions, "logits": self.logits,
                "logits_rows": self.logits_rows, "layout": self.layout, "seq_axis": self.seq_axis,
                "cache": [c.to_dict() for c in self.cache], "extra_inputs": list(self.extra_inputs)}

    def to_signature(self) -> dict:
        """The inputs and outputs with dtypes and shapes (what from_signature reads)."""
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}

    def problem(self) -> str | None:
        """What keeps a runtime from generating with this interface, or None."""
        ins = {s.name: s for s in self.inputs}
        for name in (self.tokens, self.positions) + ((self.logits_rows,) if self.logits_rows else ()):
            if name not in ins or ins[name].dtype != "int64":
                return f"graph.inputs must have {name} (int64)"
        logits = next((s for s in self.outputs if s.name == self.logits), None)
        if logits is None or not logits.dtype.startswith("float") or not logits.shape:
            return f"graph.outputs must have {self.logits} (float)"
        if self.extra_inputs:
            return f"graph input {self.extra_inputs[0]!r} is not one the runtime feeds"
        return None

    # -- use -----------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def kv_layers(self) -> int:
        return len({c.layer for c in self.cache})

    def present_of(self) -> dict[str, str]:
        """past input name -> present output name."""
        return {c.past.name: c.present for c in self.cache}

    def empty_cache_shapes(self) -> dict[str, tuple[str, list[int]]]:
        """past name -> (dtype, shape with every symbolic dim 0): the cache before the first token."""
        return {c.past.name: (c.past.dtype, [0 if isinstance(d, str) else int(d) for d in c.past.shape])
                for c in self.cache}

    def cache_shapes(self, capacity: int) -> dict[str, tuple[str, list[int]]]:
        """past name -> (dtype, shape) of a preallocated cache of `capacity` rows."""
        return {c.past.name: (c.past.dtype, [capacity if isinstance(d, str) else int(d) for d in c.past.shape])
                for c in self.cache}


def _spec(v) -> TensorSpec:
    if isinstance(v, TensorSpec):
        return v
    if isinstance(v, dict):
        return TensorSpec(v["name"], v["dtype"], tuple(v["shape"]))
    return TensorSpec(v.name, v.dtype, tuple(v.shape))


def _slot(s: TensorSpec) -> CacheSlot | None:
    if not s.name.startswith("past_") or "." not in s.name:
        return None
    kind, _, layer = s.name[len("past_"):].rpartition(".")
    if not layer.isdigit() or not kind:
        return None
    return CacheSlot(int(layer), kind, s, kv_name("present", kind, int(layer)))
