"""The ONNX backend through the contract (edgec.backends): options, compile, open."""
from __future__ import annotations

from pathlib import Path

from edgec.backends import Backend, Option


class OnnxBackend(Backend):
    name = "onnx"
    description = "ONNX Runtime (CPU; CUDA EP on GPUs)"
    options = {
        "accuracy_level": Option(int, None, "MatMulNBits compute type: 0/1 fp32, 2 fp16, 3 bf16, 4 int8 "
                                 "(default: the lowering's)", stage="build", min=0, max=4),
        "opset": Option(int, None, "ONNX opset of the model (default: the lowering's)", stage="build",
                        min=17, max=21),
        "moe_kernel": Option(str, "auto", "mixture-of-experts layers: auto (onnxruntime's MoE op where it computes "
                             "the layer exactly, else gather), gather (gathered experts + batched MatMuls)",
                             stage="build", choices=("auto", "gather")),
        "providers": Option(list, None, "onnxruntime execution providers in order of preference "
                            "(those this onnxruntime lacks are skipped; default: CPU)"),
        "intra_op_threads": Option(int, 0, "0: onnxruntime's default (one per physical core)", min=0),
        "allow_spinning": Option(bool, None, "workers spin between ops: lower latency, more power"),
        "cpu_mem_arena": Option(bool, None, "reuse freed activation memory instead of malloc per run"),
        "graph_optimization": Option(str, "all", "onnxruntime graph optimizations",
                                     choices=("disable", "basic", "extended", "all")),
        "huge_pages": Option(bool, True, "edgec: weights in 2 MiB pages at load (edgec/memory.py)"),
    }

    @property
    def prelower(self) -> list:
        from .. import onnx as package  # its PRELOWER list: packed-QKV attention, logits rows

        return getattr(package, "PRELOWER", [])

    def compile(self, graph, out_dir, device, options, progress=None) -> dict:
        from .compile import compile_graph
        from .lower import DEFAULT_OPSET

        return compile_graph(graph, out_dir, device=device, opset=options.get("opset") or DEFAULT_OPSET,
                             accuracy_level=options.get("accuracy_level"), moe_kernel=options.get("moe_kernel") or "auto")

    traces_ops = True  # open(trace_dir=...) then executor.op_trace(): onnxruntime's profiler

    def open(self, files, *, interface=None, options=None, threads=None, trace_dir=None):
        from .runtime import OnnxExecutor

        prefix = str(Path(trace_dir) / "ort") if trace_dir else None
        return OnnxExecutor(files, threads=threads, options=self.run_options(options or {}),
                            interface=interface, profile_prefix=prefix)


BACKEND = OnnxBackend()
