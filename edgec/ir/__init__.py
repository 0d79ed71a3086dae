"""edgec's graph IR: typed SSA values, a closed op registry, an interpreter."""
from .graph import DTYPES, Graph, Node, Value
from .interpreter import interpret
from .ops import all_ops, get_op
from .printer import format_graph
from .verify import VerifyError, verify
from .weights import WeightStore

__all__ = ["DTYPES", "Graph", "Node", "Value", "WeightStore", "all_ops", "format_graph",
           "get_op", "interpret", "verify", "VerifyError"]
