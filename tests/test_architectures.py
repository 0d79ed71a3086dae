"""Every supported architecture, end to end, on a tiny random model.

For each: save a model + tokenizer with save_pretrained, compile it to the IR, and
check the IR interpreter and an artifact of every backend (helpers.BACKENDS; all but
ONNX are `slow`) against transformers' eager model (fp32, max abs diff <= 1e-4), and
greedy generation with the KV cache against transformers' greedy `generate`.
"""

import numpy as np
import pytest

import edgec
from edgec.ir import interpret
from helpers import BACKENDS, IDS, assert_greedy_matches_transformers, build_tiny, eager_logits, model_feeds, write_once
from tiny import ARCHS, save_tiny

TOL = 1e-4
# ONNX (every device's default backend) and the reference backend (no compile) in the fast run. TVM
# compiles each model for 10-25 s (all 14 pass, about +3 min on 2 cores), so it is `slow`: `pytest` runs it,
# `-m "not slow"` does not.
FAST = ("onnx", "reference")
ARTIFACT_BACKENDS = [b if b in FAST else pytest.param(b, marks=pytest.mark.slow) for b in BACKENDS]


@pytest.fixture(scope="module", params=ARCHS)
def built(request, tmp_path_factory):
    """The tiny model of one architecture in the IR (fp32, all phases), with its eager twin."""
    return build_tiny(save_tiny, request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(params=ARTIFACT_BACKENDS)
def artifact(built, request):
    """`built` written as an artifact by one backend, once per module."""
    return write_once(built, request.param)


def test_interpreter_matches_transformers(built):
    ref = eager_logits(built.eager, IDS)
    out = interpret(built.graph, model_feeds(built.graph, IDS))["logits"][0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL


def test_artifact_matches_transformers(built, artifact):
    model = edgec.load(artifact)
    ref = eager_logits(built.eager, IDS)
    out = model.logits(IDS)
    assert out.shape == (len(IDS), ref.shape[-1])
    assert np.abs(out - ref).max() <= TOL


def test_greedy_generation_with_kv_cache_matches_transformers(built, artifact):
    assert_greedy_matches_transformers(built.eager, artifact)


def test_raising_found_the_patterns(built):
    ops = built.graph.op_counts()
    # The FUSE phase turns raised ops into their fused forms.
    ops["rotary"] = ops.get("rotary", 0) + ops.get("rotary_cached", 0)
    ops["rms_norm"] = ops.get("rms_norm", 0) + ops.get("add_rms_norm", 0)
    assert ops["attention"] == 2
    rotary_archs = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gpt_neox", "stablelm",
                    "cohere", "gptj", "falcon"}
    if built.arch in rotary_archs:
        assert ops.get("rotary") == 4  # q and k in 2 layers
    if built.arch in {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2"}:
        assert ops.get("rms_norm", 0) >= 5
    if built.arch in {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "stablelm", "cohere"}:
        assert ops.get("glu") == 2
