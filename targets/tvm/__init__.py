"""TVM target: IR -> Relax (BlockBuilder) -> tvm.compile for llvm (x86-64, aarch64) and cuda."""
from edgec.errors import EdgecError

TVM_PIN = "apache-tvm==0.27.0.post1"

try:
    import tvm as _tvm  # noqa: F401
except ImportError as _e:  # one line, with the install command
    raise EdgecError(f"the tvm backend needs Apache TVM, which is not importable ({_e}); "
                     f"install it with: pip install {TVM_PIN}") from None

from .compile import check_device, compile_graph  # noqa: E402
from .lower import LOWERINGS, lower_graph  # noqa: E402
from .runtime import TvmExecutor  # noqa: E402

# The backend's pre-lowering phase (pipeline phase "prelower"): none of the ONNX rewrites apply here.
PRELOWER: list[tuple[str, dict]] = []

__all__ = ["LOWERINGS", "PRELOWER", "TVM_PIN", "TvmExecutor", "check_device", "compile_graph", "lower_graph"]
