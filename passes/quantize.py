"""Weight-only round-to-nearest (RTN) quantization, and the plumbing GPTQ and AWQ share.

Every weight-only method ends the same way: a linear's fp32 weight W[N, K] is
replaced by `dequantize(packed, scales, zeros)` in the one format of
edgec.ir.quant, and the fp32 weight is dropped. The graph stays runnable by
the reference interpreter, and backends fuse `linear(x, dequantize(...))`
into their low-bit matmul (MatMulNBits on ONNX, see targets/onnx/lower_quant.py).

The logits projection (`lm_head`, usually tied to the token embedding) stays
fp32 unless `lm_head=True`: it is the most quantization-sensitive linear, and
when tied the fp32 table must be kept for the embedding lookup anyway.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value
from edgec.ir.quant import SCALE_DTYPES, SUPPORTED_BITS, QuantSpec, quantize_rtn, storable_scales

from .registry import PassResult, register_pass


def make_spec(bits, group_size, symmetric, scales="fp32") -> QuantSpec:
    """Validated options -> QuantSpec (bad bit widths fail before any work is done).

    scales: "fp32" or "fp16", how each group's scale is stored (fp16: ggml's
    choice, half the scales' bytes, each scale chosen among fp16 values)."""
    if bits not in SUPPORTED_BITS:
        raise EdgecError(f"{bits}-bit quantization is not supported; use one of {SUPPORTED_BITS}")
    if not isinstance(group_size, int) or group_size < -1:
        raise EdgecError(f"group_size must be a positive integer, or 0 for per output channel; got {group_size!r}")
    if scales not in SCALE_DTYPES:
        raise EdgecError(f"scales must be one of {list(SCALE_DTYPES)} (how group scales are stored); got {scales!r}")
    return QuantSpec(int(bits), int(group_size), bool(symmetric), SCALE_DTYPES[scales])


def check_clip_min(clip_min) -> None:
    if not isinstance(clip_min, (int, float)) or not 0 < float(clip_min) <= 1:
        raise EdgecError(f"clip_min must be in (0, 1] (the narrowest range tried, as a fraction of the full one); "
                         f"got {clip_min!r}")


def describe(spec: QuantSpec) -> str:
    g = "per-channel" if spec.group_size in (0, -1) else f"g{spec.group_size}"
    fp16 = ", fp16 scales" if spec.scale_dtype == "float16" else ""
    return f"int{spec.bits} {g} {'sym' if spec.symmetric else 'asym'}{fp16}"


@dataclass(eq=False)
class Target:
    """One fp32 weight to quantize and the linears that read it as their W."""

    value: Value
    linears: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.value.name

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.value.shape)


def lm_head_linears(graph: Graph) -> set[Node]:
    """The linears that produce a graph output through single-input ops only (the logits projection).

    Walks back from each output through casts, reshapes and soft-capping
    (ops whose other inputs are constants); anything else (a residual add,
    attention) ends the walk, so no hidden layer is mistaken for the head.
    """
    heads = {graph.producing_linear(out) for out in graph.outputs}
    heads.discard(None)
    return heads


LAYER_RULES = ("k-quant",)  # named layer selections of `layers`


