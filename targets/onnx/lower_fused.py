"""ONNX lowering of the fused IR ops (edgec/ir/ops_fused.py) to ONNX Runtime contrib kernels.

- add_rms_norm -> com.microsoft.SkipSimplifiedLayerNormalization (outputs 0
  and 3: the normalized row and input+skip). No bias input: onnxruntime
  >= 1.19 leaves the bias out of the returned sum.
- rotary_cached -> com.microsoft.RotaryEmbedding on the [B, H, S, D] tensor
  with interleaved=0 (rotate-half, as transformers' Llama family),
  position_ids [B, S] and half-width cos/sin tables [P, R/2];
  rotary_embedding_dim=R covers partial rotary (GPT-NeoX, Phi, StableLM),
  which the kernel only accepts together with num_heads.
- split -> Split.

Plain rms_norm keeps lower_llm.py's primitive form: onnxruntime fuses it into
SimplifiedLayerNormalization at load, and emitting that op directly would
put a non-standard op in the default domain (onnx.checker rejects it).
Each lowering falls back to standard ops where the kernel's constraints do
not hold (non-fp32 tensors, other ranks).
"""
from __future__ import annotations

from onnx import helper

from edgec.ir import Node, Value

from .lower_context import LOWERINGS, OnnxContext, lowering

_F32 = "float32"


@lowering("add_rms_norm")
def _add_rms_norm(cx: OnnxContext, n: Node) -> None:
    x, skip, w = n.inputs
    normed, total = n.outputs
    if x.dtype == _F32 and x.rank in (2, 3):
        ins = [x.name, skip.name, cx.cast(w.name, w.dtype, _F32)]
        cx.nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", ins,
                                         [normed.name, "", "", total.name], name=cx.fresh("SkipSLN_node"),
                                         domain="com.microsoft", epsilon=float(n.attrs["eps"])))
        return
    cx.op("Add", x.name, skip.name, out=total.name)
    LOWERINGS.lower(cx, Node("rms_norm", [total, w], [normed], {"eps": n.attrs["eps"]}))


@lowering("rotary_cached")
def _rotary_cached(cx: OnnxContext, n: Node) -> None:
    x, pos, cos, sin = n.inputs
    r = 2 * int(cos.shape[1])
    p = pos.name if pos.dtype == "int64" else cx.cast(pos.name, pos.dtype, "int64")
    if x.dtype == _F32 and isinstance(x.shape[1], int):
        cx.op("RotaryEmbedding", x.name, p, cx.cast(cos.name, cos.dtype, _F32), cx.cast(sin.name, sin.dtype, _F32),
              out=n.output.name, domain="com.microsoft", interleaved=0, num_heads=int(x.shape[1]),
              rotary_embedding_dim=r)
        return
    # Standard ops: gather the rows, repeat them to full width, rotate as `rotary` does.
    full = []
    for t in (cos, sin):
        rows = cx.op("Gather", cx.cast(t.name, t.dtype, x.dtype), p, axis=0)  # [B, S, R/2]
        full.append(cx.op("Unsqueeze", cx.op("Concat", rows, rows, axis=-1), cx.ints([1])))
    shape = (x.shape[0], 1, x.shape[2], r)
    c, s = (Value(name, x.dtype, shape) for name in full)
    LOWERINGS.lower(cx, Node("rotary", [x, c, s], [n.output]))


@lowering("split")
def _split(cx: OnnxContext, n: Node) -> None:
    sizes = cx.ints([int(s) for s in n.attrs["sizes"]])
    cx.nodes.append(helper.make_node("Split", [n.inputs[0].name, sizes], [o.name for o in n.outputs],
                                     name=cx.fresh("Split_node"), axis=int(n.attrs["axis"])))
