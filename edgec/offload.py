"""Hot/cold neuron offloading: which FFN neurons stay in memory under a memory budget (PowerInfer).

A backend describes what it stores (FFNCost: each offloadable FFN's bytes per neuron, in the file
and in memory, and the bytes nothing can offload); `plan_offload` answers with a Plan: per FFN the
hot neurons kept resident, the cold ones read from storage on demand, and the cache of cold
bundles each FFN keeps, all within the budget. Two modes:

  sparse  the gate stays resident and is computed in full; a token reads the bundles (up row and
          down column) of the cold neurons it activates (ReLU's zeros, or CATS's threshold)
  stream  every neuron is read each token (the dense-streaming baseline: the same files and reads)

Hot neurons are the most often active ones of the activation profile (edgec/activations.py), ranked
across all FFNs; without a profile every FFN keeps its first neurons (the order reorder_neurons
makes hot-first). The budget counts weights in memory as the runtime holds them (float16 scales
widened to float32 count at 4 bytes) plus the caches; the KV cache is the runtime's memory_budget.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .errors import EdgecError

MODES = ("sparse", "stream")
MIN_SLOTS = 16          # the smallest cache an FFN gets: one chunk of work (offload.c reads a cache-full at a time)
CACHE_SHARE = 0.25      # of what the minimum leaves, the share sparse mode gives the caches (the rest: hot neurons)
STREAM_CHUNK = 256 * 1024  # stream mode: each FFN's cache up to this many bytes (before any hot neuron),
                           # since the runtime reads a cache-full at a time: 16 bundles per read made dense
                           # streaming latency-bound (SmolLM2: 17 KB reads, 265 MB/s from a disk giving 1-2 GB/s)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _mb(n: float) -> str:
    """Bytes as MB with 3 significant digits (a tiny test model's budget is a few kB)."""
    return f"{n / 1e6:.3g} MB"


def parse_budget(text: str | int | float) -> tuple[str, float]:
    """`60MB`, `1.5GiB`, `123456` (bytes) or `50%` (of the weights) -> ("bytes", n) or ("share", 0.5)."""
    s = str(text).strip().upper().replace(" ", "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(%|[KMG]I?B|B)?", s)
    if not m:
        raise EdgecError(f"memory budget {text!r} is not a size: give bytes with a unit (60MB, 1.5GiB) or a share of "
                         "the weights (50%)")
    value, unit = float(m.group(1)), m.group(2) or ""
    if unit == "%":
        if not 0 < value <= 100:
            raise EdgecError(f"memory budget {text!r}: a share of the weights must be in (0%, 100%]")
        return "share", value / 100
    if value <= 0:
        raise EdgecError(f"memory budget {text!r} must be positive")
    return "bytes", value * _UNITS[unit]


@dataclass
class FFNCost:
    """One offloadable FFN as a backend stores it. Bytes per neuron: `bundle` in the cold file (what a read
    fetches), `slot` in a cache, `hot` resident; `fixed`: what stays resident whatever the split (the
    gate in sparse mode, index tables); `dense`: the FFN's bytes in a build without offloading."""

    name: str
    neurons: int
    bundle: int
    slot: int
    hot: int
    fixed: int
    dense: int


@dataclass
class FFNPlan:
    name: str
    hot: np.ndarray          # neuron ids kept resident (ascending)
    cold: np.ndarray         # neuron ids in the cold file (ascending)
    slots: int               # cache rows
    expected_active: float   # mean cold neurons a token activates (profile; all of them in stream mode)


@dataclass
class Plan:
    mode: str
    budget: int
    weights: int             # the dense build's weights in memory: what "100%" is
    minimum: int             # the resident minimum
    resident: int            # weights held in memory (fixed + hot)
    cache: int               # bytes of the caches
    ffns: list[FFNPlan]
    costs: list[FFNCost]
    other: int               # bytes nothing offloads (attention, embeddings, norms, head)
    profiled: bool
    notes: list[str] = field(default_factory=list)

    def expected_read_per_token(self) -> float:
        """Bytes of bundles a token needs from storage if nothing were cached (an upper bound)."""
        return float(sum(p.expected_active * c.bundle for p, c in zip(self.ffns, self.costs)))

    def report(self) -> dict:
        mb = 1e6
        return {
            "mode": self.mode, "budget_mb": round(self.budget / mb, 3), "weights_mb": round(self.weights / mb, 3),
            "budget_share": round(self.budget / self.weights, 4), "minimum_mb": round(self.minimum / mb, 3),
            "resident_mb": round(self.resident / mb, 3), "cache_mb": round(self.cache / mb, 3),
            "fixed_mb": round(self.other / mb, 3),
            "hot_neurons": int(sum(len(p.hot) for p in self.ffns)),
            "cold_neurons": int(sum(len(p.cold) for p in self.ffns)),
            "cold_file_mb": round(sum(len(p.cold) * c.bundle for p, c in zip(self.ffns, self.costs)) / mb, 3),
            "expected_read_mb_per_token": round(self.expected_read_per_token() / mb, 3),
            "profiled": self.profiled, "notes": list(self.notes),
            "ffns": [{"name": p.name, "hot": len(p.hot), "cold": len(p.cold), "slots": p.slots,
                      "expected_active_cold": round(p.expected_active, 1)} for p in self.ffns],
        }


def _frequency(profile, neurons: int) -> np.ndarray | None:
    """How often each neuron is active, as a rank key (higher first): the profile's hot-first order."""
    if profile is None:
        return None
    order = profile.hot_order()
    key = np.empty(neurons, np.float64)
    key[order] = np.arange(neurons, 0, -1)
    return key


def _activity(profile, neurons: int, read_share: float | None) -> np.ndarray | None:
    """Per neuron, the fraction of tokens it is read: `read_share` (a predictor's candidates) when given, else
    how often the profile saw it non-zero (ReLU's zeros, or a CATS threshold's: the profile runs after it)."""
    if read_share is not None:
        return np.full(neurons, float(read_share))
    if profile is None:
        return None
    return profile.fired / max(profile.tokens, 1)


def plan_offload(costs: list[FFNCost], other: int, budget: str | int | float, mode: str = "sparse",
                 profiles: list | None = None, read_share: list[float | None] | None = None) -> Plan:
    """The split of every FFN under `budget`; EdgecError naming the resident minimum when it cannot hold it.

    other: resident bytes outside the offloadable FFNs. profiles: the activation profile's layer for each
    FFN (edgec.activations.LayerProfile), or None. read_share: per FFN, the share of its neurons a token reads
    when known (a predictor's candidates; None: from the profile), for the expected reads and the caches."""
    if mode not in MODES:
        raise EdgecError(f"offload mode {mode!r} is not one of {list(MODES)}")
    if not costs:
        raise EdgecError("found no FFN this backend can offload (a gated MLP with fp16 or quantized weights and no "
                         "bias); build without --memory-budget")
    weights = other + sum(c.dense for c in costs)
    kind, value = parse_budget(budget)
    total = int(value * weights) if kind == "share" else int(value)
    profiles = profiles or [None] * len(costs)
    read_share = read_share or [None] * len(costs)
    fixed = other + sum(c.fixed for c in costs)
    min_slots = [min(MIN_SLOTS, c.neurons) for c in costs]
    minimum = fixed + sum(s * c.slot for s, c in zip(min_slots, costs))
    if total < minimum:
        gates = sum(c.fixed for c in costs)
        what = (f"attention, embeddings, norms and head {_mb(other)}, "
                + (f"what each FFN keeps to select its neurons (the gate computed in full, or a predictor) "
                   f"{_mb(gates)}, " if mode == "sparse" else "")
                + f"caches of {MIN_SLOTS} bundles per FFN {_mb(minimum - fixed)}")
        raise EdgecError(f"memory budget {_mb(total)} ({total / weights:.0%} of the weights' {_mb(weights)}) is below "
                         f"the resident minimum of {_mb(minimum)} ({minimum / weights:.0%}: {what}); raise "
                         f"--memory-budget to at least {_mb(minimum).replace(' ', '')}"
                         + (" or use --offload stream" if mode == "sparse" else ""))
    spare = total - minimum
    active = [(_activity(p, c.neurons, s) if mode == "sparse" else None)
              for p, c, s in zip(profiles, costs, read_share)]
    # hot neurons: most active first across all FFNs (without a profile: each FFN's first neurons, evenly)
    everything = sum(c.neurons * c.hot for c in costs)  # every neuron hot: nothing to read, no caches
    if everything <= total - fixed:
        spare = hot_share = total - fixed
    else:
        hot_share = spare if mode == "stream" else spare * (1 - CACHE_SHARE)
    chunk = [0] * len(costs)  # stream mode: slots beyond the minimum, so reads are large
    if mode == "stream" and everything > total - fixed:
        per = min(STREAM_CHUNK, spare // len(costs))
        chunk = [max(0, min(c.neurons, per // c.slot) - min_slots[i]) for i, c in enumerate(costs)]
        hot_share = spare - sum(n * c.slot for n, c in zip(chunk, costs))
    keys = []
    for i, (c, p) in enumerate(zip(costs, profiles)):
        f = _frequency(p, c.neurons)
        rank = f / c.neurons if f is not None else np.linspace(1, 0, c.neurons, endpoint=False)
        keys.append((rank, np.full(c.neurons, c.hot), np.full(c.neurons, i), np.arange(c.neurons)))
    rank = np.concatenate([k[0] for k in keys])
    cost = np.concatenate([k[1] for k in keys])
    layer = np.concatenate([k[2] for k in keys])
    neuron = np.concatenate([k[3] for k in keys])
    order = np.lexsort((layer, -rank))
    take = order[np.cumsum(cost[order]) <= hot_share]
    hot_sets = [np.sort(neuron[take][layer[take] == i]) for i in range(len(costs))]
    used = int(cost[take].sum())
    left = spare - used
    plans, cache, exp = [], 0, []
    for i, c in enumerate(costs):
        cold = np.setdiff1d(np.arange(c.neurons), hot_sets[i])
        exp.append(float(len(cold)) if active[i] is None else float(active[i][cold].sum()))
    weights_e = np.array([e * c.slot for e, c in zip(exp, costs)], np.float64)
    for i, c in enumerate(costs):
        cold = np.setdiff1d(np.arange(c.neurons), hot_sets[i])
        slots = min(min_slots[i] + chunk[i], len(cold))
        if mode == "sparse" and len(cold) and weights_e.sum() > 0:
            slots += int(left * weights_e[i] / weights_e.sum() // c.slot)
        slots = max(1, min(slots, len(cold))) if len(cold) else 0
        cache += slots * c.slot
        plans.append(FFNPlan(c.name, hot_sets[i].astype(np.int32), cold.astype(np.int32), slots, exp[i]))
    resident = fixed + used
    plan = Plan(mode, total, weights, minimum, resident, cache, plans, costs, other,
                profiled=any(p is not None for p in profiles))
    if mode == "sparse" and not plan.profiled:
        plan.notes.append("no activation profile: each FFN keeps its first neurons hot; run the reorder_neurons pass "
                          "(permute = false keeps the order) so the most active ones are")
    if plan.resident + plan.cache > total:
        raise EdgecError(f"internal: the plan takes {(plan.resident + plan.cache) / 1e6:.2f} MB of a "
                         f"{total / 1e6:.2f} MB budget")
    return plan


def gpu_split(plan: Plan, device) -> dict:
    """PowerInfer's split for a GPU device: the plan's resident set (hot neurons, attention, embeddings) on
    the GPU under the budget, the cold neurons on the CPU; bytes each side touches per token and the
    time the device's bandwidth gives them (an estimate: executing the split on a GPU is not built yet)."""
    hot_read = plan.other + sum(c.fixed for c in plan.costs) + sum(len(p.hot) * c.hot
                                                                     for p, c in zip(plan.ffns, plan.costs))
    cold_read = plan.expected_read_per_token()
    bw = float(device.memory_bandwidth_gbs) * 1e9
    return {"device": device.name, "gpu_resident_mb": round(plan.resident / 1e6, 3),
            "gpu_bytes_per_token_mb": round(hot_read / 1e6, 3),
            "cpu_bytes_per_token_mb": round(cold_read / 1e6, 3),
            "gpu_ms_per_token": round(hot_read / bw * 1e3, 3), "cpu_ms_per_token": round(cold_read / bw * 1e3, 3),
            "estimated": True, "bandwidth_gbs": device.memory_bandwidth_gbs}
