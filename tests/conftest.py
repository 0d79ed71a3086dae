import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# edgec signs every artifact with the user's key, created on first use in the config folder:
# the tests' own folder, never the developer's ~/.config/edgec
os.environ["EDGEC_CONFIG_DIR"] = tempfile.mkdtemp(prefix="edgec-test-config-")
# measured host figures and recorded evaluations: the tests' own cache, never ~/.cache/edgec
os.environ["EDGEC_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgec-test-cache-")
# the estimator calibrates each backend on a tiny random model (seconds); the slow SmolLM2 check uses the real one
os.environ.setdefault("EDGEC_CALIBRATION_MODEL", "tiny")

SHARED_DATA = Path(os.environ.get("EDGEC_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (set EDGEC_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama folder (config, safetensors, tokenizer)."""
    from tiny import save_tiny

    return save_tiny("llama", tmp_path_factory.mktemp("hf") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_llama, tmp_path_factory) -> Path:
    """tiny_llama built with the default options (fp32, ONNX, host)."""
    import edgec

    return edgec.build(tiny_llama, tmp_path_factory.mktemp("art") / "tiny-llama-fp32")
