"""Named recipes end to end on a tiny model: fp16 weights halve the weight file and stay close to fp32."""
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.errors import EdgecError
from edgec.recipes import list_recipes, load_recipe


def test_named_recipes_listed_with_descriptions():
    recipes = list_recipes()
    assert {"fp32", "fp16"} <= set(recipes)
    assert all(desc for desc in recipes.values())


def test_fp16_artifact_is_half_size_and_close_to_fp32(tiny_llama, tiny_artifact, tmp_path):
    half = edgec.build(tiny_llama, tmp_path / "fp16", recipe="fp16")
    m32, m16 = edgec.load(tiny_artifact), edgec.load(half)
    s32 = m32.manifest["files"]["model/model.onnx.data"]["size"]
    s16 = m16.manifest["files"]["model/model.onnx.data"]["size"]
    assert 0.45 < s16 / s32 < 0.56
    ids = [5, 9, 14, 3, 22, 40, 7]
    a, b = m32.logits(ids), m16.logits(ids)
    assert np.abs(a - b).max() < 2e-2
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_recipe_options_are_validated(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[passes]]\nname = "fp16_weights"\nbits = 3\n')
    with pytest.raises(EdgecError, match="has no option"):
        load_recipe(str(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(EdgecError, match="not valid TOML"):
        load_recipe(str(broken))


def test_onnx_accuracy_level_from_the_recipe(tiny_llama, tmp_path):
    """[onnx] accuracy_level reaches MatMulNBits; int8 ships with fp32 compute, int4 with the default (4).

    (8-bit with fp32 compute is not a MatMulNBits: onnxruntime's kernel is slow there, see lower_quant.py.)"""
    import onnx

    assert load_recipe("int8").options_for("onnx") == {"accuracy_level": 1}
    assert load_recipe("int4-rtn+int8").options_for("onnx") == {"accuracy_level": 1}
    for recipe, level in [("int8", set()), ("int4-rtn", {4}), ("int4-rtn+int8", {1})]:
        out = edgec.build(tiny_llama, tmp_path / recipe, recipe=recipe)
        model = onnx.load(out / "model" / "model.onnx", load_external_data=False)
        levels = {a.i for n in model.graph.node if n.op_type == "MatMulNBits"
                  for a in n.attribute if a.name == "accuracy_level"}
        assert levels == level
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[onnx]\naccuracy_level = 1\n')
    with pytest.raises(EdgecError, match=r"the \[onnx\] table is now \[backend.onnx\]"):
        load_recipe(str(bad))
    bad.write_text('name = "bad"\n[backend.onnx]\naccuracy_level = 7\n')
    with pytest.raises(EdgecError, match=r"accuracy_level must be between 0 and 4, got 7"):
        edgec.build(tiny_llama, tmp_path / "never", recipe=str(bad))
    assert not (tmp_path / "never").exists()
    bad.write_text('name = "bad"\n[[passes]]\nname = "dce"\nphase = "later"\n')
    with pytest.raises(EdgecError, match=r"phase 'later' is not one of raise, compress, fuse, lower"):
        load_recipe(str(bad))


def test_device_accuracy_level_applies_unless_the_recipe_sets_one(tiny_llama, tmp_path, monkeypatch):
    """The device profile's [onnx] accuracy_level picks MatMulNBits' compute type; a recipe's own wins."""
    import dataclasses

    import onnx

    import edgec.pipeline as pipeline
    from edgec.devices import get_device

    host = get_device("host")
    assert host.options_for("onnx")["accuracy_level"] == 4
    slow = dataclasses.replace(host, backend_options={"onnx": {**host.options_for("onnx"), "accuracy_level": 0}})
    monkeypatch.setattr(pipeline, "get_device", lambda name: slow)
    own = tmp_path / "int4-l2.toml"
    own.write_text('name = "int4-l2"\n[[passes]]\nname = "quantize"\nbits = 4\ngroup_size = 32\n'
                   '[backend.onnx]\naccuracy_level = 2\n')
    for recipe, level in [("int4-rtn", {0}), (str(own), {2})]:
        out = edgec.build(tiny_llama, tmp_path / Path(recipe).stem, recipe=recipe)
        model = onnx.load(out / "model" / "model.onnx", load_external_data=False)
        assert {a.i for n in model.graph.node if n.op_type == "MatMulNBits"
                for a in n.attribute if a.name == "accuracy_level"} == level
