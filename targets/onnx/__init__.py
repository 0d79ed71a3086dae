"""ONNX target: lower the IR to an ONNX model with external weights and run it with onnxruntime."""
from .compile import compile_graph
from .lower import DEFAULT_OPSET, LOWERINGS, lower, lower_graph
from .runtime import OnnxExecutor

__all__ = ["DEFAULT_OPSET", "LOWERINGS", "OnnxExecutor", "compile_graph", "lower", "lower_graph"]
