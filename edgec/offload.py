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

Mixture-of-experts layers are planned by `plan_experts`: whole experts are the bundles (ExpertCost,
ExpertPlan), the most often routed ones (the profile's ExpertLayerProfile) stay resident, the rest are read
on demand through a cache of expert slots every layer shares; `stream` reads every routed expert each call.
`expert_gpu_split` reports the GPU/CPU split of that plan for GPU devices. Routing traces (the C runtime's
EDGEC_MOE_TRACE hook) are written by `write_routing_trace`.
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


# ----------------------------------------------------------------------------- mixture-of-experts layers
@dataclass
class ExpertCost:
    """One offloadable MoE layer as a backend stores it: whole experts are the bundles. `bundle`: an expert's bytes
    in the cold file (what one read of it fetches); `slot`: its bytes in memory, resident or in a cache slot;
    `fixed`: what stays resident whatever the split (the router, the table of where each expert is)."""

    name: str
    experts: int
    top_k: int
    bundle: int
    slot: int
    fixed: int


@dataclass
class ExpertLayerPlan:
    name: str
    hot: np.ndarray          # experts kept resident (ascending)
    cold: np.ndarray         # experts in the cold file (ascending): bundle c is expert cold[c]
    expected_cold: float     # mean cold experts a token routes to (profile; top_k x cold/E without one)
    frequency: np.ndarray | None = None  # the profile's share of tokens routed to each expert


@dataclass
class ExpertPlan:
    """Experts kept resident by routing frequency, the rest read whole on demand through `slots` expert slots that
    every layer shares (stream: no expert resident, every routed expert read each call)."""

    mode: str
    budget: int
    weights: int             # every weight in memory as the dense build holds it: what "100%" is
    minimum: int
    resident: int            # weights held in memory: other + fixed + hot experts
    slots: int
    slot_bytes: int
    layers: list[ExpertLayerPlan]
    costs: list[ExpertCost]
    other: int               # bytes outside the offloaded MoE layers (attention, embeddings, dense FFNs, head)
    profiled: bool
    notes: list[str] = field(default_factory=list)

    @property
    def cache(self) -> int:
        return self.slots * self.slot_bytes

    def expected_read_per_token(self) -> float:
        """Bytes of experts a token reads from storage if no cache slot held one (an upper bound)."""
        return float(sum(p.expected_cold * c.bundle for p, c in zip(self.layers, self.costs)))

    def report(self) -> dict:
        mb = 1e6
        experts = sum(c.experts * c.slot for c in self.costs)
        return {
            "kind": "experts", "mode": self.mode, "budget_mb": round(self.budget / mb, 3),
            "weights_mb": round(self.weights / mb, 3), "budget_share": round(self.budget / self.weights, 4),
            "expert_weights_mb": round(experts / mb, 3), "minimum_mb": round(self.minimum / mb, 3),
            "resident_mb": round(self.resident / mb, 3), "cache_mb": round(self.cache / mb, 3),
            "fixed_mb": round(self.other / mb, 3), "slots": self.slots, "slot_bytes": self.slot_bytes,
            "hot_experts": int(sum(len(p.hot) for p in self.layers)),
            "cold_experts": int(sum(len(p.cold) for p in self.layers)),
            "cold_file_mb": round(sum(len(p.cold) * c.bundle for p, c in zip(self.layers, self.costs)) / mb, 3),
            "expected_read_mb_per_token": round(self.expected_read_per_token() / mb, 3),
            "profiled": self.profiled, "notes": list(self.notes),
            "layers": [{"name": p.name, "hot": p.hot.tolist(), "cold": len(p.cold),
                        "expected_cold_per_token": round(p.expected_cold, 3),
                        "hot_share": round(float(p.frequency[p.hot].sum() / max(p.frequency.sum(), 1e-12)), 4)
                        if p.frequency is not None else None} for p in self.layers],
        }


def plan_experts(costs: list[ExpertCost], other: int, budget: str | int | float, mode: str = "sparse",
                 profiles: list | None = None) -> ExpertPlan:
    """Which experts of each MoE layer stay resident under `budget`; EdgecError naming the resident minimum when the
    budget cannot hold it.

    other: resident bytes outside the MoE layers' experts and routers. profiles: the activation profile's
    ExpertLayerProfile of each layer (edgec.activations), or None. sparse: the most often routed experts across all
    layers stay resident (under independent routing the best static choice; an LRU cache of the same bytes would
    do worse), the cache gets the slots one token's experts need plus what no further expert fits in; without a
    profile no expert is preferred, so everything beyond the minimum goes to cache slots (an LRU finds the
    frequent ones). stream: no expert resident, every routed expert read each call (the streaming baseline)."""
    if mode not in MODES:
        raise EdgecError(f"offload mode {mode!r} is not one of {list(MODES)}")
    if not costs:
        raise EdgecError("found no mixture-of-experts layer whose experts can be offloaded; build without "
                         "--memory-budget")
    weights = other + sum(c.fixed + c.experts * c.slot for c in costs)
    kind, value = parse_budget(budget)
    total = int(value * weights) if kind == "share" else int(value)
    profiles = profiles or [None] * len(costs)
    fixed = other + sum(c.fixed for c in costs)
    min_slots = max(c.top_k for c in costs)  # one token's experts of a layer, read together
    slot_bytes = max(c.bundle for c in costs)
    minimum = fixed + min_slots * slot_bytes
    freq = []
    for p, c in zip(profiles, costs):
        ok = p is not None and p.experts == c.experts and p.tokens > 0
        freq.append(p.frequency().astype(np.float64) if ok else None)
    profiled = any(f is not None for f in freq)
    if mode == "sparse" and weights <= total:  # every expert fits: nothing to read, no cache
        layers = [ExpertLayerPlan(c.name, np.arange(c.experts), np.zeros(0, np.int64), 0.0, f)
                  for c, f in zip(costs, freq)]
        return ExpertPlan(mode, total, weights, minimum, weights, 0, slot_bytes, layers, costs, other, profiled)
    if total < minimum:
        raise EdgecError(f"memory budget {_mb(total)} ({total / weights:.0%} of the weights' {_mb(weights)}) is below "
                         f"the resident minimum of {_mb(minimum)} ({minimum / weights:.0%}: attention, embeddings, "
                         f"norms, head and routers {_mb(fixed)}, {min_slots} expert slots of {_mb(slot_bytes)} for one "
                         f"token's experts); raise --memory-budget to at least {_mb(minimum).replace(' ', '')}")
    spare = total - minimum
    hot_sets = [np.zeros(0, np.int64) for _ in costs]
    used = 0
    notes = []
    if mode == "sparse" and profiled:
        keys = [(f if f is not None else np.full(c.experts, c.top_k / c.experts), np.full(c.experts, i),
                 np.arange(c.experts)) for i, (f, c) in enumerate(zip(freq, costs))]
        rank, layer, expert = (np.concatenate(k) for k in zip(*keys))
        cost = np.concatenate([np.full(c.experts, c.slot) for c in costs])
        order = np.lexsort((expert, layer, -rank))
        take = order[np.cumsum(cost[order]) <= spare]
        hot_sets = [np.sort(expert[take][layer[take] == i]) for i in range(len(costs))]
        used = int(cost[take].sum())
    elif mode == "sparse":
        notes.append("no routing profile: no expert is preferred, every expert beyond the minimum's slots is a cache "
                     "slot (build with --calib, or a profile, so the most often routed experts stay resident)")
    layers = []
    for i, (c, f) in enumerate(zip(costs, freq)):
        cold = np.setdiff1d(np.arange(c.experts), hot_sets[i])
        exp = float(f[cold].sum()) if f is not None else c.top_k * len(cold) / c.experts
        layers.append(ExpertLayerPlan(c.name, hot_sets[i].astype(np.int64), cold.astype(np.int64), exp, f))
    cold_total = sum(len(p.cold) for p in layers)
    slots = min_slots if mode == "stream" else min_slots + int((spare - used) // slot_bytes)
    slots = max(1, min(slots, max(cold_total, 1)))
    plan = ExpertPlan(mode, total, weights, minimum, fixed + used, slots, slot_bytes, layers, costs, other, profiled,
                      notes)
    if plan.resident + plan.cache > total:
        raise EdgecError(f"internal: the plan takes {(plan.resident + plan.cache) / 1e6:.2f} MB of a "
                         f"{total / 1e6:.2f} MB budget")
    return plan


def expert_gpu_split(plan: ExpertPlan, device) -> dict:
    """The split for a GPU device (llama.cpp's --n-cpu-moe keeps whole layers' experts on the CPU; here it is per
    expert, by routing frequency): the resident experts, attention, embeddings and routers on the GPU, the cold
    experts on the CPU; per layer how many experts each side holds, and the bytes each side reads per token (an
    estimate: executing the split on a GPU is not built yet)."""
    hot_read = plan.other + sum(c.fixed for c in plan.costs)
    for p, c in zip(plan.layers, plan.costs):
        share = p.frequency[p.hot].sum() if p.frequency is not None else c.top_k * len(p.hot) / c.experts
        hot_read += share * c.slot
    cold_read = plan.expected_read_per_token()
    bw = float(device.memory_bandwidth_gbs) * 1e9
    return {"device": device.name, "gpu_resident_mb": round(plan.resident / 1e6, 3),
            "cpu_experts_mb": round(sum(len(p.cold) * c.slot for p, c in zip(plan.layers, plan.costs)) / 1e6, 3),
            "layers": [{"name": p.name, "gpu_experts": len(p.hot), "cpu_experts": len(p.cold)} for p in plan.layers],
            "gpu_bytes_per_token_mb": round(hot_read / 1e6, 3), "cpu_bytes_per_token_mb": round(cold_read / 1e6, 3),
            "gpu_ms_per_token": round(hot_read / bw * 1e3, 3), "cpu_ms_per_token": round(cold_read / bw * 1e3, 3),
            "estimated": True, "bandwidth_gbs": device.memory_bandwidth_gbs}


# ----------------------------------------------------------------------------- routing traces
TRACE_ENV = "EDGEC_MOE_TRACE"  # the C runtime's benchmark and testing hook (runtime/moe.h): experts from a trace
TRACE_MAGIC = b"EDGECMT1"


def write_routing_trace(path, ids, experts: int):
    """ids [tokens, layers, top_k]: the experts each moe layer takes for each token row, written as the file the
    C runtime reads under EDGEC_MOE_TRACE (runtime/moe.h). Each row's experts must be distinct, in [0, experts)."""
    import struct
    from pathlib import Path

    ids = np.asarray(ids)
    if ids.ndim != 3 or 0 in ids.shape or not np.issubdtype(ids.dtype, np.integer):
        raise EdgecError(f"a routing trace is integer expert ids [tokens, layers, top_k], got {ids.dtype}{ids.shape}")
    if ids.min() < 0 or ids.max() >= experts:
        raise EdgecError(f"routing trace: expert ids must lie in [0, {experts})")
    srt = np.sort(ids, axis=-1)
    if (srt[..., 1:] == srt[..., :-1]).any():
        raise EdgecError("routing trace: an expert appears twice among one row's top_k")
    tokens, layers, top_k = ids.shape
    path = Path(path)
    path.write_bytes(TRACE_MAGIC + struct.pack("<IIIIQ", 1, layers, top_k, experts, tokens)
                     + np.ascontiguousarray(ids, "<i4").tobytes())
    return path


def read_routing_trace(path) -> tuple[np.ndarray, int]:
    """(ids [tokens, layers, top_k], experts) of a routing trace file (write_routing_trace's)."""
    import struct
    from pathlib import Path

    data = Path(path).read_bytes()
    if len(data) < 32 or data[:8] != TRACE_MAGIC:
        raise EdgecError(f"{path} is not a routing trace (magic {TRACE_MAGIC.decode()})")
    version, layers, top_k, experts, tokens = struct.unpack("<IIIIQ", data[8:32])
    if version != 1 or len(data) != 32 + 4 * tokens * layers * top_k:
        raise EdgecError(f"{path}: a routing trace of another version or size than its header says")
    return np.frombuffer(data, "<i4", offset=32).reshape(tokens, layers, top_k).astype(np.int64), experts
