"""Lower cached `attention` to com.microsoft.GroupQueryAttention (one fused kernel per layer).

GQA takes the past K/V in BNSH layout ([1, kv_heads, buffer, head_dim]) and
reads how many rows are valid from `seqlens_k` (total - 1) and
`total_sequence_length`, both computed here from `position_ids` (the runtime
contract: absolute positions, batch 1), so the ONNX signature stays the IR's.
That gives two ways to run the same model:

- plain `session.run` with a past of exactly `past` rows: present is a new
  tensor of past+seq rows, as in the IR (what `logits()` and tests use);
- IO binding with one preallocated buffer per K/V bound as both past_X and
  present_X ("past_present_share_buffer"): GQA writes the new rows in place
  and the buffer is never copied or grown (the runtime's decode loop).

The model says which by `metadata_props["edgec.kv_cache"] = "shared_buffer"`.
All attentions of a graph take this path or none does: the runtime binds one
layout. Anything GQA cannot express (int8 KV cache, no position_ids input,
head_dim of V != of K, other dtypes) keeps the primitive lowering.
IR window W (key j visible from query i iff j > i - W) is GQA's
local_window_size = W (checked against the interpreter in tests).
"""
from __future__ import annotations

from onnx import TensorProto, helper

from edgec.ir import Graph, Node, Value

from .lower import INT64_MAX, LOWERINGS, _Ctx, lowering

KV_LAYOUT_KEY = "edgec.kv_cache"
SHARED_BUFFER = "shared_buffer"
_DTYPES = ("float32", "float16")

_fallback = LOWERINGS["attention"]


def gqa_blocker(graph: Graph) -> str | None:
    """Why this graph's attentions cannot all become GroupQueryAttention (None: they can)."""
    pos = next((v for v in graph.inputs if v.name == "position_ids"), None)
    if pos is None or pos.rank != 2 or pos.dtype not in ("int64", "int32"):
        return "no [1, seq] position_ids input"
    attns = [n for n in graph.nodes if n.op == "attention"]
    if not attns:
        return "no attention"
    used = {v.name for n in graph.nodes for v in n.inputs}
    outputs = {v.name for v in graph.outputs}
    for n in attns:
        if len(n.inputs) != 5:
            return "attention without KV cache"
        q, k, v, pk, pv = n.inputs
        if pk.kind != "input" or pv.kind != "input":
            return "the past K/V is computed (e.g. an int8 cache)"
        if any(o.name in used or o.name not in outputs for o in n.outputs[1:]):
            return "present K/V is read inside the graph"
        if len({x.dtype for x in n.inputs}) != 1 or q.dtype not in _DTYPES:
            return f"dtypes {[x.dtype for x in n.inputs]}"
        dims = [q.shape[1], k.shape[1], q.shape[3], k.shape[3], v.shape[3], pk.shape[1], pk.shape[3]]
        if not all(isinstance(d, int) for d in dims) or len(set(dims[2:5] + dims[6:])) != 1 \
                or dims[1] != dims[5] or q.shape[0] != 1:
            return f"shapes q{q.shape} k{k.shape} v{v.shape} past{pk.shape}"
        if not n.attrs["scale"] > 0 or n.attrs["softcap"] < 0 or n.attrs["window"] < 0:
            return f"attributes {n.attrs}"
    return None


def _lengths(cx: _Ctx) -> tuple[str, str]:
    """seqlens_k (int32 [1] = total - 1) and total_sequence_length (int32 scalar), once per graph."""
    if not hasattr(cx, "_gqa_lengths"):
        saved, cx.scope = cx.scope, "gqa"
        pos = next(v for v in cx.graph.inputs if v.name == "position_ids")
        last = cx.slice(pos.name, 1, -1, INT64_MAX)  # [1, 1]: the last position = total - 1
        last = cx.op("Cast", last, to=TensorProto.INT32)
        seqlens = cx.op("Reshape", last, cx.ints([1]))
        total = cx.op("Reshape", cx.op("Add", last, cx.const(1, "int32")), cx.ints([]))
        cx._gqa_lengths = (seqlens, total)
        cx.scope = saved
    return cx._gqa_lengths


def _to_bsh(cx: _Ctx, name: str, width: int) -> str:
    """[1, heads, S, D] -> [1, S, heads*D] (GQA's query/key/value layout)."""
    return cx.op("Reshape", cx.op("Transpose", name, perm=[0, 2, 1, 3]), cx.ints([0, 0, width]))


