"""Every supported architecture, end to end, on a tiny random model.

For each: save a model + tokenizer with save_pretrained, compile it, and check
the IR interpreter and the ONNX artifact against transformers' eager model
(fp32, max abs diff <= 1e-4), and greedy generation with the KV cache against
transformers' greedy `generate`.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import edgec
from edgec.backends import get_backend
from edgec.devices import get_device
from edgec.ir import interpret
from edgec.pipeline import compile_ir, write_artifact
from edgec.recipes import load_recipe
from tiny import ARCHS, save_tiny

TOL = 1e-4
IDS = [5, 17, 33, 8, 41, 2, 60, 12, 9, 27, 70, 3, 44]


@pytest.fixture(scope="module", params=ARCHS)
def built(request, tmp_path_factory):
    arch = request.param
    d = tmp_path_factory.mktemp(arch)
    save_tiny(arch, d / "hf")
    recipe = load_recipe("fp32")
    imported, pm = compile_ir(str(d / "hf"), recipe)
    art = write_artifact(imported, pm, d / "artifact", device=get_device("host"),
                         backend=get_backend("onnx"), recipe=recipe)
    eager = AutoModelForCausalLM.from_pretrained(d / "hf", attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    return SimpleNamespace(arch=arch, graph=imported.graph, artifact=art, eager=eager, records=pm.records)


def eager_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def empty_past(graph):
    return {v.name: np.zeros([0 if isinstance(d, str) else d for d in v.shape], v.dtype)
            for v in graph.inputs if v.name.startswith("past_")}


def test_interpreter_matches_transformers(built):
    ref = eager_logits(built.eager, IDS)
    feeds = {"input_ids": np.array([IDS]), "position_ids": np.arange(len(IDS))[None], **empty_past(built.graph)}
    out = interpret(built.graph, feeds)["logits"][0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL


def test_onnx_artifact_matches_transformers(built):
    model = edgec.load(built.artifact)
    ref = eager_logits(built.eager, IDS)
    out = model.logits(IDS)
    assert out.shape == (len(IDS), ref.shape[-1])
    assert np.abs(out - ref).max() <= TOL


def test_greedy_generation_with_kv_cache_matches_transformers(built):
    model = edgec.load(built.artifact)
    prompt = IDS[:5]
    ours = model.generate(prompt, max_new_tokens=16, stop_at_eos=False)
    hf = built.eager
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert len(ours) == 16
    assert ours == theirs


def test_raising_found_the_patterns(built):
    ops = built.graph.op_counts()
    # The FUSE phase turns raised ops into their fused forms.
    ops["rotary"] = ops.get("rotary", 0) + ops.get("rotary_cached", 0)
    ops["rms_norm"] = ops.get("rms_norm", 0) + ops.get("add_rms_norm", 0)
    assert ops["attention"] == 2
    rotary_archs = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gpt_neox", "stablelm"}
    if built.arch in rotary_archs:
        assert ops.get("rotary") == 4  # q and k in 2 layers
    if built.arch in {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2"}:
        assert ops.get("rms_norm", 0) >= 5
    if built.arch in {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "stablelm"}:
        assert ops.get("glu") == 2
