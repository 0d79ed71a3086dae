"""Reference interpreter: runs any graph with the ops' numpy implementations.

Every pass and every backend is tested against this.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, Value
from .ops import get_op


def interpret(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `graph` on named inputs; returns outputs by name."""
    env: dict[Value, np.ndarray] = {}
    for v in graph.inputs:
        if v.name not in inputs:
            raise KeyError(f"missing graph input {v.name!r}")
        arr = np.asarray(inputs[v.name])
        if arr.dtype.name != v.dtype:
            raise TypeError(f"input {v.name!r}: expected {v.dtype}, got {arr.dtype}")
        if arr.ndim != v.rank:
            raise ValueError(f"input {v.name!r}: expected rank {v.rank}, got shape {arr.shape}")
        env[v] = arr
    for n in graph.nodes:
        args = []
        for v in n.inputs:
            if v.kind == "weight":
                args.append(np.asarray(graph.weights[v.name]))
            else:
                args.append(env[v])
        result = get_op(n.op).ref(*args, **n.attrs)
        results = result if isinstance(result, tuple) else (result,)
        for out, r in zip(n.outputs, results):
            env[out] = np.asarray(r)
    out = {}
    for v in graph.outputs:
        out[v.name] = np.asarray(graph.weights[v.name]) if v.kind == "weight" else env[v]
    return out
