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
  while the artifact stays 3-bit; 5- and 6-bit codes (imported ggml blocks)
  likewise run on the 8-bit kernel;
- a float minimum per group (ggml's Q4_1, Q5_1, Q4_K, Q5_K) is the kernel with
  the integer zero points plus, per block of the input, its sum times the
  minima: y += ReduceSum(x per group) @ mins^T, one [K/g x N] MatMul. The
  kernel's float zero points would be exact too but run ~30x slower on
  onnxruntime 1.32's CPU kernel.
All re-shaping and re-packing is done with standard ONNX ops on the stored
initializers; onnxruntime constant-folds them when the session loads, so
they cost load time only. Anything else (g not a multiple of 16, 8-bit
with fp32 compute, a dequantized weight read by something other than a
linear or an embedding) lowers `dequantize` itself to standard integer ops,
folded to fp32 at load. An embedding reading a quantized (tied) table
gathers the packed rows and dequantizes only those, and so do quantized
MoE experts (reshape(dequantize(...)) read by a moe op): the moe lowering
gathers the routed experts' packed rows (gathered_experts).

accuracy_level is the backend option of that name (lower_graph's argument; default
4: int8 compute; 0 computes in fp32 and matches the interpreter to ~1e-5).
Which stored form feeds a linear is edgec.ir.weight_source's answer, the
layout (groups, padding, bit order) edgec.ir.quant's; where MatMulNBits or
the row gather does not apply, `linear` and `embedding` fall back to
lower_llm.py's standard-op lowerings (named as their fallbacks).
"""
from __future__ import annotations

import numpy as np

from edgec.ir import Node
from edgec.ir.quant import PackedLayout, word
from edgec.ir.weight_source import WeightSource, weight_source

from .lower_context import OnnxContext, lowering
from .lower_llm import _embedding as _embedding_gather
from .lower_generic import _reshape as _reshape_generic
from .lower_llm import _linear as _linear_matmul

KERNEL_BITS = {2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 8: 8}  # stored bits -> MatMulNBits bits
BLOCK_SIZES = (256, 128, 64, 32, 16)
DEFAULT_ACCURACY_LEVEL = 4


def _level(cx: OnnxContext) -> int:
    return DEFAULT_ACCURACY_LEVEL if cx.accuracy_level is None else int(cx.accuracy_level)


def _packed(v) -> WeightSource | None:
    """v's packed stored form (dequantize of stored codes, scales and zeros), if it has one."""
    src = weight_source(v)
    return src if src is not None and src.form == "packed" else None


def _plan(lay: PackedLayout, level: int) -> tuple[int, int] | None:
    """(kernel bits, block size) for MatMulNBits, or None when the kernel cannot express it (or runs it slowly).

    onnxruntime 1.31's 8-bit kernel has a fast path only for accuracy_level 4
    (int8 activations); with fp32 compute it dequantizes the whole weight on
    every call (measured: 6 ms instead of 0.03 ms for a 1536 x 576 linear at
    batch 1), so 8-bit at levels 0-3 takes the standard-op path, whose
    dequantization onnxruntime folds into fp32 weights once, at load.
    """
    if KERNEL_BITS[lay.bits] == 8 and level < 4:
        return None
    block = next((b for b in BLOCK_SIZES if lay.group % b == 0), None)
    if block is None or lay.kp // block != -(-lay.k // block):  # padding wider than one partial block
        return None
    return KERNEL_BITS[lay.bits], block


def _fusable(n: Node, level: int) -> tuple[WeightSource, tuple[int, int]] | None:
    """(weight source, MatMulNBits plan) if linear n reads a packed weight the kernel can take directly."""
    if n.op != "linear":
        return None
    x, w = n.inputs[:2]
    src = _packed(w)
    if src is None or x.dtype != "float32" or x is w or not isinstance(w.shape[1], int):
        return None
    if len(n.inputs) > 2 and n.inputs[2].dtype != "float32":
        return None
    plan = _plan(src.layout, level)
    return None if plan is None else (src, plan)


def _gatherable(n: Node) -> bool:
    """True if embedding n looks up rows of a stored quantized table (a tied, quantized lm_head)."""
    return n.op == "embedding" and _packed(n.inputs[0]) is not None


# ----------------------------------------------------------------------------- bit twiddling
def _unpack_codes(cx: OnnxContext, packed: str, bits: int, n: int, k: int) -> str:
    """uint8 [N, K*bits/8] little-endian bit stream -> int64 codes [N, K].

    Every run of c bytes holds v whole codes (edgec.ir.quant.word): read it as
    one integer, then code j = (word // 2**(bits*j)) % 2**bits.
    """
    c, v = word(bits)
    words = cx.op("Cast", cx.op("Reshape", packed, cx.ints([n, k // v, c])), to=7)  # int64
    if c > 1:
        words = cx.op("ReduceSum", cx.op("Mul", words, cx.ints(256 ** np.arange(c))), cx.ints([-1]), keepdims=1)
    codes = cx.op("Mod", cx.op("Div", words, cx.ints((1 << bits) ** np.arange(v))), cx.ints([1 << bits]))
    return cx.op("Reshape", codes, cx.ints([n, k]))


def _pack_codes(cx: OnnxContext, codes: str, bits: int, n: int, m: int) -> str:
    """int64 codes [N, M] (M a multiple of 8/bits) -> uint8 [N, M*bits/8], low bits first (bits 2 or 4)."""
    _, v = word(bits)
    grouped = cx.op("Reshape", codes, cx.ints([n, m // v, v]))
    summed = cx.op("ReduceSum", cx.op("Mul", grouped, cx.ints((1 << bits) ** np.arange(v))), cx.ints([-1]),
                   keepdims=0)
    return cx.op("Cast", summed, to=2)  # uint8


def _repeat_cols(cx: OnnxContext, t: str, n: int, cols: int, r: int) -> str:
    """[N, cols] -> [N, cols*r], each column repeated r times (one group -> r kernel blocks)."""
    if r == 1:
        return t
    t = cx.op("Expand", cx.op("Unsqueeze", t, cx.ints([2])), cx.ints([n, cols, r]))
    return cx.op("Reshape", t, cx.ints([n, cols * r]))


def _f32(cx: OnnxContext, v) -> str:
    """A float32 name for stored scales or minima: float16 ones (edgec.ir.quant) are widened by a Cast
    of the initializer, which onnxruntime folds at load, so the file keeps them at 2 bytes."""
    return v.name if v.dtype == "float32" else cx.op("Cast", v.name, to=1)


# ----------------------------------------------------------------------------- lowerings
@lowering("linear", fallback=_linear_matmul)
def _linear(cx: OnnxContext, n: Node):
    level = _level(cx)
    fusable = _fusable(n, level)
    if fusable is None:
        return NotImplemented
    src, (kbits, block) = fusable
    x, w = n.inputs[:2]
    packed, scales, zeros = src.stored[:3]
    lay, bits = src.layout, src.layout.bits
    rows, k = int(w.shape[0]), lay.k
    kp, groups, r = lay.kp, lay.groups, lay.group // block
    blocks = kp // block

    if kbits == bits:
        b = packed.name
    elif kbits == 8:  # 5- and 6-bit codes widened to bytes
        b = cx.op("Cast", _unpack_codes(cx, packed.name, bits, rows, kp), to=2)
    else:  # 3-bit codes widened to 4-bit nibbles
        b = _pack_codes(cx, _unpack_codes(cx, packed.name, bits, rows, kp), kbits, rows, kp)
    b = cx.op("Reshape", b, cx.ints([rows, blocks, block * kbits // 8]))
    sname = _f32(cx, scales)
    s = cx.op("Reshape", _repeat_cols(cx, sname, rows, groups, r), cx.ints([-1]))

    z, mins = "", None if src.mins is None else _f32(cx, src.mins)
    zero_values = np.asarray(cx.graph.weights[zeros.name])
    default_zero = 1 << (kbits - 1)
    if mins is not None and (zero_values == zero_values.flat[0]).all() and zero_values.flat[0] != default_zero:
        # (q - z0)*s + m == (q - default)*s + (m + (default - z0)*s): the kernel's default zero
        # point (no zero-point tensor to read) with the difference moved into the minima
        shift = cx.const(default_zero - int(zero_values.flat[0]), "float32")
        mins = cx.op("Add", mins, cx.op("Mul", sname, shift))
    elif not np.all(zero_values == default_zero):  # else the kernel's default
        zt = _repeat_cols(cx, zeros.name, rows, groups, r)
        if kbits < 8:
            _, per = word(kbits)  # zero points per byte
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
    y = n.output.name if mins is None else cx.fresh(f"{n.output.name}.nbits")
    cx.op("MatMulNBits", *ins, out=y, domain="com.microsoft", K=k, N=rows, bits=kbits,
          block_size=block, accuracy_level=level)
    if mins is not None:
        cx.op("Add", y, _min_term(cx, x, mins, lay, rows), out=n.output.name)


def _min_term(cx: OnnxContext, x, mins: str, lay: PackedLayout, rows: int) -> str:
    """sum_k x[..., k] * min[n, k // g]: each group's input sum times the minima, [..., N]."""
    xin = x.name
    rank = len(x.shape)
    if lay.kp != lay.k:  # zero input columns for the padding (so the sums are over real columns)
        xin = cx.op("Pad", xin, cx.ints([0] * rank + [0] * (rank - 1) + [lay.kp - lay.k]))
    grouped = cx.op("Reshape", xin, cx.ints([0] * (rank - 1) + [lay.groups, lay.group]))
    sums = cx.op("ReduceSum", grouped, cx.ints([-1]), keepdims=0)  # [..., K/g]
    return cx.op("MatMul", sums, cx.op("Transpose", mins, perm=[1, 0]))  # @ [K/g, N]


def _dequantized_rows(cx: OnnxContext, src: WeightSource, rows: str) -> str:
    """float32 [len(rows), K]: the stored rows `rows` (int64, flat) of a packed weight, gathered packed and
    dequantized (only those rows are ever widened)."""
    packed, scales, zeros = src.stored[:3]
    lay = src.layout
    bits, k, g, kp = lay.bits, lay.k, lay.group, lay.kp
    taken = cx.op("Gather", packed.name, rows, axis=0)
    q = cx.op("Cast", taken if bits == 8 else _unpack_codes(cx, taken, bits, -1, kp), to=1)
    q = cx.op("Reshape", q, cx.ints([-1, kp // g, g]))
    z = cx.op("Unsqueeze", cx.op("Cast", cx.op("Gather", zeros.name, rows, axis=0), to=1), cx.ints([2]))
    s = cx.op("Unsqueeze", _widen_rows(cx, scales, rows), cx.ints([2]))
    w = cx.op("Mul", cx.op("Sub", q, z), s)
    if src.mins is not None:
        w = cx.op("Add", w, cx.op("Unsqueeze", _widen_rows(cx, src.mins, rows), cx.ints([2])))
    w = cx.op("Reshape", w, cx.ints([-1, kp]))
    return w if kp == k else cx.op("Slice", w, cx.ints([0]), cx.ints([k]), cx.ints([1]))


@lowering("embedding", fallback=_embedding_gather)
def _embedding(cx: OnnxContext, n: Node):
    """Rows of a quantized table: gather the packed rows, scales and zeros, dequantize only those.

    Per token this touches one row instead of folding the whole table to fp32
    at load (which would cost V*K*4 bytes of RAM for a tied embedding).
    """
    src = _packed(n.inputs[0])
    if src is None:
        return NotImplemented
    ids = n.inputs[1]
    idx = ids.name if ids.dtype in ("int32", "int64") else cx.cast(ids.name, ids.dtype, "int64")
    w = _dequantized_rows(cx, src, cx.op("Reshape", idx, cx.ints([-1])))
    shape = cx.op("Concat", cx.op("Shape", idx), cx.ints([src.layout.k]), axis=0)
    cx.op("Reshape", w, shape, out=n.output.name)


# ----------------------------------------------------------------------------- MoE experts
def _packed_experts(v) -> WeightSource | None:
    """The packed source of quantized MoE experts: v = reshape(dequantize(...)) to [E, R, K]
    (passes/quantize.py's quantize_experts)."""
    p = v.producer
    return _packed(p.inputs[0]) if p is not None and p.op == "reshape" and v.rank == 3 else None


def _expert_view(cx: OnnxContext, n: Node) -> bool:
    """n is the reshape that makes packed expert rows [E, R, K], read only by moe ops' expert inputs."""
    readers = cx.users(n.output)
    return (n.op == "reshape" and _packed_experts(n.output) is not None and bool(readers)
            and all(u.op == "moe" and n.output in u.inputs[2:4] and n.output not in u.inputs[:2] for u in readers)
            and n.output not in cx.graph.outputs)


def gathered_experts(cx: OnnxContext, v, index: str) -> str:
    """float [..., R, K]: the experts `index` [...] (int64) picks from v [E, R, K]; quantized experts are
    gathered packed and only the picked ones dequantized."""
    src = _packed_experts(v)
    if src is None:
        return cx.op("Gather", v.name, index, axis=0)
    rows_per = int(v.shape[1])
    first = cx.op("Mul", cx.op("Unsqueeze", index, cx.ints([-1])), cx.ints([rows_per]))
    rows = cx.op("Reshape", cx.op("Add", first, cx.ints(np.arange(rows_per))), cx.ints([-1]))
    w = _dequantized_rows(cx, src, rows)                                     # [n*R, K]
    shape = cx.op("Concat", cx.op("Shape", index), cx.ints([rows_per, src.layout.k]), axis=0)
    return cx.op("Reshape", w, shape)


@lowering("reshape", fallback=_reshape_generic)
def _reshape(cx: OnnxContext, n: Node):
    """Nothing for the view of packed expert rows: the moe lowering gathers the packed rows itself."""
    return None if _expert_view(cx, n) else NotImplemented


def _widen_rows(cx: OnnxContext, v, rows: str) -> str:
    """Rows of stored scales or minima, as float32 (gathered first: only those rows are widened)."""
    g = cx.op("Gather", v.name, rows, axis=0)
    return g if v.dtype == "float32" else cx.op("Cast", g, to=1)


@lowering("dequantize")
def _dequantize(cx: OnnxContext, n: Node) -> None:
    """Nothing when every reader is a MatMulNBits linear or a row lookup; otherwise standard integer ops."""
    out = n.output
    readers = cx.users(out)
    if readers and out not in cx.graph.outputs and all(
            _expert_view(cx, u)
            or (u.inputs[1] is out and out not in (u.inputs[:1] + u.inputs[2:]) and _fusable(u, _level(cx)))
            or (_gatherable(u) and u.inputs[1] is not out) for u in readers):
        return
    packed, scales, zeros = n.inputs[:3]
    lay = PackedLayout.of(n.attrs["bits"], n.attrs["group_size"], n.attrs["k"])
    bits, k, g, kp = lay.bits, lay.k, lay.group, lay.kp
    rows = int(out.shape[0])
    if bits == 8:
        q = cx.op("Cast", packed.name, to=1)
    else:
        q = cx.op("Cast", _unpack_codes(cx, packed.name, bits, rows, kp), to=1)
    q = cx.op("Reshape", q, cx.ints([rows, kp // g, g]))
    zf = cx.op("Unsqueeze", cx.op("Cast", zeros.name, to=1), cx.ints([2]))
    w = cx.op("Mul", cx.op("Sub", q, zf), cx.op("Unsqueeze", _f32(cx, scales), cx.ints([2])))
    if len(n.inputs) > 3:
        w = cx.op("Add", w, cx.op("Unsqueeze", _f32(cx, n.inputs[3]), cx.ints([2])))
    if kp == k:
        cx.op("Reshape", w, cx.ints([rows, k]), out=out.name)
    else:  # drop the padding of the last group
        w = cx.op("Reshape", w, cx.ints([rows, kp]))
        cx.op("Slice", w, cx.ints([0]), cx.ints([k]), cx.ints([1]), out=out.name)
