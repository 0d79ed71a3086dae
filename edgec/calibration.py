"""Calibration data and activation collection for data-aware passes.

Text in (a file, a folder of .txt/.raw files, or `hf:DATASET[:CONFIG]:SPLIT`
where a network exists), token windows out. `run_calibration` then pushes the
windows through the IR node by node, in topological order, calling a visitor
with the inputs every sample produced for each node it asks for. A visitor
may rewrite the node's weights in place before the node runs, so methods that
quantize or prune layer by layer (GPTQ, SparseGPT) see the already-compressed
earlier layers, exactly as in their papers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EdgecError
from .ir import Graph, Node, Value
from .ir.ops import get_op

DEFAULT_SAMPLES = 128
DEFAULT_SEQLEN = 512
TEXT_SUFFIXES = (".txt", ".raw", ".text", ".md")


@dataclass(frozen=True)
class CalibConfig:
    """What `--calib`, `--calib-samples` and `--calib-seqlen` set."""

    source: str | None = None
    samples: int = DEFAULT_SAMPLES
    seqlen: int = DEFAULT_SEQLEN
    seed: int = 0

    def check(self) -> None:
        if self.samples <= 0:
            raise EdgecError(f"--calib-samples must be > 0, got {self.samples}")
        if self.seqlen <= 1:
            raise EdgecError(f"--calib-seqlen must be > 1, got {self.seqlen}")


def read_text(source: str | Path) -> str:
    """The calibration corpus as one string (CRLF normalized to LF)."""
    s = str(source)
    if s.startswith("hf:"):
        return _read_hf_dataset(s[3:])
    path = Path(s).expanduser()
    if not path.exists():
        raise EdgecError(f"calibration data {s!r} does not exist; pass a text file, a folder of "
                         ".txt files, or hf:DATASET[:CONFIG]:SPLIT")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise EdgecError(f"calibration folder {path} has no {'/'.join(TEXT_SUFFIXES)} files")
        text = "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
    return text.replace("\r\n", "\n")


def _read_hf_dataset(spec: str) -> str:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise EdgecError(f"hf:{spec}: use hf:DATASET:SPLIT or hf:DATASET:CONFIG:SPLIT")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets
    except ImportError:
        raise EdgecError("hf: calibration data needs the `datasets` package (pip install datasets) "
                         "and a network; or pass a local text file") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown dataset, ...
        raise EdgecError(f"cannot load dataset {spec!r}: {str(e).splitlines()[0]}") from None
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return "\n".join(str(t) for t in ds[column])


def token_windows(text: str, tokenizer, samples: int, seqlen: int, seed: int = 0) -> list[np.ndarray]:
    """`samples` windows of `seqlen` tokens at seeded random offsets (tokenized once)."""
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    if len(ids) < seqlen:
        raise EdgecError(f"calibration text has {len(ids)} tokens, shorter than one window of "
                         f"{seqlen}; give more text or a smaller --calib-seqlen")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seqlen + 1, size=samples)
    return [ids[s:s + seqlen] for s in starts]


def load_windows(cfg: CalibConfig, tokenizer) -> list[np.ndarray]:
    cfg.check()
    if cfg.source is None:
        raise EdgecError("this recipe needs calibration data: pass --calib FILE "
                         "(e.g. ../shared/data/wikitext-2/valid.txt)")
    return token_windows(read_text(cfg.source), tokenizer, cfg.samples, cfg.seqlen, cfg.seed)


Visitor = Callable[[Node, list[list[np.ndarray]]], None]


def run_calibration(graph: Graph, windows: list[np.ndarray], wants: Callable[[Node], bool],
                    visit: Visitor, progress: Callable[[str], None] | None = None,
                    label: str = "calibrating") -> int:
    """Run `windows` through `graph`; call `visit(node, inputs_per_sample)` for each wanted node.

    inputs_per_sample[s][i] is the i-th input of the node for window s (weights
    included, as arrays). Only nodes that wanted nodes depend on are executed.
    Returns the number of visited nodes.
    """
    nodes = list(graph.nodes)
    wanted = [n for n in nodes if wants(n)]
    if not wanted:
        return 0
    needed: set[Node] = set()
    stack = [v.producer for n in wanted for v in n.inputs if v.producer is not None]
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(v.producer for v in n.inputs if v.producer is not None)
    last_use: dict[Value, int] = {}
    for i, n in enumerate(nodes):
        if n in needed or n in wanted:
            for v in n.inputs:
                last_use[v] = i

    envs: list[dict[Value, np.ndarray]] = []
    for w in windows:
        ids = np.asarray(w, np.int64)[None]
        feeds = {"input_ids": ids, "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None]}
        env = {}
        for v in graph.inputs:
            if v.name not in feeds:
                raise EdgecError(f"calibration runs before the KV cache is added; unexpected input {v.name}")
            env[v] = feeds[v.name]
        envs.append(env)

    def value(env, v):
        return np.asarray(graph.weights[v.name]) if v.kind == "weight" else env[v]

    say = progress or (lambda msg: None)
    visited = 0
    for i, n in enumerate(nodes):
        if n in wanted:
            visited += 1
            say(f"{label}: {visited}/{len(wanted)} {n.op} {n.output.name if n.outputs else ''}")
            visit(n, [[value(env, v) for v in n.inputs] for env in envs])
        if n in needed:
            opdef = get_op(n.op)
            for env in envs:
                result = opdef.ref(*[value(env, v) for v in n.inputs], **n.attrs)
                for out, r in zip(n.outputs, result if isinstance(result, tuple) else (result,)):
                    env[out] = np.asarray(r)
        for v in n.inputs:  # free what no later needed node reads
            if last_use.get(v) == i and v.kind != "weight":
                for env in envs:
                    env.pop(v, None)
    return visited


def linear_weight_name(node: Node) -> str | None:
    """The weight a linear reads directly (None if its W is computed, e.g. already quantized)."""
    if node.op != "linear":
        return None
    w = node.inputs[1]
    return w.name if w.kind == "weight" else None
