"""Graph -> graph passes (installed as edgec.passes), one module per pass family."""
from . import dce, fold_constants, fp16_weights, kv_cache, raise_glu, raise_rms_norm, raise_rotary  # noqa: F401 - registers
from .manager import PassContext, PassManager, PassRecord
from .registry import Pass, get_pass, list_passes, register_pass

# The fixed phases every build runs; a recipe's passes go between RAISE and LOWER.
CANONICALIZE = [("dce", {}), ("fold_constants", {}), ("dce", {})]
RAISE = [("raise_rms_norm", {}), ("raise_rotary", {}), ("raise_glu", {}), ("dce", {})]
LOWER = [("kv_cache", {})]

__all__ = ["CANONICALIZE", "LOWER", "Pass", "PassContext", "PassManager", "PassRecord", "RAISE", "get_pass",
           "list_passes", "register_pass"]
