"""Lower `gqa` / `gqa_packed` (made by the `gqa` pre-lowering pass) to com.microsoft.GroupQueryAttention.

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

A model with GQA nodes says so by `metadata_props["edgec.kv_cache"] =
"shared_buffer"` (the pass rewrites all attentions of a graph or none).
IR window W (key j visible from query i iff j > i - W) is GQA's
local_window_size = W (checked against the interpreter in tests). Attention
sinks (one logit per query head) are GQA's `head_sink` input, typed as the
query: onnxruntime's CPU kernel adds exp(sink - m) to each row's softmax
denominator, m the row max taken with the sink, as the IR reference does.
"""
from __future__ import annotations

from onnx import TensorProto, helper

from edgec.ir import Node, Value

from .lower_context import INT64_MAX, OnnxContext, lowering

KV_LAYOUT_KEY = "edgec.kv_cache"
SHARED_BUFFER = "shared_buffer"
_HEAD_SINK = 11  # GroupQueryAttention's input index of head_sink


def _lengths(cx: OnnxContext, pos: Value) -> tuple[str, str]:
    """seqlens_k (int32 [1] = total - 1) and total_sequence_length (int32 scalar), once per graph."""
    state = cx.state(_lengths)
    if pos.name not in state:
        saved, cx.scope = cx.scope, "gqa"
        last = cx.slice(pos.name, 1, -1, INT64_MAX)  # [1, 1]: the last position = total - 1
        last = cx.op("Cast", last, to=TensorProto.INT32)
        seqlens = cx.op("Reshape", last, cx.ints([1]))
        total = cx.op("Reshape", cx.op("Add", last, cx.const(1, "int32")), cx.ints([]))
        state[pos.name] = (seqlens, total)
        cx.scope = saved
    return state[pos.name]


@lowering("gqa", "gqa_packed")
def _gqa(cx: OnnxContext, n: Node) -> None:
    cx.metadata[KV_LAYOUT_KEY] = SHARED_BUFFER
    out, present_k, present_v = n.outputs
    pk, pv = n.inputs[3:5] if n.op == "gqa" else n.inputs[1:3]
    kv_heads, d = int(pk.shape[1]), int(pk.shape[3])
    heads = int(out.shape[2]) // d
    a = n.attrs
    if n.op == "gqa":
        q, k, v, _, _, pos = n.inputs
        ins = [q.name, k.name, v.name, pk.name, pv.name, *_lengths(cx, pos)]
        rotary = {}
    else:  # packed QKV, q and k rotated by the kernel
        qkv, _, _, pos, cos, sin = n.inputs
        ins = [qkv.name, "", "", pk.name, pv.name, *_lengths(cx, pos),
               cx.cast(cos.name, cos.dtype, "float32"), cx.cast(sin.name, sin.dtype, "float32")]
        rotary = {"do_rotary": 1, "rotary_interleaved": 0}
    if a["sinks"]:  # input 11, after the optional cos/sin caches, position_ids and attention_bias
        ins += [""] * (_HEAD_SINK - len(ins)) + [cx.const(a["sinks"], out.dtype)]
    cx.nodes.append(helper.make_node(
        "GroupQueryAttention", ins, [out.name, present_k.name, present_v.name],
        name=cx.fresh("GroupQueryAttention_node"), domain="com.microsoft", num_heads=heads,
        kv_num_heads=kv_heads, scale=float(a["scale"]), softcap=float(a["softcap"]),
        local_window_size=int(a["window"]) if a["window"] else -1, **rotary))
