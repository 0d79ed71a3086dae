"""What each node of a graph costs per run, for the roofline: the weight bytes it streams, its
arithmetic (FLOPs) and the activation and KV-cache bytes it moves.

Every cost is a polynomial in the tokens of the run (`seq`) and the context they attend to
(`ctx` = past + seq): c0 + c1*seq + c2*ctx + c3*seq*ctx. That form is exact for this op set (a
linear layer is c1*seq, attention's scores c3*seq*ctx, reading the KV cache c2*ctx, the head over
the last rows only c0), so the coefficients are found by evaluating the node's shapes at four
(seq, ctx) points. The table is written into every artifact (costs.json) at build, so the profiler
(achieved GB/s and GFLOP/s) and the estimator (edgec.estimate) need neither the IR nor the model.

A `dequantize` feeding a linear or an embedding is folded into it: every backend fuses the two, so
the packed bytes are read by the consumer, once. Views (reshape, split, ...) cost nothing. Nodes
get a layer label (`embed`, `0`..`N-1`, `head`) from the layer number in the names of the weights
they read, so time and cost can be split per layer.
"""
from __future__ import annotations

import re

import numpy as np

from . import shapes as S

FORMAT = 1
COSTS_FILE = "costs.json"  # at the artifact's root
# (seq, ctx) points the polynomial is fitted on, and its monomials at a point
_POINTS = ((1, 1), (2, 2), (1, 3), (3, 5))
_VIEWS = {"reshape", "unsqueeze", "const", "split", "slice", "last_rows", "expand"}
_ATTENTION = {"attention", "gqa", "gqa_packed"}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|decoder_layers)\.(\d+)\.")
_KV = re.compile(r"^present_(?:key|value)\.(\d+)$")
# FLOPs per output element of the elementwise and normalisation ops (a rough, stated count)
_FLOPS_PER_ELEMENT = {"rms_norm": 4, "add_rms_norm": 5, "layer_norm": 6, "softmax": 5, "glu": 6, "gelu": 8,
                      "rotary": 3, "rotary_cached": 3, "silu": 4, "sigmoid": 4, "exp": 2, "tanh": 4}


def _monomials(seq: int, ctx: int) -> list[int]:
    return [1, seq, ctx, seq * ctx]


_SOLVE = np.linalg.inv(np.array([_monomials(s, c) for s, c in _POINTS], np.float64))


def evaluate(coef, seq: int, ctx: int) -> float:
    """A cost polynomial's value for a run of `seq` tokens over a context of `ctx`."""
    return float(np.dot(coef, _monomials(seq, ctx)))


def _numel(shape, bind: dict) -> int:
    n = 1
    for d in shape:
        n *= d if isinstance(d, int) else S.evaluate(d, bind)
    return n


def _itemsize(dtype: str) -> int:
    return np.dtype("float16" if dtype == "bfloat16" else dtype).itemsize


def _bytes(v, bind: dict) -> int:
    return _numel(v.shape, bind) * _itemsize(v.dtype)


class _Weights:
    """Packed bytes behind a value: a weight's own, or the weights a dequantize reads."""

    def __init__(self, graph):
        self.graph = graph

    def of(self, v) -> int:
        if v.kind == "weight":
            return self.graph.weights.info(v.name).nbytes
        p = v.producer
        if p is not None and p.op == "reshape":  # quantized MoE experts: reshape(dequantize(...))
            return self.of(p.inputs[0])
        if p is not None and p.op == "dequantize":
            # codes at `bits` each, whether the IR holds them packed or one per byte (backends pack them)
            codes = self.of(p.inputs[0])
            if p.attrs.get("bits") and all(isinstance(d, int) for d in v.shape):
                codes = int(np.prod(v.shape)) * int(p.attrs["bits"]) // 8
            return codes + sum(self.of(i) for i in p.inputs[1:])
        return 0

    def names(self, node) -> list[str]:
        out = []
        for v in node.inputs:
            if v.kind == "weight":
                out.append(v.name)
            elif v.producer is not None and v.producer.op in ("dequantize", "reshape"):
                out += self.names(v.producer)
        return out


