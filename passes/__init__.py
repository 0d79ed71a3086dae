"""Graph -> graph passes (installed as edgec.passes), one module per pass family."""
import importlib
import pkgutil

from .manager import PassContext, PassManager, PassRecord
from .registry import Pass, PassResult, get_pass, list_passes, register_pass

# Every module of this package registers its passes on import (one module per pass family).
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("manager", "registry", "match"):
        importlib.import_module(f"{__name__}.{_m.name}")

# The fixed phases every build runs; a recipe's passes go between RAISE and FUSE
# (compression wants the separate q/k/v and gate/up linears that FUSE merges).
CANONICALIZE = [("dce", {}), ("fold_constants", {}), ("dce", {})]
RAISE = [("raise_moe", {}), ("raise_rms_norm", {}), ("raise_interleaved_rotary", {}), ("raise_rotary", {}),
         ("raise_glu", {}), ("dce", {})]
FUSE = [("fuse_linears", {}), ("fuse_add_rms_norm", {}), ("fuse_rotary", {}), ("dce", {})]
LOWER = [("kv_cache", {})]

__all__ = ["CANONICALIZE", "FUSE", "LOWER", "Pass", "PassContext", "PassManager", "PassRecord", "PassResult", "RAISE", "get_pass",
           "list_passes", "register_pass"]
