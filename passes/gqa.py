"""Cached attention in ONNX Runtime's GroupQueryAttention form (a pre-lowering pass of the ONNX backend).

Every cached `attention` becomes `gqa` (q, k, v token-major: [1, S, heads*D])
or, where q, k and v are the three pieces of one merged QKV projection and q/k
are rotated by full-width `rotary_cached` tables at `position_ids`,
`gqa_packed`, which takes the projection output as is and rotates itself
(GQA's do_rotary): the split/reshape/permute/rotary nodes of each layer
become dead (`dce` after this pass removes them). The output is
[1, S, heads*D]; where the only reader is the reshape that merges the heads,
that reshape disappears too. All attentions of a graph take this form or
none does, because the runtime binds one cache layout (a shared buffer
GQA updates in place); what GQA cannot express (an int8 KV cache, no
position_ids input, head_dim of V != of K, other dtypes) keeps `attention`.
"""
from __future__ import annotations

from edgec.ir import Graph, Node, Value

from .registry import PassResult, register_pass

_DTYPES = ("float32", "float16")


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
    positions from seqlens_k, derived from those same position_ids), saving
    ~15 small ops per layer and step.
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


def merged_heads(graph: Graph, users, n: Node) -> Node | None:
    """The reshape [1, S, H, D] -> [1, S, H*D] that alone reads this attention's output, if any.

    GQA's output already is [1, S, H*D]: it takes the reshape's place, so no
    Reshape pair runs per layer and step.
    """
    out = n.outputs[0]
    readers = users.get(out, [])
    if len(readers) != 1 or readers[0].op != "reshape" or out in graph.outputs:
        return None
    r = readers[0]
    b, s, h, d = out.shape
    return r if list(r.output.shape) == [b, s, h * d] else None


def _token_major(graph: Graph, before: Node, x: Value) -> Value:
    """[1, heads, S, D] -> [1, S, heads*D] (GQA's query/key/value layout)."""
    t = graph.make_node("permute", [x], {"perm": [0, 2, 1, 3]})
    r = graph.make_node("reshape", [t.output], {"shape": [0, 0, int(x.shape[1]) * int(x.shape[3])]})
    graph.insert_before(before, t)
    graph.insert_before(before, r)
    return r.output


def _take_outputs(node: Node, values: list[Value]) -> None:
    """Give node's outputs the (same-typed) Values of the nodes it replaces: names and readers stay."""
    for i, v in enumerate(values):
        v.producer = node
        node.outputs[i] = v


@register_pass("gqa")
def gqa(graph: Graph) -> PassResult:
    """Cached attention -> gqa / gqa_packed (ONNX Runtime's GroupQueryAttention), all layers or none."""
    why = gqa_blocker(graph)
    attns = [n for n in graph.nodes if n.op == "attention"]
    if why is not None:
        return PassResult(f"kept {len(attns)} attentions ({why})", {"gqa": 0, "packed": 0, "merged_heads": 0})
    pos = next(v for v in graph.inputs if v.name == "position_ids")
    users = graph.users()
    packed = merged = 0
    for n in attns:
        q, k, v, pk, pv = n.inputs
        heads, d = int(q.shape[1]), int(q.shape[3])
        found = packed_qkv(n)
        if found is not None:
            qkv, cos, sin = found
            new = graph.make_node("gqa_packed", [qkv, pk, pv, pos, cos, sin], n.attrs)
            packed += 1
        else:
            ins = [_token_major(graph, n, x) for x in (q, k, v)]
            new = graph.make_node("gqa", [*ins, pk, pv, pos], n.attrs)
        graph.insert_before(n, new)
        reshape = merged_heads(graph, users, n)
        if reshape is not None:  # GQA's output takes the merging reshape's place
            _take_outputs(new, [reshape.output])
            graph.remove(reshape)
            merged += 1
        else:  # back to [1, S, heads, D] under the attention's output
            r = graph.make_node("reshape", [new.outputs[0]], {"shape": [0, 0, heads, d]})
            _take_outputs(r, [n.outputs[0]])
            graph.insert_before(n, r)
        _take_outputs(new, [new.outputs[0], *n.outputs[1:]])
        graph.remove(n)
    return PassResult(f"{len(attns)} attentions -> GroupQueryAttention ({packed} on the packed QKV, "
                      f"{merged} write the merged heads)", {"gqa": len(attns), "packed": packed, "merged_heads": merged})
