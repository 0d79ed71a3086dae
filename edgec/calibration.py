"""Calibration data and activation collection for data-aware passes.

Text in (a file, a folder of .txt/.raw files, or `hf:DATASET[:CONFIG]:SPLIT`
where a network exists), token windows out. `run_calibration` then pushes the
windows through the IR node by node, in topological order, calling a visitor
with the inputs every sample produced for each node it asks for. A visitor
may rewrite the node's weights in place before the node runs, so methods that
quantize or prune layer by layer (GPTQ, SparseGPT) see the already-compressed
earlier layers, exactly as in their papers. That keeps every window's live
activations at once; passes take bounded statistics of them through
passes/lib/activations.py, which runs one window at a time where the method
does not need the layer-by-layer order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import EdgecError
from .ir import Graph, Node, Value
from .ir.ops import get_op
from .limits import check_int, check_memory

DEFAULT_SAMPLES = 128
DEFAULT_SEQLEN = 512
MAX_SAMPLES = 100_000
MAX_SEQLEN = 1_000_000
TEXT_SUFFIXES = (".txt", ".raw", ".text", ".md")
# run_calibration keeps every window's activations at once; before the model is known, count
# at least two fp32 activations of 128 features per token (any real model holds far more).
MIN_BYTES_PER_TOKEN = 16 + 2 * 4 * 128
LIVE_ACTIVATIONS = 2  # measured: ~1.8 of the widest activation per token and window stay alive
MEMORY_HINT = "pass a smaller --calib-samples or --calib-seqlen"


@dataclass(frozen=True)
class CalibConfig:
    """What `--calib`, `--calib-samples` and `--calib-seqlen` set."""

    source: str | None = None
    samples: int = DEFAULT_SAMPLES
    seqlen: int = DEFAULT_SEQLEN
    seed: int = 0

    def check(self) -> None:
        """Types and ranges, then a memory floor: all before the model is loaded."""
        if self.source is not None and not isinstance(self.source, str):
            raise EdgecError(f"--calib must be a path or hf:DATASET[:CONFIG]:SPLIT, got {self.source!r}")
        check_int(self.samples, "--calib-samples", 1, MAX_SAMPLES)
        check_int(self.seqlen, "--calib-seqlen", 2, MAX_SEQLEN)
        check_int(self.seed, "calibration seed", 0)
        check_memory(self.samples * self.seqlen * MIN_BYTES_PER_TOKEN,
                     f"calibrating on {self.samples:,} windows of {self.seqlen:,} tokens", MEMORY_HINT)

    @classmethod
    def from_settings(cls, table: dict, source=None, samples=None, seqlen=None) -> "CalibConfig":
        """Command-line values win over a recipe's [calibration] table; each is checked under its own name.

        A recipe's TOML can hold any type (samples = "x", 3.5, true): those get
        a one-line error naming the recipe key instead of int()'s traceback.
        """
        def pick(cli, key, default, flag, lo, hi):
            if cli is not None:
                return check_int(cli, flag, lo, hi)
            if key in table:
                return check_int(table[key], f"the recipe's [calibration] {key}", lo, hi)
            return default

        src = source if source is not None else table.get("source")
        if src is not None and not isinstance(src, (str, Path)):
            raise EdgecError(f"the recipe's [calibration] source must be a path string, got {src!r}")
        cfg = cls(source=None if src is None else str(src),
                  samples=pick(samples, "samples", DEFAULT_SAMPLES, "--calib-samples", 1, MAX_SAMPLES),
                  seqlen=pick(seqlen, "seqlen", DEFAULT_SEQLEN, "--calib-seqlen", 2, MAX_SEQLEN),
                  seed=pick(None, "seed", 0, "seed", 0, None))
        cfg.check()
        return cfg


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
    _check_calibration_memory(needed, windows)
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


def calibration_bytes(nodes, windows: list[np.ndarray]) -> int:
    """About the bytes run_calibration holds for `windows` through `nodes`.

    Every window's live activations are kept at once (LIVE_ACTIVATIONS of the
    widest [.., seq, width] value per token), and one window at a time builds
    its attention scores (2 x heads x seq^2 fp32: scores and softmax).
    """
    width, heads = 0, 0
    for n in nodes:
        for v in n.outputs:
            if "seq" in v.shape and isinstance(v.shape[-1], int):
                width = max(width, v.shape[-1])
        if n.op == "attention" and n.inputs and len(n.inputs[0].shape) == 4 \
                and isinstance(n.inputs[0].shape[1], int):
            heads = max(heads, n.inputs[0].shape[1])
    tokens = sum(len(w) for w in windows)
    longest = max((len(w) for w in windows), default=0)
    return tokens * (16 + LIVE_ACTIVATIONS * 4 * width) + 2 * 4 * heads * longest * longest


def _check_calibration_memory(nodes, windows: list[np.ndarray]) -> None:
    """Fail before the first node runs rather than after minutes of calibration."""
    longest = max((len(w) for w in windows), default=0)
    check_memory(calibration_bytes(nodes, windows),
                 f"calibrating on {len(windows):,} windows of {longest:,} tokens", MEMORY_HINT)


def linear_weight_name(node: Node) -> str | None:
    """The weight a linear reads directly (None if its W is computed, e.g. already quantized)."""
    if node.op != "linear":
        return None
    w = node.inputs[1]
    return w.name if w.kind == "weight" else None
