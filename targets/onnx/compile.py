"""Compile an IR graph into `model.onnx` + one external weight file `model.onnx.data`.

Weights are streamed from the WeightStore (often np.memmap) straight into the
data file by the weight planner (edgec.weight_plan: large tensors page-aligned so
runtimes can memory-map them), so compiling a multi-GB model neither copies every
weight into protobuf bytes nor hits protobuf's 2 GB limit.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, numpy_helper

from edgec.ir import Graph
from edgec.weight_plan import DEFAULT_TIER, Placement, StoredTensor, summary, write_blobs

from .lower import DEFAULT_OPSET, Initializer, lower_graph, onnx_dtype

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
CONTEXT_KEY = "edgec.context_length"  # metadata_props: the context the graph's tables were built for


def write_external(model: onnx.ModelProto, inits: list[Initializer], data_path: Path) -> list[Placement]:
    """Append `inits` to `model` as external tensors laid out by the weight planner in `data_path`
    (one blob, referenced by its relative name); returns the placements."""
    stored = [StoredTensor(i.name, i.dtype, i.shape, i.nbytes, i.chunks) for i in inits]
    placed = write_blobs(data_path.parent, stored, {DEFAULT_TIER: data_path.name})
    for init, p in zip(inits, placed):
        if p.nbytes == 0:  # nothing to point at: keep the empty tensor inline
            model.graph.initializer.append(numpy_helper.from_array(init.to_numpy(), init.name))
            continue
        t = TensorProto(name=init.name, data_type=onnx_dtype(init.dtype), dims=init.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", p.file), ("offset", p.offset), ("length", p.nbytes)):
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        model.graph.initializer.append(t)
    return placed


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def compile_graph(graph: Graph, out_dir: Path, *, device=None, opset: int = DEFAULT_OPSET,
                  accuracy_level: int | None = None, moe_kernel: str = "auto") -> dict[str, Any]:
    """Lower, write model.onnx + model.onnx.data into out_dir, check, return manifest metadata.

    `device` is accepted for the common target interface; the ONNX output does
    not depend on it (the runtime picks kernels).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lowered = lower_graph(graph, opset, accuracy_level, moe_kernel)
    model = lowered.model
    if graph.facts.context_length:
        entry = model.metadata_props.add()
        entry.key, entry.value = CONTEXT_KEY, str(int(graph.facts.context_length))
    placed = write_external(model, lowered.initializers, out_dir / DATA_FILE)
    onnx.save_model(model, out_dir / MODEL_FILE)
    # Path-based check: reads external data lazily and runs strict shape inference.
    onnx.checker.check_model(str(out_dir / MODEL_FILE), full_check=True)
    return {
        "files": [MODEL_FILE, DATA_FILE],
        "weights": summary(placed),
        "opset": opset,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": _version("onnxruntime"),
        "inputs": [v.name for v in graph.inputs],
        "outputs": [v.name for v in graph.outputs],
        # shared_buffer: GroupQueryAttention, one preallocated cache bound as past and present;
        # concat: the cache grows by Concat every step (see lower_gqa.py)
        "kv_cache": {p.key: p.value for p in model.metadata_props}.get("edgec.kv_cache", "concat"),
    }
