"""`edgec profile`: where the time of prefill and of each decoded token goes, per operator.

Runs the artifact's own generation path (the in-place KV sequence `edgec run`
uses) twice: once plain, for wall-clock prefill and decode speed, and once
with the backend's op trace on (Backend.traces_ops: onnxruntime's profiler; the C runtime's
per-op timers, from a library compiled with them when the artifact's has none), split
into the prefill run and the decode runs and summed per op type. The gap between a
run's wall time and the sum of its kernels is the runtime's own overhead
(scheduling, allocation, thread hand-offs), the part that many small ops cost.
Token ids are synthetic (fixed, seeded): the cost of a step does not depend
on which tokens they are.
"""
from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgecError
from .runtime import CompiledModel, load


@dataclass
class OpTime:
    op: str
    calls: float  # per run (per token for decode)
    ms: float  # per run
    share: float  # of the kernel time


@dataclass
class Profile:
    artifact: str
    threads: int | None
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    prefill_tok_s: float
    decode_ms_per_token: float
    decode_tok_s: float
    decode_kernel_ms: float = 0.0  # per token, summed over nodes
    decode_overhead_ms: float = 0.0  # per token: run time - kernel time
    backend: str = "onnx"
    huge_page_mb: float = 0.0  # of the session's memory (the prepacked weights) in 2 MiB pages (edgec/memory.py)
    prefill_ops: list[OpTime] = field(default_factory=list)
    decode_ops: list[OpTime] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _ids(model: CompiledModel, n: int) -> list[int]:
    logits = next(v for v in model.manifest["graph"]["outputs"] if v["name"] == "logits")
    vocab = int(logits["shape"][-1])
    return [int(i) for i in np.random.default_rng(0).integers(0, vocab, n)]


def _generate(model: CompiledModel, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds per token) of greedy decoding on the model's sequence."""
    seq = model.sequence(len(prompt) + new_tokens)
    t0 = time.perf_counter()
    tok = int(np.argmax(seq.run(prompt, last_only=True)[-1]))
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        tok = int(np.argmax(seq.run([tok])[-1]))
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / max(1, new_tokens - 1)


def _table(acc: list[dict[str, list[float]]]) -> list[OpTime]:
    total: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for run in acc:
        for op, (c, us) in run.items():
            total[op][0] += c
            total[op][1] += us
    n = max(1, len(acc))
    kernel = sum(us for _, us in total.values()) or 1.0
    rows = [OpTime(op, c / n, us / n / 1000, us / kernel) for op, (c, us) in total.items()]
    return sorted(rows, key=lambda r: -r.ms)


def profile(path: str | Path, *, prompt_tokens: int = 64, new_tokens: int = 32,
            threads: int | None = None, trusted_keys=(), allow_unsigned: bool = False) -> Profile:
    """Wall-clock prefill/decode speed and the per-op split of both (ONNX and C artifacts)."""
    if prompt_tokens < 1 or new_tokens < 2:
        raise EdgecError("profile needs --prompt-tokens >= 1 and --new-tokens >= 2")
    model = load(path, threads=threads, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
    if not model.backend.traces_ops:
        raise EdgecError(f"per-op profiling is not available for the {model.backend.name} backend "
                         "(build the artifact with --backend onnx or c)")
    if prompt_tokens + new_tokens > model.context_length:
        raise EdgecError(f"--prompt-tokens + --new-tokens must fit the context ({model.context_length})")
    prompt = _ids(model, prompt_tokens)
    huge = getattr(model.executor, "huge_pages", None)
    _generate(model, prompt, 4)  # warm-up: first-run allocations and thread start
    prefill_s, step_s = _generate(model, prompt, new_tokens)

    with tempfile.TemporaryDirectory() as tmp:
        traced = CompiledModel(path, threads=threads, verify=False, trust=trusted_keys,  # profiled
                               allow_unsigned=allow_unsigned, executor_kwargs={"trace_dir": tmp})
        _generate(traced, prompt, new_tokens)
        runs = traced.executor.op_trace()
    if len(runs) < new_tokens:
        raise EdgecError(f"the backend's trace has {len(runs)} runs, expected {new_tokens}")
    runs = runs[-new_tokens:]  # session start-up runs (if any) come first
    acc = [ops for _, ops in runs]
    decode_acc = acc[1:]
    kernel_ms = sum(us for run in decode_acc for _, us in run.values()) / len(decode_acc) / 1000
    run_ms = sum(wall for wall, _ in runs[1:]) / len(decode_acc) / 1000
    return Profile(str(path), threads, prompt_tokens, new_tokens, backend=model.backend.name,
                   prefill_ms=prefill_s * 1000, prefill_tok_s=prompt_tokens / prefill_s,
                   decode_ms_per_token=step_s * 1000, decode_tok_s=1 / step_s,
                   decode_kernel_ms=kernel_ms, decode_overhead_ms=max(0.0, run_ms - kernel_ms),
                   huge_page_mb=huge.collapsed_bytes / 1e6 if huge else 0.0,
                   prefill_ops=_table(acc[:1]), decode_ops=_table(decode_acc))


_RUNTIME = {"onnx": "onnxruntime", "c": "C runtime"}


def format_profile(p: Profile, top: int = 12) -> str:
    lines = [f"prefill   {p.prompt_tokens} tokens in {p.prefill_ms:.1f} ms ({p.prefill_tok_s:.0f} tok/s)",
             f"decode    {p.decode_ms_per_token:.2f} ms/token ({p.decode_tok_s:.1f} tok/s) over {p.new_tokens - 1} "
             f"steps; profiled: kernels {p.decode_kernel_ms:.2f} ms + {_RUNTIME.get(p.backend, p.backend)} overhead "
             f"{p.decode_overhead_ms:.2f} ms per token",
             f"memory    {p.huge_page_mb:.0f} MB of the session's memory (the prepacked weights) in 2 MiB pages"
             + ("" if p.huge_page_mb else f" (none: [{p.backend}] huge_pages off, a model under a few MB, or no MADV_COLLAPSE)"),
             ""]
    for title, rows, unit in (("decode, per token", p.decode_ops, "token"), ("prefill", p.prefill_ops, "run")):
        lines.append(f"{title}:")
        lines.append(f"  {'op':34s} {'calls/' + unit:>12s} {'ms/' + unit:>10s} {'share':>7s}")
        for r in rows[:top]:
            lines.append(f"  {r.op:34s} {r.calls:12.0f} {r.ms:10.3f} {100 * r.share:6.1f}%")
        if len(rows) > top:
            rest = rows[top:]
            lines.append(f"  {'(' + str(len(rest)) + ' more op types)':34s} {sum(r.calls for r in rest):12.0f} "
                         f"{sum(r.ms for r in rest):10.3f} {100 * sum(r.share for r in rest):6.1f}%")
        lines.append("")
    return "\n".join(lines).rstrip()