def _node_cost(node, w: _Weights, bind: dict) -> tuple[float, float, float]:
    """(weight bytes, other bytes, FLOPs) of one run of `node` at the symbol values `bind`."""
    op = node.op
    acts = [v for v in node.inputs if v.kind != "weight" and not (v.producer and v.producer.op == "dequantize")]
    out_bytes = sum(_bytes(v, bind) for v in node.outputs)
    out_numel = sum(_numel(v.shape, bind) for v in node.outputs)
    if op in _VIEWS:
        return 0.0, 0.0, 0.0
    if op == "embedding":
        table, ids = node.inputs
        rows = _numel(ids.shape, bind)
        per_row = w.of(table) / max(1, table.shape[0]) if isinstance(table.shape[0], int) else 0
        return 0.0, rows * per_row + out_bytes, 0.0
    if op in ("linear", "linear_w8a8", "matmul"):
        x = node.inputs[0]
        k = x.shape[-1] if isinstance(x.shape[-1], int) else S.evaluate(x.shape[-1], bind)
        weight = sum(w.of(v) for v in node.inputs[1:])
        if op == "matmul" and weight == 0:  # two activations
            other = sum(_bytes(v, bind) for v in acts)
        else:
            other = _bytes(x, bind)
        return float(weight), float(other + out_bytes), 2.0 * k * out_numel
    if op in _ATTENTION:
        out = node.outputs[0]
        q_numel = _numel(out.shape, bind)  # heads * seq * head_dim
        past = [v for v in acts if any("past" in S.symbols_of(d) for d in v.shape if not isinstance(d, int))]
        fresh = [v for v in acts if all(v is not p for p in past) and v.dtype != "int64"]  # q, k, v
        kv_out = node.outputs[1:]  # present K/V: the cache read (past) and written (seq)
        kv = sum(_bytes(v, bind) for v in kv_out) if kv_out else sum(_bytes(v, bind) for v in past)
        tables = _gathered(node, w, bind)  # gqa_packed's rotary tables
        return 0.0, float(kv + tables + sum(_bytes(v, bind) for v in fresh) + _bytes(out, bind)), \
            4.0 * q_numel * bind["__ctx"]
    if op == "moe":
        return _moe_cost(node, w, bind, out_bytes)
    if op == "rotary_cached":  # x, positions, cos table, sin table: the rows at the positions are read
        x = node.inputs[0]
        return 0.0, float(_gathered(node, w, bind) + _bytes(x, bind) + out_bytes), \
            float(_FLOPS_PER_ELEMENT[op] * out_numel)
    weight = sum(w.of(v) for v in node.inputs)
    act_in = sum(_bytes(v, bind) for v in acts)
    return float(weight), float(act_in + out_bytes), float(_FLOPS_PER_ELEMENT.get(op, 1) * out_numel)


def _moe_cost(node, w: _Weights, bind: dict, out_bytes: int) -> tuple[float, float, float]:
    """A moe layer reads its router once and, per token, the top_k experts it routes to: k/E of the
    expert weights per token. Exact for a decode step (k distinct experts); for a prompt it counts
    every token's experts as if none were shared (an upper bound; prefill is compute-bound anyway)."""
    x, router, gate_up, down = node.inputs[:4]
    experts, hidden, inter = gate_up.shape[0], down.shape[1], down.shape[2]
    tokens, k = _numel(x.shape, bind) / hidden, node.attrs["top_k"]
    weight = w.of(router) + sum(w.of(b) for b in node.inputs[4:]) + tokens * k / experts * (w.of(gate_up) + w.of(down))
    flops = tokens * (2.0 * hidden * experts + k * 6.0 * hidden * inter)
    return float(weight), float(_bytes(x, bind) + out_bytes), flops


def _gathered(node, w: _Weights, bind: dict) -> float:
    """Bytes of the rows a node gathers from its weight tables (rotary cos/sin) at its int64 positions."""
    positions = [v for v in node.inputs if v.kind != "weight" and v.dtype == "int64"]
    rows = _numel(positions[0].shape, bind) if positions else 0
    return sum(w.of(v) / v.shape[0] for v in node.inputs
               if v.kind == "weight" and isinstance(v.shape[0], int) and v.shape[0] > 0) * rows


