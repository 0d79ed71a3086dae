"""ONNX target: lower the IR to an ONNX model with external weights and run it with onnxruntime."""
from .compile import compile_graph
from .lower import DEFAULT_OPSET, LOWERINGS, lower, lower_graph
from .runtime import OnnxExecutor

# Lowerings for op families live in lower_<family>.py and register into LOWERINGS on import.
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    if _m.name.startswith("lower_"):
        _importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DEFAULT_OPSET", "LOWERINGS", "OnnxExecutor", "compile_graph", "lower", "lower_graph"]
