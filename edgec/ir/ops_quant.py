"""Quantization ops: weight-only dequantize, int8 rows, W8A8 linear.

Their layouts are edgec.ir.quant's (packed codes, group rule, int8 rows); the
references here call it, and so do the backends, so the format is stated once.
"""
from __future__ import annotations

import numpy as np

from .ops import REQUIRED, register
from .quant import SCALE_DTYPES, STORED_BITS, PackedLayout, dequantize, quantize_rows_int8


FLOATS = tuple(SCALE_DTYPES.values())


@register("dequantize", arity=(3, 4), attrs={"bits": REQUIRED, "group_size": REQUIRED, "k": REQUIRED})
def _dequantize():
    """dequantize(packed u8[N, Kp*bits/8], scales f32|f16[N, Kp/g], zeros u8[N, Kp/g], mins? f32|f16[N, Kp/g]) -> f32[N, K].

    The weight-only format of edgec.ir.quant: w = (q - zero) * scale (+ min) per
    group of `group_size` along K, rows padded to Kp = ceil(K/g)*g. A `linear`
    reading this is a quantized linear; backends lower the pair to their
    fused kernels (e.g. MatMulNBits). `mins` only comes from an imported
    quantized source (edgec/ir/ggml.py).
    """

    def infer(ins, a):
        packed, scales, zeros = ins[:3]
        if a["bits"] not in STORED_BITS:
            raise ValueError(f"dequantize: {a['bits']}-bit codes; the format holds {STORED_BITS}")
        lay = PackedLayout.of(a["bits"], a["group_size"], a["k"])
        if packed.dtype != "uint8" or zeros.dtype != "uint8":
            raise ValueError("dequantize: packed data and zeros must be uint8")
        if packed.shape[1] * 8 != lay.kp * lay.bits:
            raise ValueError(f"dequantize: packed width {packed.shape[1]} != Kp*bits/8 = {lay.kp * lay.bits / 8}")
        if tuple(scales.shape) != (packed.shape[0], lay.groups) or tuple(zeros.shape) != tuple(scales.shape):
            raise ValueError(f"dequantize: scales/zeros {scales.shape}/{zeros.shape} do not match "
                             f"[{packed.shape[0]}, {lay.kp}/{lay.group}]")
        if scales.dtype not in FLOATS:
            raise ValueError(f"dequantize: scales are {scales.dtype}; the format stores {FLOATS}")
        if len(ins) > 3 and (ins[3].dtype not in FLOATS or tuple(ins[3].shape) != tuple(scales.shape)):
            raise ValueError(f"dequantize: mins {ins[3].dtype}{ins[3].shape} must be float32 or float16 "
                             f"[N, groups] like scales")
        return [("float32", (packed.shape[0], lay.k))]

    def ref(packed, scales, zeros, mins=None, *, bits, group_size, k):
        return dequantize(packed, scales, zeros, bits, group_size, k, mins)

    return infer, ref


@register("quantize_rows", arity=(1, 1))
def _quantize_rows():
    """quantize_rows(x f32[..., D]) -> (q int8[..., D], scale f32[..., 1]): symmetric per-row int8."""

    def infer(ins, a):
        x = ins[0]
        return [("int8", x.shape), ("float32", tuple(x.shape[:-1]) + (1,))]

    def ref(x):
        return quantize_rows_int8(np.asarray(x, np.float32))

    return infer, ref


@register("dequantize_rows", arity=(2, 2))
def _dequantize_rows():
    """dequantize_rows(q int8[..., D], scale f32[..., 1]) -> f32[..., D] (inverse of quantize_rows)."""

    def infer(ins, a):
        return [("float32", ins[0].shape)]

    def ref(q, scale):
        return q.astype(np.float32) * scale

    return infer, ref


@register("linear_w8a8", arity=(3, 4))
def _linear_w8a8():
    """linear_w8a8(x f32[..., K], wq int8[N, K], w_scale f32[N], bias?) -> f32[..., N].

    W8A8: weights int8 per output channel, activations quantized per token
    (dynamic, symmetric int8) right here; the product is an int32 matmul.
    """

    def infer(ins, a):
        x, wq, ws = ins[:3]
        if wq.dtype != "int8" or x.shape[-1] != wq.shape[1] or tuple(ws.shape) != (wq.shape[0],):
            raise ValueError(f"linear_w8a8: x {x.shape}, wq {wq.dtype}{wq.shape}, w_scale {ws.shape}")
        return [(x.dtype, tuple(x.shape[:-1]) + (wq.shape[0],))]

    def ref(x, wq, w_scale, bias=None):
        xq, xs = quantize_rows_int8(np.asarray(x, np.float32))
        acc = np.matmul(xq.astype(np.int32), np.asarray(wq).T.astype(np.int32))
        y = acc.astype(np.float32) * xs * np.asarray(w_scale, np.float32)
        if bias is not None:
            y = y + np.asarray(bias, np.float32)
        return y.astype(x.dtype)

    return infer, ref