def layer_labels(graph) -> list[str]:
    """Per node (graph order): 'embed' before the first layer, the layer number, 'head' after the last."""
    w = _Weights(graph)
    direct: list[str | None] = []
    for n in graph.nodes:
        label = None
        for name in w.names(n):
            m = _LAYER.search(name)
            if m:
                label = m.group(1)
                break
        if label is None:
            label = next((m.group(1) for v in n.outputs if (m := _KV.match(v.name))), None)
        direct.append(label)
    known = [i for i, label in enumerate(direct) if label is not None]
    if not known:
        return ["model"] * len(direct)
    first, last = known[0], known[-1]
    out, current = [], "embed"
    for i, label in enumerate(direct):
        if i > last:
            current = "head"
        elif label is not None:
            current = label
        elif i < first:
            current = "embed"
        out.append(current)
    return out


def node_costs(graph) -> list[dict]:
    """One row per node that does work: name (its first output), op, layer and the coefficients of
    weight_bytes, bytes (activations and KV cache) and flops (see the module docstring)."""
    w = _Weights(graph)
    labels = layer_labels(graph)
    symbols = sorted({s for v in graph.inputs for d in v.shape if not isinstance(d, int)
                      for s in S.symbols_of(d)}
                     | {s for n in graph.nodes for v in n.outputs for d in v.shape if not isinstance(d, int)
                        for s in S.symbols_of(d)})
    folded = {id(n) for n in graph.nodes if n.op == "dequantize" and all(_reads_packed(graph, c) for c in _consumers(graph, n))}
    rows = []
    for node, layer in zip(graph.nodes, labels):
        if id(node) in folded or node.op in _VIEWS:
            continue
        samples = []
        for seq, ctx in _POINTS:
            # seq and past are the model's run symbols; any other (logits_rows) is 1: the last row
            bind = {s: 1 for s in symbols} | {"seq": seq, "past": ctx - seq, "__ctx": ctx}
            samples.append(_node_cost(node, w, bind))
        coef = _SOLVE @ np.array(samples, np.float64)  # columns: weight bytes, bytes, flops
        coef[np.abs(coef) < 1e-6] = 0.0
        if not coef.any():
            continue
        rows.append({"name": node.outputs[0].name if node.outputs else node.op, "op": node.op, "layer": layer,
                     "weight_bytes": _round(coef[:, 0]), "bytes": _round(coef[:, 1]), "flops": _round(coef[:, 2])})
    return rows


def _round(c) -> list[float]:
    return [float(round(x, 3)) for x in c]


def _reads_packed(graph, node) -> bool:
    """Does `node` read a dequantize's packed weight itself (every backend fuses the two): a linear or an
    embedding, or the reshape that makes quantized MoE experts [E, R, K] for moe ops."""
    if node.op == "reshape":
        return all(c.op == "moe" for c in _consumers(graph, node))
    return node.op in ("linear", "embedding", "linear_w8a8")


def _consumers(graph, node) -> list:
    outs = {id(v) for v in node.outputs}
    return [n for n in graph.nodes if any(id(v) in outs for v in n.inputs)]


def cost_table(graph) -> dict:
    """The artifact's costs.json: the node rows and the totals a reader needs most."""
    rows = node_costs(graph)
    # every node by its first output's name: [op, layer] (backends name their kernels after it)
    every = {n.outputs[0].name: [n.op, label] for n, label in zip(graph.nodes, layer_labels(graph)) if n.outputs}
    return {"format": FORMAT, "polynomial": "c0 + c1*seq + c2*ctx + c3*seq*ctx (ctx = past + seq)",
            "nodes": rows, "layers": sorted({r["layer"] for r in rows}, key=layer_key), "by_name": every}


def layer_key(label: str) -> tuple[int, str]:
    """embed, 0, 1, ..., head (and anything else after)."""
    order = {"embed": -1, "head": 10**9, "model": 0}
    if label in order:
        return order[label], ""
    return (int(label), "") if label.isdigit() else (10**9 + 1, label)



def totals(table: dict, seq: int, ctx: int) -> dict[str, float]:
    """Weight bytes, other bytes and FLOPs of one run of `seq` tokens over `ctx` (all nodes)."""
    out = {"weight_bytes": 0.0, "bytes": 0.0, "flops": 0.0}
    for r in table["nodes"]:
        for k in out:
            out[k] += evaluate(r[k], seq, ctx)
    return out
