"""A quantized GGUF source's own blocks, put back into the traced graph (`--recipe source`).

transformers loads a GGUF by dequantizing every tensor to float32, so the
traced graph holds exactly those values, in transformers' layout (it reorders
some rows, e.g. llama's q/k heads). Here each quantized GGUF tensor is
converted losslessly to edgec's packed format (edgec/ir/ggml.py) and matched
to the traced weight holding the same values: rows are matched by content, so
no table of tensor names or row orders per architecture is needed, and a match
is accepted only when every traced row equals, byte for byte, a dequantized
row. The weight's readers then read `dequantize(packed, scales, zeros[, mins])`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgecError
from ..ir import Graph, Value
from ..ir import ggml
from ..ir.quant import dequantize


@dataclass
class KeptBlocks:
    kept: dict[str, str]      # graph weight name -> ggml type
    unmatched: list[str]      # quantized GGUF tensors no graph weight holds (e.g. an unused one)
    left_float: list[str]     # graph weights that stay float (their readers cannot take a packed form)
    skipped: list[str] = field(default_factory=list)  # matched, but left float as asked (for a later pass)


def quantized_tensors(path: Path) -> dict[str, tuple[str, tuple[int, int], np.ndarray]]:
    """GGUF tensor name -> (ggml type name, (N, K), raw bytes [N, row_bytes]) for every quantized tensor."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - whatever a damaged file raises
        raise EdgecError(f"cannot read the GGUF tensors of {path}: {e}") from None
    out = {}
    for t in reader.tensors:
        if not ggml.is_quantized(t.tensor_type):
            continue
        ggml.check_supported(t.tensor_type, t.name)
        dims = [int(d) for d in t.shape]
        if len(dims) != 2:
            continue
        out[t.name] = (t.tensor_type.name, (dims[1], dims[0]), np.asarray(t.data))
    return out


def is_quantized_gguf(path: Path) -> bool:
    """True if the GGUF file holds a quantized 2-D tensor (a cheap look at its tensor table)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception:  # noqa: BLE001 - the import reports a damaged file with its own message
        return False
    return any(ggml.is_quantized(t.tensor_type) and len(t.shape) == 2 for t in reader.tensors)


def _row_index(w: np.ndarray) -> dict[bytes, int]:
    return {r.tobytes(): i for i, r in enumerate(np.ascontiguousarray(w))}


def _readers_take_packed(graph: Graph, v: Value) -> bool:
    """Every reader of v reads it as a linear's weight or as an embedding's table (what backends fuse)."""
    users = graph.users().get(v, [])
    return bool(users) and v not in graph.outputs and all(
        (u.op == "linear" and u.inputs[1] is v and v not in u.inputs[:1] + u.inputs[2:])
        or (u.op == "embedding" and u.inputs[0] is v and u.inputs[1] is not v) for u in users)


def keep_blocks(graph: Graph, path: Path, progress: Callable[[str], None] | None = None,
                keep: Callable[[str], bool] | None = None) -> KeptBlocks:
    """Replace each traced weight that a quantized GGUF tensor holds by that tensor's packed blocks
    (only the weights whose name `keep` accepts; the others stay float, listed in .skipped)."""
    say = progress or (lambda msg: None)
    tensors = quantized_tensors(path)
    if not tensors:
        raise EdgecError(f"{path.name} holds no quantized tensors, so there are no blocks to keep; "
                         "choose a recipe that quantizes (see `edgec recipes`)")
    by_shape: dict[tuple[int, int], list[Value]] = {}
    for name in graph.weight_values:
        v = graph.weight_values[name]
        if v.dtype == "float32" and v.rank == 2:
            by_shape.setdefault(tuple(int(d) for d in v.shape), []).append(v)
    kept, unmatched, left_float, skipped, taken = {}, [], [], [], set()
    for i, (tname, (kind, shape, raw)) in enumerate(tensors.items()):
        say(f"source blocks: {i + 1}/{len(tensors)} {tname} ({kind})")
        blocks = ggml.from_ggml(raw, kind, shape, name=tname)
        k = int(shape[1])
        rows = _row_index(dequantize(blocks.packed, blocks.scales, blocks.zeros, blocks.bits, blocks.group, k,
                                     blocks.mins))
        match = None
        for v in by_shape.get(shape, []):
            if v.name in taken:
                continue
            w = np.asarray(graph.weights[v.name], np.float32)
            perm = [rows.get(r.tobytes()) for r in np.ascontiguousarray(w)]
            if None not in perm:
                match = (v, np.asarray(perm, np.int64))
                break
        if match is None:
            unmatched.append(tname)
            continue
        v, perm = match
        taken.add(v.name)
        if keep is not None and not keep(v.name):
            skipped.append(v.name)
            continue
        if not _readers_take_packed(graph, v):
            left_float.append(v.name)
            continue
        # every row of w is, byte for byte, the dequantization of the row perm picks: exact by construction
        parts = [blocks.packed[perm], blocks.scales[perm], blocks.zeros[perm]]
        if blocks.mins is not None:
            parts.append(blocks.mins[perm])
        _replace(graph, v, parts, blocks.bits, blocks.group, k, kind)
        kept[v.name] = kind
    graph.prune_weights()
    return KeptBlocks(kept, unmatched, left_float, skipped)


def _replace(graph: Graph, v: Value, parts: list[np.ndarray], bits: int, group: int, k: int, kind: str) -> None:
    names = ("q", "scales", "zeros", "mins")
    stored = [graph.add_weight(f"{v.name}.{kind.lower()}.{names[i]}", np.ascontiguousarray(a))
              for i, a in enumerate(parts)]
    users = graph.users()[v]
    dq = graph.make_node("dequantize", stored, {"bits": bits, "group_size": group, "k": k}, name=f"{v.name}.dq")
    dq.meta.provenance = f"gguf:{kind}"
    graph.insert_before(min(users, key=graph.nodes.index), dq)
    for n in users:
        n.inputs = [dq.output if x is v else x for x in n.inputs]
