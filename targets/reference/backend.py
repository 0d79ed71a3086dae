"""`--backend reference`: the artifact holds the final IR (graph.json, with each weight's place)
and the weights (weights.bin, laid out by edgec.weight_plan); opening it runs edgec.ir.interpret. Slow (numpy, op by op), exact by
definition: every other backend is tested against this interpreter."""
from __future__ import annotations

import json

import numpy as np

from edgec.artifact import as_files
from edgec.backends import Backend
from edgec.errors import ArtifactError
from edgec.executor import ForwardSequence
from edgec.interface import ModelInterface
from edgec.ir import WeightStore, interpret
from edgec.ir.serialize import from_json, to_json
from edgec.weight_plan import DEFAULT_TIER, StoredTensor, open_placed, summary, write_blobs

GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.bin"


class ReferenceBackend(Backend):
    name = "reference"
    description = "edgec's IR interpreter (numpy; no runtime dependency, slow; for debugging builds)"

    def compile(self, graph, out_dir, device, options, progress=None) -> dict:
        out_dir.mkdir(parents=True, exist_ok=True)
        placed = write_blobs(out_dir, [StoredTensor.of_array(n, graph.weights[n]) for n in graph.weight_values],
                             {DEFAULT_TIER: WEIGHTS_FILE})
        data = {**to_json(graph), "placements": [p.to_dict() for p in placed]}
        (out_dir / GRAPH_FILE).write_text(json.dumps(data) + "\n")
        return {"files": [GRAPH_FILE, WEIGHTS_FILE], "weights": summary(placed)}

    def open(self, files, *, interface=None, options=None, threads=None):
        return ReferenceExecutor(files, interface=interface, threads=threads)


class ReferenceExecutor:
    """The Executor protocol (edgec.executor) over the interpreter."""

    def __init__(self, model_dir, *, interface: ModelInterface | None = None, threads: int | None = None):
        files = as_files(model_dir)
        try:
            data = json.loads(files.read_bytes(GRAPH_FILE))
            weights = WeightStore()
            for name, array in open_placed(files, data["placements"]).items():
                weights[name] = array
            self.graph = from_json(data, weights)
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{GRAPH_FILE} is not a valid edgec graph ({e}); rebuild the artifact") from None
        self.interface = interface or ModelInterface.of_graph(self.graph)
        self.input_names = [v.name for v in self.graph.inputs]
        self.output_names = [v.name for v in self.graph.outputs]
        self.context_length = self.graph.facts.context_length
        logits = next((v for v in self.graph.outputs if v.name == self.interface.logits), None)
        self.vocab_size = logits.shape[-1] if logits is not None and isinstance(logits.shape[-1], int) else None
        self.threads = threads  # numpy's own

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return interpret(self.graph, {n: feeds[n] for n in self.input_names})

    def sequence(self, capacity: int) -> ForwardSequence:
        return ForwardSequence(self, capacity)


BACKEND = ReferenceBackend()
