"""FFNs (MLPs) in every form the IR has, and permuting or slicing their intermediate channels.

An FFN is the ops between the linears that write its I intermediate
channels (the neurons) and the linear `down` that reads them:

    gate, up -> glu(gate, up) or act(gate) * up -> down       (Llama; raise_glu makes the glu)
    gate_up -> split / slices -> glu -> down                   (Phi-3, or after fuse_linears)
    fc1 -> activation (relu, gelu, GPT-2's tanh formula, reshapes) -> fc2

Producers and down may be plain, fp16 (cast), quantized (dequantize) or
W8A8 linears (see linears.py); a fused producer may also write parts that
are not channels of this FFN (they keep their rows). Per-channel constant
vectors in the middle (an explicit `mul(h, 1/s)` of AWQ / SmoothQuant) move
with the channels. Matching is conservative: a value in the middle that
anything outside reads, or an op it does not understand, is no FFN.

take_channels(graph, ffn, idx) makes channel i the old channel idx[i]: a
permutation reorders the neurons and leaves the model's function unchanged
(hot/cold ordering); a subset removes the others (structured pruning).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgec.errors import EdgecError
from edgec.ir import Graph, Node, Value

from .linears import (LINEAR_OPS, dense_weight, lm_head_nodes, own_weight, reinfer, set_weight, take_cols,
                      take_rows, takeable)

ACTIVATIONS = {"relu", "gelu", "silu", "tanh", "sigmoid", "exp", "glu"}
UNARY = {"relu", "gelu", "silu", "tanh", "sigmoid", "exp", "neg", "sqrt", "rsqrt", "cast", "sin", "cos", "sparsify"}
BINARY = {"add", "sub", "mul", "div", "pow", "maximum"}


@dataclass(eq=False)
class Producer:
    """A linear writing FFN channels as output rows; a fused one's output is cut into parts."""

    linear: Node
    sizes: list[int]  # widths of the consecutive parts of its output ([N] when it is not cut)
    parts: list[int]  # the parts that are channels of the FFN, each ffn.size wide
    cut: list[Node] = field(default_factory=list)  # the split, or the slices in part order; [] if not cut

    def offsets(self) -> list[int]:
        return [int(o) for o in np.cumsum([0] + self.sizes[:-1])]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Output rows keeping channels `idx` of every FFN part and all rows of the other parts."""
        return np.concatenate([o + idx if i in self.parts else np.arange(o, o + s)
                               for i, (o, s) in enumerate(zip(self.offsets(), self.sizes))])


@dataclass(eq=False)
class FFN:
    """One MLP: `producers` write its `size` channels, `down` reads them."""

    down: Node
    size: int
    producers: list[Producer] = field(default_factory=list)
    between: list[Node] = field(default_factory=list)  # activation / glu / elementwise / reshape nodes
    channel_weights: list[tuple[Node, int]] = field(default_factory=list)  # (node, input) of [.., size] constants

    @property
    def hidden(self) -> Value:
        """The activation whose channels are the neurons (down's input)."""
        return self.down.inputs[0]

    @property
    def input(self) -> Value:
        """What the (first) producer reads: the MLP's input."""
        return self.producers[0].linear.inputs[0]

    @property
    def glu(self) -> Node | None:
        """The glu(gate, up) node of a gated MLP after raise_glu (None otherwise)."""
        return next((n for n in self.between if n.op == "glu"), None)


def _is_scalar(v: Value) -> bool:
    return all(d == 1 for d in v.shape)


def _channel_vector(v: Value, size: int) -> bool:
    return v.kind == "weight" and v.rank >= 1 and v.shape[-1] == size > 1 and all(d == 1 for d in v.shape[:-1])


def _last_axis(n: Node) -> bool:
    return n.attrs["axis"] % n.inputs[0].rank == n.inputs[0].rank - 1


def _cut(graph: Graph, src: Node, reached: list[Value], users, size: int) -> Producer | None:
    """src's output cut by one split or by slices that tile it; `reached` are the FFN's parts."""
    out, readers = src.output, users.get(src.output, [])
    width = out.shape[-1]
    if out in graph.outputs or not isinstance(width, int) or not readers:
        return None
    if len(readers) == 1 and readers[0].op == "split" and _last_axis(readers[0]):
        cut, outs, sizes = readers[:1], readers[0].outputs, [int(s) for s in readers[0].attrs["sizes"]]
    elif all(r.op == "slice" and _last_axis(r) and r.attrs["step"] == 1 and r.attrs["start"] >= 0
             and r.attrs["end"] >= 0 for r in readers):
        cut = sorted(readers, key=lambda r: r.attrs["start"])
        spans = [(r.attrs["start"], min(r.attrs["end"], width)) for r in cut]
        if [a for a, _ in spans] != [0] + [b for _, b in spans[:-1]] or spans[-1][1] != width:
            return None
        outs, sizes = [r.output for r in cut], [b - a for a, b in spans]
    else:
        return None
    parts = [outs.index(v) for v in reached]
    if any(sizes[i] != size for i in parts):
        return None
    return Producer(src, sizes, parts, cut)


def match_ffn(graph: Graph, down: Node, users) -> FFN | None:
    """The FFN whose channels `down` reads, walking back through channel-wise ops; None if none."""
    x = down.inputs[0]
    if not isinstance(x.shape[-1], int) or not takeable(down):
        return None
    ffn = FFN(down, x.shape[-1])
    reached: dict[Node, list[Value]] = {}  # fused linear -> its parts the FFN reads
    seen, stack = set(), [x]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        p = v.producer
        if p is None or v.shape[-1] != ffn.size:
            return None
        if p.op in LINEAR_OPS:
            if not takeable(p):
                return None
            ffn.producers.append(Producer(p, [ffn.size], [0]))
        elif p.op in ("split", "slice") and p.inputs[0].producer is not None \
                and p.inputs[0].producer.op in LINEAR_OPS:
            if not takeable(p.inputs[0].producer):
                return None
            reached.setdefault(p.inputs[0].producer, []).append(v)
        elif p.op in UNARY or p.op == "glu" or p.op in BINARY:
            ffn.between.append(p)
            for i, a in enumerate(p.inputs):
                if p.op in BINARY and _channel_vector(a, ffn.size):
                    ffn.channel_weights.append((p, i))
                elif not (p.op in BINARY and _is_scalar(a)):
                    stack.append(a)
        elif p.op == "reshape":
            if p.inputs[0].shape[-1] != ffn.size or p.attrs["shape"][-1] != ffn.size:
                return None
            ffn.between.append(p)
            stack.append(p.inputs[0])
        else:
            return None
    for src, parts in reached.items():
        prod = _cut(graph, src, parts, users, ffn.size)
        if prod is None:
            return None
        ffn.producers.append(prod)
    if not any(n.op in ACTIVATIONS for n in ffn.between):
        return None  # two linears in a row (e.g. a low-rank pair) are not an MLP
    # Every value in the middle must feed only the middle and the down projection.
    inside = set(ffn.between) | {down} | {c for p in ffn.producers for c in p.cut}
    middle = [n.output for n in ffn.between] + [p.linear.output for p in ffn.producers if not p.cut] + \
        [v for vs in reached.values() for v in vs]
    if any(v in graph.outputs or any(u not in inside for u in users.get(v, [])) for v in middle):
        return None
    return ffn


def find_ffns(graph: Graph) -> list[FFN]:
    """Every FFN of the graph, in graph order (the logits projection is never a down)."""
    users, heads = graph.users(), lm_head_nodes(graph)
    found = (match_ffn(graph, n, users) for n in graph.nodes if n.op in LINEAR_OPS and n not in heads)
    return [f for f in found if f is not None]


def channel_magnitude(graph: Graph, ffn: FFN) -> np.ndarray:
    """||down[:, j]|| times the norms of every producer row of channel j: a bound on the channel's output."""
    score = np.linalg.norm(dense_weight(graph, ffn.down), axis=0)
    for p in ffn.producers:
        w = dense_weight(graph, p.linear)
        offsets = p.offsets()
        for i in p.parts:
            score = score * np.linalg.norm(w[offsets[i]:offsets[i] + ffn.size], axis=1)
    return score


def take_channels(graph: Graph, ffn: FFN, idx) -> None:
    """Keep channels `idx` in that order (channel i becomes the old idx[i]); updates `ffn` too.

    A permutation of range(ffn.size) leaves the model's function unchanged.
    Raises EdgecError for a quantized down projection whose groups `idx`
    would split (see linears.py).
    """
    idx = np.asarray(idx, np.int64)
    if idx.ndim != 1 or not len(idx) or len(np.unique(idx)) != len(idx) or idx.min() < 0 or idx.max() >= ffn.size:
        raise EdgecError(f"FFN channels must be distinct indices in [0, {ffn.size}), got {idx}")
    new = len(idx)
    take_cols(graph, ffn.down, idx)  # first: the one form that may refuse
    for p in ffn.producers:
        take_rows(graph, p.linear, p.rows(idx))
        p.sizes = [new if i in p.parts else s for i, s in enumerate(p.sizes)]
        if p.cut and p.cut[0].op == "split":
            p.cut[0].attrs["sizes"] = list(p.sizes)
        elif p.cut:  # slices, in part order
            for s, o, n in zip(p.cut, p.offsets(), p.sizes):
                s.attrs["start"], s.attrs["end"] = o, o + n
    for n, i in ffn.channel_weights:
        own_weight(graph, n, i)
        set_weight(graph, n, np.ascontiguousarray(np.asarray(graph.weight(n.inputs[i]))[..., idx]), i)
    for n in ffn.between:
        if n.op == "reshape":
            n.attrs["shape"] = list(n.attrs["shape"][:-1]) + [new]
    ffn.size = new
    reinfer(graph, [p.linear for p in ffn.producers] + [c for p in ffn.producers for c in p.cut]
            + ffn.between + [ffn.down])
