"""The backend contract (edgec.backends), the model interface, the weight planner, the IR's
serialized form and the reference backend written through them."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgec
from edgec.backends import BACKENDS, Option, get_backend
from edgec.devices import get_device
from edgec.errors import ArtifactError, EdgecError
from edgec.executor import ForwardSequence
from edgec.interface import ModelInterface, kv_name
from edgec.ir import Graph, interpret
from edgec.ir.graph import Meta
from edgec.ir.serialize import from_json, to_json
from edgec.pipeline import backend_options_for, compile_ir, phases
from edgec.recipes import load_recipe
from edgec.weight_plan import PAGE, StoredTensor, open_placed, summary, write_blobs

IDS = [5, 9, 13, 20, 31, 7]


# ----------------------------------------------------------------------------- options
def test_option_checks_and_parses_by_type():
    assert Option(bool).parse("k", "yes", "w") is True and Option(bool).parse("k", "off", "w") is False
    assert Option(int, min=0, max=4).parse("k", "3", "w") == 3
    assert Option(float).check("k", 2, "w") == 2.0
    assert Option(list).parse("k", "a, b", "w") == ["a", "b"]
    for opt, text, message in [(Option(bool), "maybe", "k must be true or false, got 'maybe'"),
                               (Option(int, min=0, max=4), "7", "k must be between 0 and 4, got 7"),
                               (Option(int), "1.5", "k must be a whole number, got '1.5'"),
                               (Option(str, choices=("a", "b")), "c", "k must be one of ['a', 'b'], got 'c'")]:
        with pytest.raises(EdgecError, match=f"^w: {message}$".replace("[", r"\[").replace("]", r"\]")):
            opt.parse("k", text, "w")
    with pytest.raises(EdgecError, match="k must be a whole number, got True"):
        Option(int).check("k", True, "w")  # a bool is not a number here


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_rejects_unknown_options_listing_the_valid_ones(name):
    backend = get_backend(name)
    with pytest.raises(EdgecError) as e:
        backend.parse_options(["no_such_option=1"])
    assert f"the {name} backend has no option(s) ['no_such_option']; valid: " in str(e.value)
    assert all(key in str(e.value) for key in backend.options)
    assert backend.resolve({}) == {k: o.default for k, o in backend.options.items()}


def test_device_then_recipe_then_command_line(tmp_path):
    onnx, host = get_backend("onnx"), get_device("host")
    assert backend_options_for(onnx, host, load_recipe("fp32"))["accuracy_level"] == 4  # the device's
    assert backend_options_for(onnx, host, load_recipe("int8"))["accuracy_level"] == 1  # the recipe's
    got = backend_options_for(onnx, host, load_recipe("int8"), ["accuracy_level=2", "allow_spinning=false"])
    assert got["accuracy_level"] == 2 and got["allow_spinning"] is False


# ----------------------------------------------------------------------------- interface
def _cached_graph(bits: int) -> Graph:
    g = Graph()
    g.add_input("input_ids", "int64", (1, "seq"))
    g.add_input("position_ids", "int64", (1, "seq"))
    q = g.add_input("q", "float32", (1, 2, "seq", 4))
    k = g.add_input("k", "float32", (1, 2, "seq", 4))
    v = g.add_input("v", "float32", (1, 2, "seq", 4))
    g.outputs = [g.op("attention", q, k, v, scale=0.5)]
    from edgec.passes import PassManager

    PassManager().run(g, [("kv_cache", {"bits": bits})])
    g.outputs[0].name = "logits"
    return g


@pytest.mark.parametrize("bits,kinds", [(32, ["key", "value"]), (8, ["key", "key_scale", "value", "value_scale"])])
def test_interface_pairs_every_cache_tensor(bits, kinds):
    g = _cached_graph(bits)
    iface = ModelInterface.of_graph(g)
    assert sorted(c.kind for c in iface.cache) == kinds and iface.kv_layers == 1
    assert iface.present_of() == {kv_name("past", k, 0): kv_name("present", k, 0) for k in kinds}
    assert iface.extra_inputs == ("q", "k", "v")
    shapes = iface.cache_shapes(16)
    assert shapes[kv_name("past", "key", 0)][1] == [1, 2, 16, 4]
    manifest = {"graph": {**iface.to_signature(), "interface": iface.to_dict()}}
    assert ModelInterface.from_manifest(manifest) == iface
    manifest["graph"]["interface"]["cache"][0]["present"] = "nowhere"
    with pytest.raises(ArtifactError, match="model interface is not valid"):
        ModelInterface.from_manifest(manifest)


# ----------------------------------------------------------------------------- weight planner
def test_planner_aligns_streams_and_reads_back(tmp_path):
    big = np.arange(3000, dtype=np.float32).reshape(30, 100)  # >= one page: page-aligned
    small = np.arange(5, dtype=np.int8)
    tensors = [StoredTensor.of_array("small", small), StoredTensor.of_array("big", big),
               StoredTensor.of_array("empty", np.zeros((0, 4), np.float32)),
               StoredTensor.of_array("cold", big[:2], tier="cold")]
    placed = write_blobs(tmp_path, tensors, {"default": "w.bin", "cold": "cold.bin"})
    by = {p.name: p for p in placed}
    assert by["small"].offset == 0 and by["big"].offset % PAGE == 0 and by["empty"].nbytes == 0
    assert by["cold"].file == "cold.bin" and by["cold"].offset == 0
    assert summary(placed)["tiers"]["cold"] == {"file": "model/cold.bin", "tensors": 1, "bytes": 800}
    from edgec.artifact import DirectoryFiles

    arrays = open_placed(DirectoryFiles(tmp_path), [p.to_dict() for p in placed])
    assert np.array_equal(arrays["big"], big) and np.array_equal(arrays["small"], small)
    assert arrays["empty"].shape == (0, 4) and np.array_equal(arrays["cold"], big[:2])
    bad = by["big"].to_dict() | {"offset": by["big"].offset + 8}
    with pytest.raises(ArtifactError, match="lies outside w.bin"):
        open_placed(DirectoryFiles(tmp_path), [bad])
    with pytest.raises(ArtifactError, match="do not hold"):
        open_placed(DirectoryFiles(tmp_path), [by["big"].to_dict() | {"nbytes": 8}])
    with pytest.raises(ValueError, match="tier 'gpu', which has no file"):
        write_blobs(tmp_path, [StoredTensor.of_array("x", small, tier="gpu")], {"default": "w.bin"})


# ----------------------------------------------------------------------------- IR serialization
def test_ir_round_trips_through_json_with_its_meta():
    g = Graph()
    x = g.add_input("x", "float32", (1, "seq", 4))
    w = g.add_weight("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.meta.tier = "cold"
    y = g.op("linear", x, w)
    y.producer.meta.placement = "cpu"
    g.outputs = [g.op("reshape", g.op("mul", y, g.op("const", value=[2.0], dtype="float32")), shape=(0, 0, 3, 1))]
    g.facts.context_length = 7
    back = from_json(json.loads(json.dumps(to_json(g))), g.weights)
    feeds = {"x": np.ones((1, 3, 4), np.float32)}
    assert np.array_equal(interpret(back, feeds)[g.outputs[0].name], interpret(g, feeds)[g.outputs[0].name])
    assert back.weight_values["w"].meta == Meta(tier="cold") and back.nodes[0].meta.placement == "cpu"
    assert back.nodes[-1].attrs["shape"] == (0, 0, 3, 1) and back.facts.context_length == 7
    assert str(back) == str(g) and "{tier=cold}" in str(g) and "{placement=cpu}" in str(g)
    data = to_json(g)
    data["nodes"][0]["inputs"] = ["nope", "w"]
    with pytest.raises(ValueError, match="'nope'"):
        from_json(data, g.weights)


# ----------------------------------------------------------------------------- pipeline phases
def test_a_recipe_pass_joins_the_phase_it_names(tmp_path):
    own = tmp_path / "late.toml"
    own.write_text('name = "late"\n[[passes]]\nname = "dce"\nphase = "fuse"\n[[passes]]\nname = "fp16_weights"\n')
    rec = load_recipe(str(own))
    listed = dict(phases(rec))
    assert listed["compress"] == [("fp16_weights", {})] and listed["fuse"][-1] == ("dce", {})
    assert "fuse" not in dict(phases(rec, fuse=False))
    assert {"name": "dce", "phase": "fuse"} in rec.to_dict()["passes"]


# ----------------------------------------------------------------------------- reference backend
@pytest.fixture(scope="module")
def reference_and_onnx(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    # fp32 compute in MatMulNBits (accuracy_level 0): the ONNX logits then match to float rounding
    return {be: edgec.build(tiny_llama, out / be, backend=be, recipe="int4", dump_ir=out / f"ir-{be}",
                            backend_options={"accuracy_level": 0} if be == "onnx" else None)
            for be in ("reference", "onnx")}


def test_reference_backend_is_the_interpreter(reference_and_onnx, tiny_llama):
    ref = edgec.load(reference_and_onnx["reference"])
    graph = compile_ir(str(tiny_llama), "int4")[0].graph
    feeds = {"input_ids": np.array([IDS]), "position_ids": np.arange(len(IDS))[None], **ref.empty_cache()}
    assert np.array_equal(ref.logits(IDS), interpret(graph, feeds)["logits"][0])
    onnx = edgec.load(reference_and_onnx["onnx"])
    assert np.abs(ref.logits(IDS) - onnx.logits(IDS)).max() < 1e-4
    assert ref.generate(IDS, 8) == onnx.generate(IDS, 8)
    m = json.loads((reference_and_onnx["reference"] / "manifest.json").read_text())
    assert m["weights"]["tiers"]["default"]["file"] == "model/weights.bin"
    assert m["graph"]["interface"]["cache"][0]["past"]["name"] == "past_key.0"


def test_prelower_phase_is_in_the_report_and_the_dump(reference_and_onnx):
    report = json.loads((reference_and_onnx["onnx"] / "report.json").read_text())
    prelower = get_backend("onnx").prelower
    assert [r["pass"] for r in report["passes"][-len(prelower):]] == [name for name, _ in prelower] or not prelower
    dumped = sorted(p.name for p in (reference_and_onnx["onnx"].parent / "ir-onnx").iterdir())
    assert len(dumped) == len(report["passes"])


@pytest.mark.parametrize("name", ["reference", "onnx"])
def test_every_sequence_resets_and_replays(reference_and_onnx, name):
    model = edgec.load(reference_and_onnx[name])
    seq = model.sequence(16)
    first = [seq.run(IDS[:3]).copy(), seq.run(IDS[3:4]).copy()]
    assert seq.length == 4 and seq.capacity == 16
    seq.reset()
    assert seq.length == 0
    again = [seq.run(IDS[:3]), seq.run(IDS[3:4])]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    with pytest.raises(EdgecError, match="do not fit the KV cache"):
        seq.run(list(range(13)))
    ex = model.executor
    for attr in ("interface", "input_names", "output_names", "context_length", "vocab_size", "threads"):
        assert hasattr(ex, attr), attr
    assert isinstance(model.sequence(4).inner, ForwardSequence) == (name == "reference")


def test_profile_needs_a_tracing_backend(reference_and_onnx):
    from edgec.profile import profile

    with pytest.raises(EdgecError, match="per-op profiling is not available for the reference backend"):
        profile(reference_and_onnx["reference"], prompt_tokens=4, new_tokens=2)


def test_a_corrupt_reference_graph_is_refused(reference_and_onnx, tmp_path):
    import shutil

    from edgec.targets.reference.backend import GRAPH_FILE, ReferenceExecutor

    folder = shutil.copytree(reference_and_onnx["reference"] / "model", tmp_path / "model")
    data = json.loads((folder / GRAPH_FILE).read_text())
    data["nodes"][3]["op"] = "no_such_op"
    (folder / GRAPH_FILE).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="graph.json is not a valid edgec graph .*no_such_op"):
        ReferenceExecutor(folder)
