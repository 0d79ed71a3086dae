"""Frontend: Hugging Face model -> torch.export -> edgec IR."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ir import Graph
from .aten import to_ir
from .source import ModelSource, load_hf, model_hash, resolve_source
from .trace import context_length, export


@dataclass
class ImportedModel:
    graph: Graph
    model: Any  # the transformers model (kept for reference checks and calibration)
    tokenizer: Any
    source: ModelSource
    config: Any

    @property
    def architecture(self) -> str:
        return getattr(self.config, "model_type", "unknown")


def import_model(model: str | None = None, progress=None) -> ImportedModel:
    """Load MODEL (folder, .gguf, or None for the default) and trace it into the IR."""
    say = progress or (lambda msg: None)
    src = resolve_source(model)
    say(f"loading {src.kind} model {src.path}")
    hf_model, tokenizer = load_hf(src)
    arch = getattr(hf_model.config, "model_type", type(hf_model).__name__)
    say(f"tracing {arch} with torch.export")
    ep = export(hf_model)
    say("mapping ATen graph to edgec IR")
    graph = to_ir(ep, arch)
    graph.facts.architecture, graph.facts.context_length = arch, context_length(hf_model.config)
    return ImportedModel(graph, hf_model, tokenizer, src, hf_model.config)


__all__ = ["ImportedModel", "ModelSource", "context_length", "export", "import_model", "load_hf",
           "model_hash", "resolve_source", "to_ir"]
