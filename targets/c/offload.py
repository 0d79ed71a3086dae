"""The C backend's hot/cold lowering: each planned gated FFN with cold neurons becomes one `ffn_offload` call.

On a copy of the graph (the caller's stays as it is), every FFN the planner (edgec/offload.py) splits
is replaced by a node `ffn_offload(x, gate, up_hot, down_t_hot, hot_idx, cold_idx)` that only this
backend's code generator lowers (to runtime/offload.h's ec_ffn_offload). Its weights are the rows the
plan keeps resident; the cold neurons' rows go to cold.bin, one bundle per neuron in ascending order
per FFN (each FFN's bundles start on a 4 KiB boundary):

    [gate row (stream mode)] up row, down column
each row as the format stores it: fp16 halves, or a quantized row's codes, scales, zero points and
mins (edgec.ir.quant's layout). The down projection is stored transposed (neuron-major) so a neuron's
column is one row: fp16 exactly; a quantized one (groups along the neurons) is dequantized and
quantized again along the model width with two more bits (DOWN_BITS) and the same group size
(asymmetric, searched ranges): within quantization error of the source, not bit-exact (c.json's
`down_requantized` says so).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value
from edgec.ir.quant import PackedLayout, QuantSpec, dequantize, quantize_rtn
from edgec.ir.weights import WeightStore

from .codegen import GLU_ACT, WIDENED_BITS

COLD_FILE = "cold.bin"
BLOCK = 4096


@dataclass
class Rows:
    """One weight in a form whose rows can be taken: quantized (arrays packed, scales, zeros[, mins]) or fp16 [N, K]."""

    arrays: list[np.ndarray]
    bits: int = 0             # 0: fp16
    group_size: int = 0
    k: int = 0

    @property
    def f16(self) -> bool:
        return self.bits == 0

    def take(self, rows) -> "Rows":
        return Rows([np.ascontiguousarray(a[rows]) for a in self.arrays], self.bits, self.group_size, self.k)

    def layout(self) -> PackedLayout:
        return PackedLayout.of(self.bits, self.group_size, self.k)

    def row_k(self) -> int:
        return self.arrays[0].shape[1] if self.f16 else self.k

    def stored_row(self) -> int:
        """Bytes of one row in the file (a bundle's part)."""
        return sum(int(np.prod(a.shape[1:])) * a.itemsize for a in self.arrays)

    def memory_row(self) -> int:
        """Bytes of one row as the runtime holds it (3/5/6-bit codes as bytes, float16 scales as float32)."""
        if self.f16:
            return self.row_k() * 2
        lay = self.layout()
        codes = lay.kp * (8 if lay.bits in WIDENED_BITS else lay.bits) // 8
        return codes + lay.groups * (4 + 1 + (4 if len(self.arrays) > 3 else 0))

    def bundle_bytes(self) -> np.ndarray:
        """[N, stored_row] uint8: each row's stored bytes, parts in order."""
        n = self.arrays[0].shape[0]
        return np.concatenate([np.ascontiguousarray(a).reshape(n, -1).view(np.uint8) for a in self.arrays], axis=1)

    def part(self) -> dict:
        """runtime/offload.h's ec_cold_part for this weight's rows."""
        if self.f16:
            return {"f16": 1, "bits": 0, "group": 0, "k": self.row_k(), "kp": 0, "groups": 0, "scale_half": 0,
                    "has_mins": 0}
        lay = self.layout()
        return {"f16": 0, "bits": lay.bits, "group": lay.group, "k": lay.k, "kp": lay.kp, "groups": lay.groups,
                "scale_half": int(self.arrays[1].dtype == np.float16), "has_mins": int(len(self.arrays) > 3)}


@dataclass
class Gated:
    """One FFN of the form glu(x W_gate^T, x W_up^T) W_down^T, no biases, weights fp16 or quantized."""

    index: int
    x: Value
    glu: Node
    down: Node
    removed: list[Node]           # the producers (and their split), the glu and the down
    gate: Rows
    up: Rows
    down_w: Rows                  # as stored: [D, I]
    predictor: dict | None = None  # passes/predictor.py's, when it ran: candidates are read, the gate is not kept

    @property
    def neurons(self) -> int:
        return self.glu.output.shape[-1]


def _weight_rows(graph: Graph, w: Value, rows: slice | None = None) -> Rows | None:
    """The stored form behind a linear's float weight (dequantize or cast of weights), rows [rows]."""
    src = w.producer
    if src is None or not all(i.kind == "weight" for i in src.inputs):
        return None
    if src.op == "dequantize":
        arrays = [np.asarray(graph.weight(v)) for v in src.inputs]
        if len(arrays) > 3 and arrays[3].dtype != arrays[1].dtype:  # one dtype for scales and mins: widen exactly
            arrays[1], arrays[3] = arrays[1].astype(np.float32), arrays[3].astype(np.float32)
        r = Rows(arrays, int(src.attrs["bits"]), int(src.attrs["group_size"]), int(src.attrs["k"]))
    elif src.op == "cast" and src.inputs[0].dtype == "float16" and src.inputs[0].rank == 2:
        r = Rows([np.asarray(graph.weight(src.inputs[0]))])
    else:
        return None
    return r.take(rows) if rows is not None else r


def _part_rows(graph: Graph, v: Value, users) -> tuple[Rows | None, list[Node]]:
    """The weight rows producing glu input v: a linear's, or a slice of a fused linear's output."""
    p = v.producer
    if p is None:
        return None, []
    if p.op == "linear" and len(p.inputs) == 2 and len(users.get(v, [])) == 1:
        return _weight_rows(graph, p.inputs[1]), [p]
    if p.op in ("split", "slice"):
        lin = p.inputs[0].producer
        if lin is None or lin.op != "linear" or len(lin.inputs) != 2:
            return None, []
        if p.op == "split":
            sizes = [int(s) for s in p.attrs["sizes"]]
            i = p.outputs.index(v)
            start = sum(sizes[:i])
            stop = start + sizes[i]
        else:
            start, stop = int(p.attrs["start"]), int(p.attrs["end"])
        readers = users.get(lin.output, [])
        return _weight_rows(graph, lin.inputs[1], slice(start, stop)), [lin, *readers]
    return None, []


def find_gated(graph: Graph) -> tuple[list[Gated], list[str]]:
    """The FFNs this lowering can offload, in graph order, and why the others cannot."""
    from edgec.passes.lib.ffn import find_ffns

    users = graph.users()
    found, why = [], []
    for i, ffn in enumerate(find_ffns(graph)):
        glu = ffn.glu
        name = ffn.down.inputs[1].name
        if glu is None or ffn.between != [glu] or ffn.channel_weights:
            why.append(f"{name}: not a plain gated MLP (glu straight into the down projection)")
            continue
        if ffn.down.op != "linear" or len(ffn.down.inputs) != 2:
            why.append(f"{name}: the down projection has a bias or is not a weight-only linear")
            continue
        (gate, g_nodes), (up, u_nodes) = (_part_rows(graph, v, users) for v in glu.inputs)
        down = _weight_rows(graph, ffn.down.inputs[1])
        if gate is None or up is None or down is None:
            why.append(f"{name}: its linears need fp16 or quantized weights without bias")
            continue
        x = (g_nodes[0].inputs[0])
        if u_nodes[0].inputs[0] is not x or x.dtype != "float32":
            why.append(f"{name}: gate and up read different inputs")
            continue
        if glu.attrs["act"] not in GLU_ACT:
            why.append(f"{name}: activation {glu.attrs['act']!r}")
            continue
        removed = list({id(n): n for n in [*g_nodes, *u_nodes, glu, ffn.down]}.values())
        pred = graph.annotations.get("predictors", {}).get(glu.output.name)
        found.append(Gated(i, x, glu, ffn.down, removed, gate, up, down, pred))
    return found, why


# the width a quantized down projection is stored again with, transposed: two bits more than its own (capped at
# 8), so the second rounding adds ~1/16 of the first's error (measured on SmolLM2's Q4_1 down projections at
# 4 bits: perplexity 28.25 -> 29.43 with three quarters of the neurons' columns requantized; see RESULTS.md)
DOWN_BITS = {2: 4, 3: 5, 4: 6, 5: 8, 6: 8, 8: 8}


def transposed_down(d: Rows) -> Rows:
    """The down projection neuron-major [I, D]: fp16 exactly, a quantized one quantized again along D with
    DOWN_BITS[bits] bits."""
    if d.f16:
        return Rows([np.ascontiguousarray(d.arrays[0].T)])
    mins = d.arrays[3] if len(d.arrays) > 3 else None
    w = dequantize(*d.arrays[:3], d.bits, d.group_size, d.k, mins=mins)  # [D, I] float32
    bits = DOWN_BITS[d.bits]
    spec = QuantSpec(bits, d.group_size, symmetric=False, scale_dtype=d.arrays[1].dtype.name)
    packed, scales, zeros = quantize_rtn(np.ascontiguousarray(w.T), spec, search=True)
    return Rows([packed, scales.astype(d.arrays[1].dtype), zeros], bits, d.group_size, w.shape[0])


def costs(graph: Graph, gated: list[Gated], downs: list[Rows], mode: str):
    """edgec.offload.FFNCost for each FFN and the memory bytes of every other weight the model reads."""
    from edgec.offload import FFNCost

    out = []
    for f, dt in zip(gated, downs):
        n = f.neurons
        streamed = mode == "stream" or f.predictor is not None  # the gate rows travel with the neuron
        parts = ([f.gate] if streamed else []) + [f.up, dt]
        fixed = 4 * n + (n * f.gate.memory_row() if not streamed else 0)
        if f.predictor is not None and mode == "sparse":
            fixed += f.predictor["a"].nbytes + f.predictor["b"].nbytes
        dense = n * (f.gate.memory_row() + f.up.memory_row()) + f.down_w.arrays[0].shape[0] * f.down_w.memory_row()
        out.append(FFNCost(f.down.inputs[1].name, n, sum(p.stored_row() for p in parts),
                           sum(p.memory_row() for p in parts), sum(p.memory_row() for p in parts), fixed, dense))
    return out, _other_memory(graph, gated)


def _other_memory(graph: Graph, gated: list[Gated]) -> int:
    """Bytes in memory of the weights outside the offloaded FFNs (widened as the runtime holds them)."""
    skip = {id(n) for f in gated for n in f.removed}
    seen, total = set(), 0
    users = graph.users()
    for n in graph.nodes:
        if id(n) in skip:
            continue
        for k, v in enumerate(n.inputs):
            if v.kind != "weight" or v.name in seen:
                continue
            if n.op == "dequantize" and all(id(u) in skip for u in users.get(n.output, [])):
                continue  # an offloaded linear's weight
            if n.op == "cast" and all(id(u) in skip for u in users.get(n.output, [])):
                continue
            seen.add(v.name)
            a = graph.weight(v)
            size = a.nbytes
            if n.op == "dequantize" and k in (1, 3) and a.dtype == np.float16:
                size *= 2
            elif n.op == "dequantize" and k == 0 and n.attrs["bits"] in WIDENED_BITS:
                size = size * 8 // n.attrs["bits"]
            total += size
    return total


def _copy(graph: Graph) -> Graph:
    """A graph to rewrite: its own nodes and values, the caller's weight arrays (not copied)."""
    store = WeightStore()
    store._arrays = dict(graph.weights._arrays)
    return copy.deepcopy(graph, {id(graph.weights): store})


def _decode(g: Graph, name: str, r: Rows) -> tuple[Value, list[Node]]:
    """Weights for rows r and the dequantize/cast node the code generator folds into the call."""
    vals = [g.add_weight(f"{name}.{i}", a) for i, a in enumerate(r.arrays)]
    if r.f16:
        node = g.make_node("cast", vals, {"dtype": "float32"}, name=name)
    else:
        node = g.make_node("dequantize", vals, {"bits": r.bits, "group_size": r.group_size, "k": r.k}, name=name)
    return node.output, [node]


def lower(graph: Graph, plan, gated_ids: list[int], downs: list[Rows], out_dir: Path) -> tuple[Graph, int]:
    """The graph with the plan's FFNs as ffn_offload nodes, and cold.bin written in out_dir; returns (graph, size)."""
    from edgec.passes.dce import dce

    g = _copy(graph)
    gated = {f.index: f for f in find_gated(g)[0]}
    offset = 0
    with open(Path(out_dir) / COLD_FILE, "wb") as fh:
        k = 0
        for i, p, dt in zip(gated_ids, plan.ffns, downs):
            if not len(p.cold):
                continue  # the budget holds all of this FFN: it stays as it was
            f = gated[i]
            pred = f.predictor if plan.mode == "sparse" else None
            stream = plan.mode == "stream" or pred is not None
            hot, cold = p.hot, p.cold
            parts = ([f.gate] if stream else []) + [f.up, dt]
            bundles = np.concatenate([r.take(cold).bundle_bytes() for r in parts], axis=1) if len(cold) else \
                np.zeros((0, 0), np.uint8)
            bundle = int(bundles.shape[1]) if len(cold) else sum(r.stored_row() for r in parts)
            fh.write(bundles.tobytes())
            size = bundles.nbytes
            pad = (-size) % BLOCK
            fh.write(b"\0" * pad)
            name = f"offload{k}"
            new: list[Node] = []
            ins = {"x": f.x}
            gate_rows = f.gate.take(hot) if stream else f.gate
            if not stream or len(hot):
                ins["gate"], nodes = _decode(g, f"{name}.gate", gate_rows)
                new += nodes
            if len(hot):
                for role, r in (("up", f.up.take(hot)), ("down_t", dt.take(hot))):
                    ins[role], nodes = _decode(g, f"{name}.{role}", r)
                    new += nodes
                ins["hot_idx"] = g.add_weight(f"{name}.hot_idx", hot.astype(np.int32))
            if len(cold):
                ins["cold_idx"] = g.add_weight(f"{name}.cold_idx", cold.astype(np.int32))
            if pred is not None:
                ins["pred_a"] = g.add_weight(f"{name}.pred_a", np.ascontiguousarray(pred["a"], np.float16))
                ins["pred_b"] = g.add_weight(f"{name}.pred_b", np.ascontiguousarray(pred["b"], np.float16))
            attrs = {"id": k, "d": int(f.x.shape[-1]), "inter": f.neurons, "hot": int(len(hot)),
                     "cold": int(len(cold)), "act": f.glu.attrs["act"],
                     "threshold": float(f.glu.attrs.get("threshold", 0.0) or 0.0), "stream": int(stream),
                     "offset": offset, "bundle": bundle, "parts": [r.part() for r in parts], "slots": int(p.slots),
                     "rank": int(pred["rank"]) if pred else 0, "tau": float(pred["tau"]) if pred else 0.0,
                     "roles": list(ins)}
            node = Node("ffn_offload", list(ins.values()), [f.down.output], attrs)
            f.down.output.producer = node
            at = g.nodes.index(f.down)
            g.nodes[at:at + 1] = [*new, node]
            for n in f.removed:
                if n is not f.down and n in g.nodes:
                    g.nodes.remove(n)
            offset += size + pad
            k += 1
    dce(g)
    return g, offset
