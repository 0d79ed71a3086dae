"""Run a compiled ONNX artifact with onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .compile import MODEL_FILE


class OnnxExecutor:
    """An onnxruntime session over `model_dir/model.onnx` (weights load from model.onnx.data).

    CPU by default with every graph optimization on, which is what fuses the
    primitive decompositions (RMSNorm, Gelu, scaled MatMul) back into kernels.
    """

    def __init__(self, model_dir: Path, *, threads: int | None = None, providers=None):
        path = Path(model_dir)
        if path.is_dir():
            path = path / MODEL_FILE
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"missing model input(s) {missing}")
        outs = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outs))