def _heads_of(x: Value) -> tuple[Node, int] | None:
    """(split node, output index) if x = permute([0,2,1,3], reshape(split(...)[i])) (heads of a packed projection)."""
    p = x.producer
    if p is None or p.op != "permute" or list(p.attrs["perm"]) != [0, 2, 1, 3]:
        return None
    r = p.inputs[0].producer
    if r is None or r.op != "reshape":
        return None
    s = r.inputs[0].producer
    if s is None or s.op != "split" or s.inputs[0].rank != 3 or s.attrs["axis"] not in (-1, 2):
        return None
    return s, s.outputs.index(r.inputs[0])


def packed_qkv(n: Node) -> tuple[Value, Value, Value] | None:
    """(packed qkv, cos table, sin table) when GQA can take the QKV projection's output as is.

    That is: q, k and v are the three pieces, in order, of one split of a
    [1, S, (H + 2 KV) * D] tensor, reshaped to heads, and q and k are rotated
    by rotary_cached with the same full-width tables at the graph's
    position_ids. GQA then splits and rotates inside its kernel (do_rotary=1,
    positions from seqlens_k, which _lengths derives from those same
    position_ids), saving ~15 small ops per layer and step.
    """
    q, k, v = n.inputs[:3]
    rq, rk = q.producer, k.producer
    if rq is None or rk is None or rq.op != "rotary_cached" or rk.op != "rotary_cached":
        return None
    if rq.inputs[1:] != rk.inputs[1:] or rq.inputs[1].kind != "input" or rq.inputs[1].name != "position_ids":
        return None
    cos, sin = rq.inputs[2:]
    heads, kv_heads, d = q.shape[1], k.shape[1], q.shape[3]
    if 2 * int(cos.shape[1]) != d:  # partial rotary: GQA rotates the whole head
        return None
    pieces = [_heads_of(rq.inputs[0]), _heads_of(rk.inputs[0]), _heads_of(v)]
    if any(p is None for p in pieces) or len({id(p[0]) for p in pieces}) != 1 or [p[1] for p in pieces] != [0, 1, 2]:
        return None
    split = pieces[0][0]
    if [int(x) for x in split.attrs["sizes"]] != [heads * d, kv_heads * d, kv_heads * d]:
        return None
    return split.inputs[0], cos, sin


def _merged_heads(cx: _Ctx, n: Node) -> Node | None:
    """The reshape [1, S, H, D] -> [1, S, H*D] that alone reads this attention's output, if any.

    GQA's output already is [1, S, H*D]: lowering writes it under the reshape's
    name and claims the reshape, so no Reshape pair runs per layer and step.
    """
    out = n.outputs[0]
    users = cx.users(out)
    if len(users) != 1 or users[0].op != "reshape" or out in cx.graph.outputs:
        return None
    r = users[0]
    b, s, h, d = out.shape
    return r if list(r.output.shape) == [b, s, h * d] else None


@lowering("attention")
def _attention(cx: _Ctx, n: Node) -> None:
    if not hasattr(cx, "_gqa_ok"):
        cx._gqa_ok = gqa_blocker(cx.graph) is None
        if cx._gqa_ok:
            cx.metadata[KV_LAYOUT_KEY] = SHARED_BUFFER
    if not cx._gqa_ok:
        return _fallback(cx, n)
    q, k, v, pk, pv = n.inputs
    heads, kv_heads, d = q.shape[1], k.shape[1], q.shape[3]
    a = n.attrs
    seqlens, total = _lengths(cx)
    merged = _merged_heads(cx, n)
    out = merged.output.name if merged is not None else cx.fresh("gqa_out")
    packed = packed_qkv(n)
    if packed is not None:  # the split/reshape/permute/rotary nodes are left dead and pruned by lower_graph
        qkv, cos, sin = packed
        ins = [qkv.name, "", "", pk.name, pv.name, seqlens, total,
               cx.cast(cos.name, cos.dtype, "float32"), cx.cast(sin.name, sin.dtype, "float32")]
        rotary = {"do_rotary": 1, "rotary_interleaved": 0}
    else:
        ins = [_to_bsh(cx, q.name, heads * d), _to_bsh(cx, k.name, kv_heads * d),
               _to_bsh(cx, v.name, kv_heads * d), pk.name, pv.name, seqlens, total]
        rotary = {}
    cx.nodes.append(helper.make_node(
        "GroupQueryAttention", ins,
        [out, n.outputs[1].name, n.outputs[2].name], name=cx.fresh("GroupQueryAttention_node"),
        domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, scale=float(a["scale"]),
        softcap=float(a["softcap"]), local_window_size=int(a["window"]) if a["window"] else -1, **rotary))
    if merged is not None:
        cx.claimed.add(id(merged))
    else:
        cx.op("Reshape", out, cx.ints([0, 0, heads, d]), out=n.outputs[0].name)
