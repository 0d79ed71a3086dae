"""The IR as JSON (structure) plus a WeightStore (tensors): a graph saved and read back exactly.

Attributes are JSON values; tuples and small arrays (`const` values) are tagged so they come
back with their type. Reading re-runs the verifier, so a file that does not describe a valid
graph (unknown op, wrong shapes, a value used before it is defined) fails there, not later.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, GraphFacts, Meta, Node, Value
from .verify import verify
from .weights import WeightStore

FORMAT = "edgec-ir/1"


def _enc(v):
    if isinstance(v, tuple):
        return {"tuple": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, np.ndarray):
        return {"array": v.tolist(), "dtype": v.dtype.name}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {"dict": {k: _enc(x) for k, x in v.items()}}
    return v


def _dec(v):
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if "tuple" in v:
            return tuple(_dec(x) for x in v["tuple"])
        if "array" in v:
            return np.asarray(v["array"], dtype=v["dtype"])
        return {k: _dec(x) for k, x in v["dict"].items()}
    return v


def _spec(v: Value) -> dict:
    out = {"name": v.name, "dtype": v.dtype, "shape": list(v.shape)}
    if v.meta.items():
        out["meta"] = dict(v.meta.items())
    return out


def _value(s: dict, kind: str, producer=None) -> Value:
    return Value(s["name"], s["dtype"], tuple(s["shape"]), kind=kind, producer=producer, meta=Meta(**s.get("meta", {})))


def to_json(graph: Graph) -> dict:
    """The graph's structure and meta (weights are saved apart: graph.weights.save)."""
    return {"format": FORMAT,
            "inputs": [_spec(v) for v in graph.inputs],
            "weights": [_spec(v) for v in graph.weight_values.values()],
            "nodes": [{"op": n.op, "inputs": [v.name for v in n.inputs], "outputs": [_spec(o) for o in n.outputs],
                       "attrs": {k: _enc(a) for k, a in n.attrs.items()}, "meta": dict(n.meta.items())}
                      for n in graph.nodes],
            "outputs": [v.name for v in graph.outputs],
            "facts": graph.facts.to_dict()}


def from_json(data: dict, weights: WeightStore) -> Graph:
    """The graph `to_json` wrote, over its weights; ValueError if it is not a valid graph."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not an {FORMAT} graph")
    try:
        g = Graph(weights)
        env: dict[str, Value] = {}

        def define(v: Value) -> Value:
            if v.name in env:
                raise ValueError(f"%{v.name} defined twice")
            g._names.add(v.name)
            env[v.name] = v
            return v

        for s in data["inputs"]:
            g.inputs.append(define(_value(s, "input")))
        for s in data["weights"]:
            info = weights.info(s["name"])
            if info.dtype != s["dtype"] or tuple(info.shape) != tuple(s["shape"]):
                raise ValueError(f"weight {s['name']!r} is stored as {info.dtype}{list(info.shape)}, "
                                 f"the graph says {s['dtype']}{list(s['shape'])}")
            g.weight_values[s["name"]] = define(_value(s, "weight"))
        for n in data["nodes"]:
            node = Node(n["op"], [env[name] for name in n["inputs"]], [],
                        {k: _dec(a) for k, a in n["attrs"].items()}, Meta(**n.get("meta", {})))
            node.outputs = [define(_value(s, "node", node)) for s in n["outputs"]]
            g.nodes.append(node)
        g.outputs = [env[name] for name in data["outputs"]]
        g.facts = GraphFacts(**data["facts"])
    except KeyError as e:
        raise ValueError(f"it names {e} which it does not define") from None
    except TypeError as e:
        raise ValueError(f"malformed ({e})") from None
    verify(g)
    return g
