"""edgec's graph IR: typed SSA values, a closed op registry, an interpreter."""
from .graph import DTYPES, Graph, GraphFacts, Meta, Node, Value
from .interpreter import interpret
from .ops import all_ops, get_op
from .printer import format_graph
from .verify import VerifyError, verify
from .weight_source import WeightSource, weight_source
from .weights import WeightStore

__all__ = ["DTYPES", "Graph", "GraphFacts", "Meta", "Node", "Value", "WeightSource", "WeightStore", "all_ops", "format_graph",
           "get_op", "interpret", "verify", "VerifyError", "weight_source"]

# Op families beyond the core live in ops_<family>.py and register on import.
import importlib as _importlib  # noqa: E402
import pkgutil as _pkgutil  # noqa: E402

for _m in _pkgutil.iter_modules(__path__):
    if _m.name.startswith("ops_"):
        _importlib.import_module(f"{__name__}.{_m.name}")
