"""ONNX lowering of weight-only quantized linears (edgec.ir.quant's format).

`linear(x, dequantize(packed, scales, zeros), bias?)` becomes one
com.microsoft.MatMulNBits: onnxruntime's fused low-bit matmul, which keeps
the weights packed in memory and, at accuracy_level 4, computes with int8
activations (VNNI / NEON dot products) - about 4x faster than fp32 per
decoded token on this machine's CPU.

What onnxruntime 1.31's CPU kernel takes (checked): bits 2, 4, 8;
block_size 16, 32, 64, 128, 256; B as [N, K/block, block*bits/8] uint8;
scales [N*K/block] float; zero points packed like B (default 2**(bits-1));
an optional bias; K need not be a multiple of block (the last block is
partial, like edgec's padded last group). We map onto it exactly:
- group size g -> the largest supported block b dividing g, with each
  group's scale and zero point repeated g/b times (so per-channel int8 with
  K = 576 runs as 64-blocks);
- 3-bit codes are re-packed to 4-bit nibbles (the codes and zero points fit
  unchanged), so 3-bit runs on the 4-bit kernel with a 4-bit memory footprint
  while the artifact stays 3-bit.
All re-shaping and re-packing is done with standard ONNX ops on the stored
initializers; onnxruntime constant-folds them when the session loads, so
they cost load time only. Anything else (g not a multiple of 16, 8-bit
with fp32 compute, a dequantized weight read by something other than a
linear or an embedding) lowers `dequantize` itself to standard integer ops,
folded to fp32 at load. An embedding reading a quantized (tied) table
gathers the packed rows and dequantizes only those.

accuracy_level comes from graph.meta["matmul_nbits_accuracy_level"] (default
4: int8 compute; 0 computes in fp32 and matches the interpreter to ~1e-5).
"""
from __future__ import annotations

import numpy as np

from edgec.ir import Node, Value
from edgec.ir.quant import padded_k

from .lower import LOWERINGS, _Ctx, lowering

KERNEL_BITS = {2: 2, 3: 4, 4: 4, 8: 8}  # stored bits -> MatMulNBits bits
BLOCK_SIZES = (256, 128, 64, 32, 16)
DEFAULT_ACCURACY_LEVEL = 4
_base_linear = LOWERINGS["linear"]
_base_embedding = LOWERINGS["embedding"]


def _group(dq: Node) -> int:
    g, k = dq.attrs["group_size"], dq.attrs["k"]
    return k if g in (0, -1) else min(g, k)


def _stored_k(dq: Node) -> int:
    """Columns per stored row: K padded to whole groups (MatMulNBits pads its last block the same way)."""
    return padded_k(dq.attrs["k"], _group(dq))


def _level(cx: _Ctx) -> int:
    return int(cx.graph.meta.get("matmul_nbits_accuracy_level", DEFAULT_ACCURACY_LEVEL))


def _plan(dq: Node, level: int) -> tuple[int, int] | None:
    """(kernel bits, block size) for MatMulNBits, or None when the kernel cannot express it (or runs it slowly).

    onnxruntime 1.31's 8-bit kernel has a fast path only for accuracy_level 4
    (int8 activations); with fp32 compute it dequantizes the whole weight on
    every call (measured: 6 ms instead of 0.03 ms for a 1536 x 576 linear at
    batch 1), so 8-bit at levels 0-3 takes the standard-op path, whose
    dequantization onnxruntime folds into fp32 weights once, at load.
    """
    if dq.op != "dequantize" or any(v.kind != "weight" for v in dq.inputs):
        return None
    if dq.attrs["bits"] == 8 and level < 4:
        return None
    g, k = _group(dq), dq.attrs["k"]
    block = next((b for b in BLOCK_SIZES if g % b == 0), None)
    if block is None or _stored_k(dq) // block != -(-k // block):  # padding wider than one partial block
        return None
    return KERNEL_BITS[dq.attrs["bits"]], block