def layer_index(name: str) -> int | None:
    """The transformer layer a weight belongs to: the first `.N.` in its name (model.layers.N..., h.N...)."""
    m = re.search(r"\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def select_layers(layers, count: int) -> set[int]:
    """The layer indices a `layers` option names: a list of indices, or "k-quant", llama.cpp's
    use_more_bits rule for its K-quant mixes (the first and last eighth of the layers and every third
    in between: the layers where more bits help most)."""
    if layers == "k-quant":
        return {i for i in range(count) if i < count // 8 or i >= 7 * count // 8 or (i - count // 8) % 3 == 2}
    if isinstance(layers, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        return set(layers)
    raise EdgecError(f"layers must be a list of layer indices or one of {list(LAYER_RULES)}; got {layers!r}")


def weight_selector(graph: Graph, skip=(), only=(), layers=None):
    """name -> bool: is a weight of this name chosen by the skip / only / layers options (see find_targets)."""
    skip = [skip] if isinstance(skip, str) else list(skip)
    only = [only] if isinstance(only, str) else list(only)
    keep = None
    if layers is not None:
        found = [layer_index(name) for name in graph.weight_values]
        keep = select_layers(layers, max([i for i in found if i is not None], default=-1) + 1)

    def chosen(name: str) -> bool:
        return (not any(s in name for s in skip) and (not only or any(s in name for s in only))
                and (keep is None or layer_index(name) in keep))

    return chosen


def find_targets(graph: Graph, spec: QuantSpec, *, lm_head: bool = False, skip=(), only=(),
                 layers=None) -> list[Target]:
    """Eligible weights (2-D fp32 weights read as a linear's W), validated against the spec.

    skip / only: weight-name substrings to leave out / to keep only; layers: only the weights of
    these layers (see select_layers). Together they make a per-tensor mix, as llama.cpp's K-quant
    files are: e.g. only = ["mlp.down_proj"], layers = "k-quant" at 6 bits, then another pass for
    the rest. Every target is checked before any is rewritten, so a group size that does not
    divide some layer's K fails cleanly, naming the layer.
    """
    chosen = weight_selector(graph, skip, only, layers)
    excluded = set() if lm_head else lm_head_linears(graph)
    targets: dict[str, Target] = {}
    for n in graph.nodes:
        if n.op != "linear" or n in excluded:
            continue
        w = n.inputs[1]
        if w.kind != "weight" or w.dtype != "float32" or w.rank != 2 or not chosen(w.name):
            continue
        targets.setdefault(w.name, Target(w)).linears.append(n)
    for t in targets.values():
        spec.check(int(t.shape[1]), what=f"linear {t.name!r}")
    return list(targets.values())


def expert_weights(graph: Graph, spec: QuantSpec, chosen=lambda name: True) -> list[tuple[Node, int]]:
    """(moe node, input index) of each fp32 expert weight (gate_up [E,2I,H], down [E,H,I]) to quantize,
    checked against the spec (K: the last axis)."""
    found = []
    for n in graph.nodes:
        if n.op != "moe":
            continue
        for i in (2, 3):
            w = n.inputs[i]
            if w.kind == "weight" and w.dtype == "float32" and w.rank == 3 and chosen(w.name):
                spec.check(int(w.shape[2]), what=f"expert weight {w.name!r}")
                found.append((n, i))
    return found


def quantize_experts(graph: Graph, found: list[tuple[Node, int]], spec: QuantSpec, *, search: bool = False,
                     clip_min: float = 0.6) -> int:
    """Round-to-nearest quantization of MoE expert weights, each expert's rows on their own (per-row
    groups never cross rows, so stacking the experts' rows [E*R, K] quantizes each expert apart)."""
    for node, i in found:
        w = node.inputs[i]
        flat = np.asarray(graph.weight(w), np.float32).reshape(-1, int(w.shape[2]))
        replace_experts(graph, node, i, *quantize_rtn(flat, spec, search=search and spec.bits < 8, clip_min=clip_min),
                        spec)
    return len(found)


def replace_experts(graph: Graph, node: Node, i: int, packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
                    spec: QuantSpec) -> None:
    """Make moe `node` read its expert weight i (fp32 [E, R, K]) as reshape(dequantize(packed rows
    [E*R, ...]), [E, R, K]): the interpreter runs it as is, and a backend gathers the packed rows of the
    routed experts only (targets/onnx/lower_quant.py)."""
    w = node.inputs[i]
    experts, rows, k = (int(d) for d in w.shape)
    p = graph.add_weight(f"{w.name}.q{spec.bits}", np.ascontiguousarray(packed, np.uint8))
    s = graph.add_weight(f"{w.name}.scales", storable_scales(scales, spec).astype(spec.scale_dtype))
    z = graph.add_weight(f"{w.name}.zeros", np.ascontiguousarray(zeros, np.uint8))
    dq = graph.make_node("dequantize", [p, s, z], {"bits": spec.bits, "group_size": spec.check(k), "k": k},
                         name=f"{w.name}.dq")
    shaped = graph.make_node("reshape", [dq.output], {"shape": [experts, rows, k]}, name=f"{w.name}.experts")
    graph.insert_before(node, dq)
    graph.insert_before(node, shaped)
    node.inputs = [shaped.output if j == i else v for j, v in enumerate(node.inputs)]


def replace_weight(graph: Graph, target: Target, packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
                   spec: QuantSpec, *, share_embedding: bool = False) -> Value:
    """Make the target's linears read dequantize(packed, scales, zeros) instead of the fp32 weight.

    With share_embedding, an `embedding` reading the same (tied) table reads
    the dequantized table too, so only the packed copy is stored. The fp32
    weight is left for graph.prune_weights() to drop once nothing reads it.
    """
    n_out, k = (int(d) for d in target.shape)
    g = spec.check(k, what=f"linear {target.name!r}")
    users = list(target.linears)
    if share_embedding:
        users += [n for n in graph.nodes if n.op == "embedding" and n.inputs[0] is target.value]
    p = graph.add_weight(f"{target.name}.q{spec.bits}", np.ascontiguousarray(packed, np.uint8))
    s = graph.add_weight(f"{target.name}.scales", storable_scales(scales, spec).astype(spec.scale_dtype))
    z = graph.add_weight(f"{target.name}.zeros", np.ascontiguousarray(zeros, np.uint8))
    dq = graph.make_node("dequantize", [p, s, z], {"bits": spec.bits, "group_size": g, "k": k},
                         name=f"{target.name}.dq")
    graph.insert_before(min(users, key=graph.nodes.index), dq)
    for n in users:
        n.inputs = [dq.output if v is target.value else v for v in n.inputs]
    return dq.output


def summary(count: int, spec: QuantSpec, before: int, after: int, graph: Graph, lm_head: bool, extra: str = "") -> str:
    heads = "" if lm_head or not lm_head_linears(graph) else ", lm_head kept fp32"
    return (f"quantized {count} linears to {describe(spec)}{extra}, "
            f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB{heads}")


@register_pass("quantize", bits=4, group_size=128, symmetric=True, lm_head=False, lm_head_bits=None,
               lm_head_group_size=None, skip=[], only=[], layers=None, clip_search=False, clip_min=0.6,
               scales="fp32")
def quantize(graph: Graph, bits, group_size, symmetric, lm_head, skip, lm_head_bits=None,
             lm_head_group_size=None, clip_search=False, clip_min=0.6, scales="fp32", only=(),
             layers=None) -> PassResult:
    """Weight-only round-to-nearest quantization of the linears (group-wise, sym or asym).

    clip_search: each group's range is searched for the least rounding error
    (edgec.ir.quant.search_range: outliers clipped, and a symmetric grid
    uses all 2^bits codes) instead of covering its min..max; no calibration.
    clip_min: the narrowest range tried, as a fraction of the full one (1: no
    clipping, only the symmetric grid's extra code).
    scales: "fp32" (default) or "fp16", how the group scales are stored.
    skip / only / layers: which weights (name substrings to leave out / to quantize only, layer
    indices or "k-quant"; see find_targets).

    lm_head_bits / lm_head_group_size (with lm_head=True) give the logits
    projection its own format, e.g. int8 beside an int4 body: llama.cpp's Q4
    files do the same (Q8_0 token_embd/output), because the head is the most
    sensitive linear and, at batch 1, a large share of the bytes read per token.
    """
    spec = make_spec(bits, group_size, symmetric, scales)
    check_clip_min(clip_min)
    head_spec = spec
    if lm_head_bits is not None or lm_head_group_size is not None:
        if not lm_head:
            raise EdgecError("lm_head_bits / lm_head_group_size need lm_head = true")
        head_spec = make_spec(spec.bits if lm_head_bits is None else lm_head_bits,
                              spec.group_size if lm_head_group_size is None else lm_head_group_size, symmetric,
                              scales)
    heads = lm_head_linears(graph) if lm_head else set()
    targets = find_targets(graph, spec, lm_head=lm_head, skip=skip, only=only, layers=layers)
    experts = expert_weights(graph, spec, weight_selector(graph, skip, only, layers))
    before = graph.weights.total_bytes()
    extra = ", clipping searched" if clip_search else ""
    for t in targets:
        sp = head_spec if any(n in heads for n in t.linears) else spec
        if sp is not spec:
            sp.check(int(t.shape[1]), what=f"linear {t.name!r}")
            extra += f", lm_head {describe(sp)}"
        w = np.asarray(graph.weight(t.value), np.float32)
        replace_weight(graph, t, *quantize_rtn(w, sp, search=bool(clip_search) and sp.bits < 8,
                                               clip_min=float(clip_min)), sp, share_embedding=True)
    n_experts = quantize_experts(graph, experts, spec, search=bool(clip_search), clip_min=float(clip_min))
    if n_experts:
        extra += f", {n_experts} MoE expert weights (every expert)"
    graph.prune_weights()
    count, after = sum(len(t.linears) for t in targets), graph.weights.total_bytes()
    return PassResult(summary(count, spec, before, after, graph, lm_head, extra),
                      {"quantized_linears": count, "quantized_expert_weights": n_experts,
                       "bytes_before": before, "bytes_after": after})
