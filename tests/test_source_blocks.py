"""`--recipe source`: a quantized GGUF's own blocks kept exactly, through the IR and the backends."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q

from edgec.backends import get_backend
from edgec.devices import get_device
from edgec.errors import EdgecError
from edgec.frontend import resolve_source
from edgec.frontend.gguf_blocks import is_quantized_gguf, keep_blocks
from edgec.ir import Graph
from edgec.pipeline import compile_ir, default_recipe, write_artifact
from edgec.recipes import load_recipe
from helpers import IDS, check_prefill_and_decode, logits
from tiny import save_tiny_gguf

KINDS = {"Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1, "Q8_0": Q.Q8_0}


@pytest.fixture(scope="module", params=sorted(KINDS))
def tiny_gguf(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"gguf-{request.param}")
    return save_tiny_gguf(folder / f"tiny-{request.param.lower()}.gguf", KINDS[request.param]), request.param


@pytest.fixture(scope="module")
def source_build(tiny_gguf):
    path, kind = tiny_gguf
    imported, pm = compile_ir(path, load_recipe("source"))
    return imported, pm, kind


def _copy(imported):
    """write_artifact runs the backend's prelower passes on the graph it is given: give it a copy."""
    return dataclasses.replace(imported, graph=copy.deepcopy(imported.graph))


def _hf_logits(path) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].numpy()


def test_every_matrix_keeps_its_blocks(source_build):
    imported, pm, kind = source_build
    g = imported.graph
    dq = [n for n in g.nodes if n.op == "dequantize"]
    # per layer q, k, v, o, gate, up, down (fused into 3 + 1 + 1 linears), the head and the embedding table
    assert pm.records[[r.name for r in pm.records].index("source_blocks")].counts["kept"] == 2 * 7 + 2
    assert all(n.meta.provenance == f"gguf:{kind}" for n in dq)
    assert {len(n.inputs) for n in dq} == ({4} if kind == "Q4_1" else {3})  # only Q4_1 has float minima
    stored = {v for n in dq for v in n.inputs}
    readers = g.users()
    dense = [v for v in g.weight_values.values() if v.rank == 2 and v not in stored
             and any(u.op in ("linear", "embedding") for u in readers.get(v, []))]
    assert not dense, dense  # every matrix a linear or the embedding reads is the source's blocks


def test_interpreter_equals_transformers_on_the_gguf(source_build, tiny_gguf):
    imported, _, _ = source_build
    want = _hf_logits(tiny_gguf[0])
    got = logits(imported.graph)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_onnx_artifact_matches_the_interpreter(source_build, tmp_path):
    imported, pm, kind = source_build
    imported = _copy(imported)
    be = get_backend("onnx")
    art = write_artifact(imported, pm, tmp_path / "art", device=get_device("host"), backend=be,
                         recipe=load_recipe("source"), options=be.check(get_device("host"), None, {"accuracy_level": 0}))
    check_prefill_and_decode(imported.graph, art, tol=2e-4)  # fp32 compute: MatMulNBits + the minima's matmul
    nodes = onnx.load(str(art / "model" / "model.onnx"), load_external_data=False).graph.node
    kernels = [n for n in nodes if n.op_type == "MatMulNBits"]
    # qkv, o, gate/up and down per layer, and the head; 8-bit at fp32 compute takes standard ops
    assert len(kernels) == (0 if kind == "Q8_0" else 2 * 4 + 1)
    assert all(dict((a.name, a.i) for a in n.attribute)["bits"] == 4 for n in kernels)


def test_onnx_default_accuracy_level_is_close(source_build, tmp_path):
    import edgec

    imported, pm, _ = source_build
    imported = _copy(imported)
    art = write_artifact(imported, pm, tmp_path / "art", device=get_device("host"), backend=get_backend("onnx"),
                         recipe=load_recipe("source"))
    got = edgec.load(art).logits(IDS)
    want = logits(imported.graph)
    # int8 activations in the kernel: close, not equal (a random tiny model amplifies the rounding)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_quantized_gguf_defaults_to_source(tiny_gguf, tiny_llama):
    host = get_device("host")
    assert is_quantized_gguf(tiny_gguf[0])
    assert default_recipe(resolve_source(str(tiny_gguf[0])), host) == "source"
    assert default_recipe(resolve_source(str(tiny_llama)), host) == host.default_recipe


def test_source_recipe_on_a_folder_is_a_one_line_error(tiny_llama):
    with pytest.raises(EdgecError, match="keeps a quantized GGUF file's blocks, but this is a model folder") as e:
        compile_ir(tiny_llama, load_recipe("source"))
    assert "\n" not in str(e.value)


def test_unsupported_block_type_names_the_tensor_and_type(tmp_path):
    import gguf

    path = tmp_path / "iq.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    block_bytes = gguf.GGML_QUANT_SIZES[Q.IQ2_XXS][1]
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 256 // 256 * block_bytes), np.uint8),
                 raw_shape=(4, block_bytes), raw_dtype=Q.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(EdgecError, match="blk.0.attn_q.weight.*IQ2_XXS") as e:
        keep_blocks(Graph(), path)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_tvm_artifact_matches_the_interpreter(source_build, tmp_path):
    imported, pm, _ = source_build
    imported = _copy(imported)
    art = write_artifact(imported, pm, tmp_path / "art", device=get_device("host"), backend=get_backend("tvm"),
                         recipe=load_recipe("source"))
    check_prefill_and_decode(imported.graph, art, tol=2e-4)


def test_mixed_recipe_keeps_some_blocks_and_requantizes_the_rest(tiny_gguf, tmp_path):
    """source_blocks skip / lm_head=false leave those weights float, and a later pass quantizes them."""
    path, kind = tiny_gguf
    recipe = tmp_path / "mixed.toml"
    recipe.write_text('name = "mixed"\n[[passes]]\nname = "source_blocks"\nskip = ["mlp.down_proj"]\nlm_head = false\n'
                      '[[passes]]\nname = "quantize"\nbits = 8\ngroup_size = 0\nlm_head = true\n')
    imported, pm = compile_ir(path, load_recipe(str(recipe)))
    counts = pm.records[[r.name for r in pm.records].index("source_blocks")].counts
    assert counts["skipped"] == 2 + 1  # the two layers' down_proj and the head
    g = imported.graph
    dq = [n for n in g.nodes if n.op == "dequantize"]
    requantized = [n for n in dq if n.meta.provenance != f"gguf:{kind}"]
    assert len(requantized) == 3 and all(n.attrs["bits"] == 8 for n in requantized)
    assert all("down_proj" in n.inputs[0].name or "lm_head" in n.inputs[0].name or "embed" in n.inputs[0].name
               for n in requantized), [n.inputs[0].name for n in requantized]
    exact = logits(compile_ir(path, load_recipe("source"))[0].graph)
    mixed = logits(g)
    rel = np.abs(mixed - exact).max() / np.abs(exact).max()
    assert 0 < rel < 0.05  # int8 for three tensors: close to the source, not equal to it