def _fusable(n: Node, level: int) -> tuple[int, int] | None:
    """The MatMulNBits plan if linear n reads a dequantized weight the kernel can take directly."""
    if n.op != "linear":
        return None
    x, w = n.inputs[:2]
    dq = w.producer
    if dq is None or x.dtype != "float32" or x is w or not isinstance(w.shape[1], int):
        return None
    if len(n.inputs) > 2 and n.inputs[2].dtype != "float32":
        return None
    return _plan(dq, level)


def _gatherable(n: Node) -> bool:
    """True if embedding n looks up rows of a stored quantized table (a tied, quantized lm_head)."""
    if n.op != "embedding":
        return False
    dq = n.inputs[0].producer
    return dq is not None and dq.op == "dequantize" and all(v.kind == "weight" for v in dq.inputs)


def _users(cx: _Ctx) -> dict[Value, list[Node]]:
    if getattr(cx, "_quant_users", None) is None:
        cx._quant_users = cx.graph.users()
    return cx._quant_users


# ----------------------------------------------------------------------------- bit twiddling
def _unpack_codes(cx: _Ctx, packed: str, bits: int, n: int, k: int) -> str:
    """uint8 [N, K*bits/8] little-endian bit stream -> int64 codes [N, K].

    Every run of c = bits/gcd(bits, 8) bytes holds v = 8c/bits whole codes: read
    it as one integer, then code j = (word // 2**(bits*j)) % 2**bits.
    """
    c = bits // np.gcd(bits, 8)
    v = 8 * c // bits
    word = cx.op("Cast", cx.op("Reshape", packed, cx.ints([n, k // v, c])), to=7)  # int64
    if c > 1:
        word = cx.op("ReduceSum", cx.op("Mul", word, cx.ints(256 ** np.arange(c))), cx.ints([-1]), keepdims=1)
    codes = cx.op("Mod", cx.op("Div", word, cx.ints((1 << bits) ** np.arange(v))), cx.ints([1 << bits]))
    return cx.op("Reshape", codes, cx.ints([n, k]))


def _pack_codes(cx: _Ctx, codes: str, bits: int, n: int, m: int) -> str:
    """int64 codes [N, M] (M a multiple of 8/bits) -> uint8 [N, M*bits/8], low bits first (bits 2 or 4)."""
    v = 8 // bits
    grouped = cx.op("Reshape", codes, cx.ints([n, m // v, v]))
    summed = cx.op("ReduceSum", cx.op("Mul", grouped, cx.ints((1 << bits) ** np.arange(v))), cx.ints([-1]),
                   keepdims=0)
    return cx.op("Cast", summed, to=2)  # uint8


def _repeat_cols(cx: _Ctx, t: str, n: int, cols: int, r: int) -> str:
    """[N, cols] -> [N, cols*r], each column repeated r times (one group -> r kernel blocks)."""
    if r == 1:
        return t
    t = cx.op("Expand", cx.op("Unsqueeze", t, cx.ints([2])), cx.ints([n, cols, r]))
    return cx.op("Reshape", t, cx.ints([n, cols * r]))


# ----------------------------------------------------------------------------- lowerings
@lowering("linear")
def _linear(cx: _Ctx, n: Node) -> None:
    plan = _fusable(n, _level(cx))
    if plan is None:
        _base_linear(cx, n)
        return
    x, w = n.inputs[:2]
    dq = w.producer
    packed, scales, zeros = dq.inputs
    bits, (kbits, block) = dq.attrs["bits"], plan
    rows, k = int(w.shape[0]), int(w.shape[1])
    g, kp = _group(dq), _stored_k(dq)
    groups, r = kp // g, g // block
    blocks = kp // block

    if kbits == bits:
        b = packed.name
    else:  # 3-bit codes widened to 4-bit nibbles
        b = _pack_codes(cx, _unpack_codes(cx, packed.name, bits, rows, kp), kbits, rows, kp)
    b = cx.op("Reshape", b, cx.ints([rows, blocks, block * kbits // 8]))
    s = cx.op("Reshape", _repeat_cols(cx, scales.name, rows, groups, r), cx.ints([-1]))

    z = ""
    if not np.all(np.asarray(cx.graph.weights[zeros.name]) == 1 << (kbits - 1)):  # else the kernel's default
        zt = _repeat_cols(cx, zeros.name, rows, groups, r)
        if kbits < 8:
            per = 8 // kbits
            padded = blocks + (-blocks) % per
            zt = cx.op("Cast", zt, to=7)
            if padded != blocks:
                zt = cx.op("Pad", zt, cx.ints([0, 0, 0, padded - blocks]))
            zt = _pack_codes(cx, zt, kbits, rows, padded)
        z = cx.op("Reshape", zt, cx.ints([-1]))

    ins = [x.name, b, s, z]
    if len(n.inputs) > 2:
        ins += ["", n.inputs[2].name]  # g_idx unused
    while ins[-1] == "":
        ins.pop()
    level = _level(cx)
    cx.op("MatMulNBits", *ins, out=n.output.name, domain="com.microsoft", K=k, N=rows, bits=kbits,
          block_size=block, accuracy_level=level)


@lowering("embedding")
def _embedding(cx: _Ctx, n: Node) -> None:
    """Rows of a quantized table: gather the packed rows, scales and zeros, dequantize only those.

    Per token this touches one row instead of folding the whole table to fp32
    at load (which would cost V*K*4 bytes of RAM for a tied embedding).
    """
    if not _gatherable(n):
        _base_embedding(cx, n)
        return
    dq, ids = n.inputs[0].producer, n.inputs[1]
    packed, scales, zeros = dq.inputs
    bits, k = dq.attrs["bits"], dq.attrs["k"]
    g, kp = _group(dq), _stored_k(dq)
    idx = ids.name if ids.dtype in ("int32", "int64") else cx.cast(ids.name, ids.dtype, "int64")
    flat = cx.op("Reshape", idx, cx.ints([-1]))
    rows = cx.op("Gather", packed.name, flat, axis=0)
    q = cx.op("Cast", rows if bits == 8 else _unpack_codes(cx, rows, bits, -1, kp), to=1)
    q = cx.op("Reshape", q, cx.ints([-1, kp // g, g]))
    z = cx.op("Unsqueeze", cx.op("Cast", cx.op("Gather", zeros.name, flat, axis=0), to=1), cx.ints([2]))
    s = cx.op("Unsqueeze", cx.op("Gather", scales.name, flat, axis=0), cx.ints([2]))
    w = cx.op("Reshape", cx.op("Mul", cx.op("Sub", q, z), s), cx.ints([-1, kp]))
    if kp != k:
        w = cx.op("Slice", w, cx.ints([0]), cx.ints([k]), cx.ints([1]))
    shape = cx.op("Concat", cx.op("Shape", idx), cx.ints([k]), axis=0)
    cx.op("Reshape", w, shape, out=n.output.name)


@lowering("dequantize")
def _dequantize(cx: _Ctx, n: Node) -> None:
    """Nothing when every reader is a MatMulNBits linear or a row lookup; otherwise standard integer ops."""
    out = n.output
    readers = _users(cx).get(out, [])
    if readers and out not in cx.graph.outputs and all(
            (u.inputs[1] is out and out not in (u.inputs[:1] + u.inputs[2:]) and _fusable(u, _level(cx)))
            or (_gatherable(u) and u.inputs[1] is not out) for u in readers):
        return
    packed, scales, zeros = n.inputs
    bits, k = n.attrs["bits"], n.attrs["k"]
    rows = int(out.shape[0])
    g, kp = _group(n), _stored_k(n)
    if bits == 8:
        q = cx.op("Cast", packed.name, to=1)
    else:
        q = cx.op("Cast", _unpack_codes(cx, packed.name, bits, rows, kp), to=1)
    q = cx.op("Reshape", q, cx.ints([rows, kp // g, g]))
    zf = cx.op("Unsqueeze", cx.op("Cast", zeros.name, to=1), cx.ints([2]))
    w = cx.op("Mul", cx.op("Sub", q, zf), cx.op("Unsqueeze", scales.name, cx.ints([2])))
    if kp == k:
        cx.op("Reshape", w, cx.ints([rows, k]), out=out.name)
    else:  # drop the padding of the last group
        w = cx.op("Reshape", w, cx.ints([rows, kp]))
        cx.op("Slice", w, cx.ints([0]), cx.ints([k]), cx.ints([1]), out=out.name)
