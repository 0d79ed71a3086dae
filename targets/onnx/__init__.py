"""ONNX target: lower the IR to an ONNX model with external weights and run it with onnxruntime."""
from .compile import compile_graph
from .lower import DEFAULT_OPSET, LOWERINGS, lower, lower_graph
from .runtime import OnnxExecutor

# Lowerings for op families live in lower_<family>.py and register into LOWERINGS on import
# (a specialised one names its fallback, so the order does not matter).
import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    if _m.name.startswith("lower_"):
        _importlib.import_module(f"{__name__}.{_m.name}")

# The backend's pre-lowering phase (pipeline phase "prelower", after kv_cache): IR passes that
# put the graph in the forms this backend's kernels take. gqa: attention as GroupQueryAttention
# (packed QKV, rotary inside); logits_rows: the head projects only the last rows a caller asks for.
PRELOWER: list[tuple[str, dict]] = [("gqa", {}), ("logits_rows", {}), ("dce", {})]


def prelower(graph):
    """Run PRELOWER on graph (in place) and return it: for callers of compile_graph on a raw graph."""
    from edgec.passes import PassManager  # loads every pass: only when asked

    return PassManager().run(graph, PRELOWER, "prelower")


__all__ = ["DEFAULT_OPSET", "LOWERINGS", "OnnxExecutor", "PRELOWER", "compile_graph", "lower", "lower_graph",
           "prelower"]
