"""The closed op registry.

Every op declares its attributes (with defaults), shape/dtype inference over
symbolic shapes, and a numpy reference implementation. The interpreter runs
the references; backends lower each op; the verifier re-runs inference.

Conventions: attention tensors are [batch, heads, seq, head_dim]; `linear`
weights are [out_features, in_features] like torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import shapes as S
from .quant import quantize_rows_int8  # noqa: F401 - re-exported for importers of edgec.ir.ops

REQUIRED = object()


@dataclass
class OpDef:
    name: str
    infer: Callable  # (inputs: list[Value], attrs) -> list[(dtype, shape)]
    ref: Callable  # (*arrays, **attrs) -> array | tuple[array, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    arity: tuple[int, int] = (1, 1)  # min, max number of inputs
    doc: str = ""

    def complete_attrs(self, attrs: dict) -> dict:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ValueError(f"op {self.name}: unknown attributes {sorted(unknown)}")
        out = {}
        for k, default in self.attrs.items():
            if k in attrs:
                out[k] = attrs[k]
            elif default is REQUIRED:
                raise ValueError(f"op {self.name}: missing attribute {k!r}")
            else:
                out[k] = default
        return out


_REGISTRY: dict[str, OpDef] = {}


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown IR op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)


def register(name: str, *, arity=(1, 1), attrs=None, doc=""):
    """Decorator over a pair (infer, ref) returned by the decorated factory."""

    def deco(factory):
        infer, ref = factory()
        _REGISTRY[name] = OpDef(name, infer, ref, dict(attrs or {}), arity, doc or factory.__doc__ or "")
        return factory

    return deco


def _norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis % rank


# ---------------------------------------------------------------- constants
@register("const", arity=(0, 0), attrs={"value": REQUIRED, "dtype": REQUIRED})
def _const():
    """A small literal tensor (scalars, short lists) kept inline in the graph."""

    def infer(ins, a):
        return [(a["dtype"], np.asarray(a["value"]).shape)]

    def ref(value, dtype):
        return np.asarray(value, dtype=dtype)

    return infer, ref


# ---------------------------------------------------------------- elementwise
def _binary(fn):
    def factory():
        def infer(ins, a):
            x, y = ins
            if x.dtype != y.dtype:
                raise ValueError(f"dtype mismatch {x.dtype} vs {y.dtype}")
            return [(x.dtype, S.broadcast(x.shape, y.shape))]

        def ref(x, y):
            return fn(x, y).astype(x.dtype, copy=False)

        return infer, ref

    return factory


for _name, _fn in {"add": np.add, "sub": np.subtract, "mul": np.multiply,
                   "div": np.divide, "pow": np.power, "maximum": np.maximum}.items():
    register(_name, arity=(2, 2), doc=f"elementwise {_name} with broadcasting")(_binary(_fn))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x ** 3)))


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return _gelu_tanh(x)
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def _silu(x):
    return x / (1.0 + np.exp(-x))


UNARY = {
    "neg": np.negative, "sqrt": np.sqrt, "rsqrt": lambda x: 1.0 / np.sqrt(x), "exp": np.exp,
    "tanh": np.tanh, "sin": np.sin, "cos": np.cos, "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)), "silu": _silu,
}


def _unary(fn):
    def factory():
        def infer(ins, a):
            return [(ins[0].dtype, ins[0].shape)]

        def ref(x):
            return np.asarray(fn(x)).astype(x.dtype, copy=False)

        return infer, ref

    return factory


for _name, _fn in UNARY.items():
    register(_name, doc=f"elementwise {_name}")(_unary(_fn))


@register("gelu", attrs={"approximate": "none"})
def _gelu_op():
    """GELU; approximate='tanh' is gelu_new / gelu_pytorch_tanh."""

    def infer(ins, a):
        return [(ins[0].dtype, ins[0].shape)]

    def ref(x, approximate):
        return _gelu(x, approximate).astype(x.dtype)

    return infer, ref


def _check_threshold(op: str, t) -> None:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ValueError(f"{op}: threshold must be a finite number >= 0, got {t!r}")


def keep_above(x: np.ndarray, threshold: float) -> np.ndarray:
    """x where |x| > threshold, else 0. |x| is compared in float32, the threshold's type in every backend
    (a float16 comparison would round the threshold)."""
    return np.where(np.abs(x).astype(np.float32, copy=False) > np.float32(threshold), x, np.zeros((), x.dtype))


@register("sparsify", attrs={"threshold": REQUIRED})
def _sparsify():
    """x where |x| > threshold else 0: TEAL's magnitude sparsity on the input of a linear."""

    def infer(ins, a):
        x = ins[0]
        if not x.dtype.startswith("float"):
            raise ValueError(f"sparsify takes a float tensor, not {x.dtype}")
        _check_threshold("sparsify", a["threshold"])
        return [(x.dtype, x.shape)]

    def ref(x, threshold):
        return keep_above(x, threshold)

    return infer, ref


@register("cast", attrs={"dtype": REQUIRED})
def _cast():
    def infer(ins, a):
        return [(a["dtype"], ins[0].shape)]

    def ref(x, dtype):
        return x.astype(dtype)

    return infer, ref


# ---------------------------------------------------------------- reductions
def _reduce_infer(ins, a):
    """A reduction over a["axes"] (kept as size 1 with a["keepdim"])."""
    x = ins[0]
    axes = {_norm_axis(i, x.rank) for i in a["axes"]}
    shape = [1 if i in axes else d for i, d in enumerate(x.shape) if a["keepdim"] or i not in axes]
    return [(x.dtype, tuple(shape))]


@register("mean", attrs={"axes": REQUIRED, "keepdim": False})
def _mean():
    infer = _reduce_infer

    def ref(x, axes, keepdim):
        return np.mean(x, axis=tuple(axes), keepdims=keepdim, dtype=np.float32 if x.dtype == np.float16 else None).astype(x.dtype)

    return infer, ref


@register("sum", attrs={"axes": REQUIRED, "keepdim": False})
def _sum():
    infer = _reduce_infer

    def ref(x, axes, keepdim):
        return np.sum(x, axis=tuple(axes), keepdims=keepdim).astype(x.dtype)

    return infer, ref


@register("softmax", attrs={"axis": -1})
def _softmax():
    def infer(ins, a):
        _norm_axis(a["axis"], ins[0].rank)
        return [(ins[0].dtype, ins[0].shape)]

    def ref(x, axis):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)

    return infer, ref


# ---------------------------------------------------------------- shape ops
@register("reshape", attrs={"shape": REQUIRED})
def _reshape():
    """Static target shape; -1 (one) is inferred, 0 copies the input dim."""

    def infer(ins, a):
        return [(ins[0].dtype, S.infer_reshape(ins[0].shape, list(a["shape"])))]

    def ref(x, shape):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return x.reshape(shape)

    return infer, ref


@register("permute", attrs={"perm": REQUIRED})
def _permute():
    def infer(ins, a):
        x = ins[0]
        if sorted(a["perm"]) != list(range(x.rank)):
            raise ValueError(f"bad permutation {a['perm']} for rank {x.rank}")
        return [(x.dtype, tuple(x.shape[p] for p in a["perm"]))]

    def ref(x, perm):
        return np.transpose(x, perm)

    return infer, ref


@register("unsqueeze", attrs={"axis": REQUIRED})
def _unsqueeze():
    def infer(ins, a):
        x = ins[0]
        axis = _norm_axis(a["axis"], x.rank + 1)
        shape = list(x.shape)
        shape.insert(axis, 1)
        return [(x.dtype, tuple(shape))]

    def ref(x, axis):
        return np.expand_dims(x, axis)

    return infer, ref


@register("expand", attrs={"shape": REQUIRED})
def _expand():
    """Broadcast to `shape`; -1 keeps the input's dim (torch semantics)."""

    def infer(ins, a):
        x = ins[0]
        tgt = list(a["shape"])
        if len(tgt) < x.rank:
            raise ValueError(f"cannot expand {S.format_shape(x.shape)} to fewer dims {tgt}")
        pad = [1] * (len(tgt) - x.rank) + list(x.shape)
        out = [pad[i] if t == -1 else t for i, t in enumerate(tgt)]
        if any(p != 1 and S.normalize(p) != S.normalize(o) for p, o in zip(pad, out)):
            raise ValueError(f"cannot expand {S.format_shape(x.shape)} to {tgt}")
        return [(x.dtype, tuple(out))]

    def ref(x, shape):
        pad = (1,) * (len(shape) - x.ndim) + x.shape
        return np.broadcast_to(x, [pad[i] if t == -1 else t for i, t in enumerate(shape)]).copy()

    return infer, ref


INT_MAX = 2**63 - 1


@register("slice", attrs={"axis": REQUIRED, "start": 0, "end": INT_MAX, "step": 1})
def _slice():
    def infer(ins, a):
        x = ins[0]
        axis = _norm_axis(a["axis"], x.rank)
        d = x.shape[axis]
        start, end, step = a["start"], a["end"], a["step"]
        if isinstance(d, int):
            n = len(range(*slice(start, end, step).indices(d)))
        elif start == 0 and end >= INT_MAX // 2 and step == 1:
            n = d
        elif 0 <= start <= end < INT_MAX // 2 and step == 1:
            n = end - start  # assumes the symbolic dim is long enough
        else:
            raise ValueError(f"slice of symbolic dim {d} with start={start} end={end}")
        shape = list(x.shape)
        shape[axis] = n
        return [(x.dtype, tuple(shape))]

    def ref(x, axis, start, end, step):
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(start, end, step)
        return x[tuple(idx)]

    return infer, ref


@register("last_rows", arity=(2, 2), attrs={"dim": REQUIRED})
def _last_rows():
    """last_rows(x[B, S, D], n int64[1]) -> x[:, -n:, :]: the last n rows, n known at run time only.

    The output's row count is the symbol `dim` (e.g. "logits_rows"); n = 0 or
    n >= S gives every row (as numpy's and ONNX's slicing do).
    """

    def infer(ins, a):
        x, n = ins
        if x.rank != 3 or n.dtype != "int64" or tuple(n.shape) != (1,):
            raise ValueError(f"last_rows: x {x.shape}, n {n.dtype}{list(n.shape)}")
        if S.symbols_of(a["dim"]) != {a["dim"]}:
            raise ValueError(f"last_rows: dim {a['dim']!r} is not a symbol")
        return [(x.dtype, (x.shape[0], a["dim"], x.shape[2]))]

    def ref(x, n, dim):
        return x[:, -int(n[0]):]

    return infer, ref


@register("concat", arity=(1, 64), attrs={"axis": REQUIRED})
def _concat():
    def infer(ins, a):
        axis = _norm_axis(a["axis"], ins[0].rank)
        total: S.Dim = 0
        for v in ins:
            if v.rank != ins[0].rank or v.dtype != ins[0].dtype:
                raise ValueError("concat inputs differ in rank or dtype")
            total = S.dim_add(total, v.shape[axis])
        shape = list(ins[0].shape)
        shape[axis] = total
        return [(ins[0].dtype, tuple(shape))]

    def ref(*xs, axis):
        return np.concatenate(xs, axis=axis)

    return infer, ref


# ---------------------------------------------------------------- LLM ops
@register("embedding", arity=(2, 2))
def _embedding():
    """embedding(table[V, D], ids[...]) -> [..., D]"""

    def infer(ins, a):
        table, ids = ins
        return [(table.dtype, tuple(ids.shape) + (table.shape[1],))]

    def ref(table, ids):
        return np.asarray(table)[ids]

    return infer, ref


@register("matmul", arity=(2, 2))
def _matmul():
    def infer(ins, a):
        x, y = ins
        if S.normalize(x.shape[-1]) != S.normalize(y.shape[-2]):
            raise ValueError(f"matmul inner dims {x.shape[-1]} vs {y.shape[-2]}")
        batch = S.broadcast(x.shape[:-2], y.shape[:-2])
        return [(x.dtype, tuple(batch) + (x.shape[-2], y.shape[-1]))]

    def ref(x, y):
        return np.matmul(x, y)

    return infer, ref


@register("linear", arity=(2, 3))
def _linear():
    """linear(x[..., K], w[N, K], bias[N]?) -> [..., N]"""

    def infer(ins, a):
        x, w = ins[:2]
        if S.normalize(x.shape[-1]) != S.normalize(w.shape[1]):
            raise ValueError(f"linear: input features {x.shape[-1]} vs weight {w.shape}")
        return [(x.dtype, tuple(x.shape[:-1]) + (w.shape[0],))]

    def ref(x, w, b=None):
        y = np.matmul(x, np.asarray(w).T.astype(x.dtype, copy=False))
        if b is not None:
            y = y + np.asarray(b).astype(x.dtype, copy=False)
        return y

    return infer, ref


@register("layer_norm", arity=(1, 3), attrs={"eps": 1e-5})
def _layer_norm():
    """Normalize over the last axis; optional weight and bias."""

    def infer(ins, a):
        return [(ins[0].dtype, ins[0].shape)]

    def ref(x, w=None, b=None, eps=1e-5):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + np.float32(eps))
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return y.astype(x.dtype)

    return infer, ref


@register("rms_norm", arity=(2, 2), attrs={"eps": 1e-6})
def _rms_norm():
    """x * rsqrt(mean(x^2) + eps) * w over the last axis (computed in fp32)."""

    def infer(ins, a):
        return [(ins[0].dtype, ins[0].shape)]

    def ref(x, w, eps):
        xf = x.astype(np.float32)
        y = xf / np.sqrt((xf * xf).mean(-1, keepdims=True) + np.float32(eps))
        return (y * np.asarray(w, np.float32)).astype(x.dtype)

    return infer, ref


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


@register("rotary", arity=(3, 3))
def _rotary():
    """rotary(x[B,H,S,D], cos, sin[B,1,S,R]): rotate-half RoPE on the first R dims of D."""

    def infer(ins, a):
        x, cos, sin = ins
        if cos.shape[-1] > x.shape[-1] or cos.shape[-1] % 2:
            raise ValueError(f"rotary dim {cos.shape[-1]} vs head dim {x.shape[-1]}")
        return [(x.dtype, x.shape)]

    def ref(x, cos, sin):
        r = cos.shape[-1]
        xr, xp = x[..., :r], x[..., r:]
        out = xr * cos + rotate_half(xr) * sin
        return np.concatenate([out, xp], axis=-1).astype(x.dtype)

    return infer, ref


@register("glu", arity=(2, 2), attrs={"act": "silu", "threshold": 0.0})
def _glu():
    """act(gate) * up: SwiGLU (act='silu'), GeGLU (act='gelu' / 'gelu_tanh') and ReGLU (act='relu').

    threshold > 0 (CATS activation sparsity): act(gate) is zeroed where |act(gate)| <= threshold
    before the product; 0.0 is off (the plain glu, bit for bit).
    """

    def infer(ins, a):
        g, u = ins
        if a["act"] not in ("silu", "gelu", "gelu_tanh", "relu"):
            raise ValueError(f"glu: unknown activation {a['act']!r}")
        _check_threshold("glu", a.get("threshold", 0.0))  # absent in graphs serialized before it existed
        return [(g.dtype, S.broadcast(g.shape, u.shape))]

    def ref(g, u, act, threshold=0.0):
        if act == "silu":
            y = _silu(g)
        elif act == "relu":
            y = np.maximum(g, 0).astype(g.dtype)
        else:
            y = _gelu(g, "tanh" if act == "gelu_tanh" else "none")
        if threshold:
            y = keep_above(y, threshold)
        return (y * u).astype(g.dtype)

    return infer, ref


@register("attention", arity=(3, 5), attrs={"scale": REQUIRED, "softcap": 0.0, "window": 0, "sinks": ()})
def _attention():
    """Causal GQA attention.

    attention(q[B,H,S,D], k[B,KV,S,D], v[B,KV,S,Dv]) -> out[B,S,H,Dv]
    attention(q, k, v, past_k[B,KV,P,D], past_v[B,KV,P,Dv]) -> out, present_k, present_v
    The query at row i sits at absolute position P+i and sees keys at positions
    j <= P+i (and j > P+i-window when window > 0). softcap > 0 applies
    softcap*tanh(scores/softcap) before masking (Gemma 2). sinks, when given,
    is one logit per query head that joins every row's softmax denominator and
    weighs no value (GPT-OSS's attention sinks): p_j = exp(s_j) / (sum exp(s) + exp(sink)).
    """

    def infer(ins, a):
        q, k, v = ins[:3]
        if q.shape[1] % k.shape[1]:
            raise ValueError(f"attention: {q.shape[1]} query heads vs {k.shape[1]} kv heads")
        out = (q.dtype, (q.shape[0], q.shape[2], q.shape[1], v.shape[3]))
        if a["sinks"] and len(a["sinks"]) != q.shape[1]:
            raise ValueError(f"attention: {len(a['sinks'])} sinks for {q.shape[1]} query heads")
        if len(ins) == 3:
            return [out]
        if len(ins) != 5:
            raise ValueError("attention takes 3 inputs, or 5 with past_k and past_v")
        pk, pv = ins[3:]
        total = S.dim_add(pk.shape[2], k.shape[2])
        return [out, (k.dtype, k.shape[:2] + (total, k.shape[3])),
                (v.dtype, v.shape[:2] + (total, v.shape[3]))]

    def ref(q, k, v, past_k=None, past_v=None, *, scale, softcap, window, sinks=()):
        if past_k is not None:
            k = np.concatenate([past_k, k], axis=2)
            v = np.concatenate([past_v, v], axis=2)
        present = (k, v)
        rep = q.shape[1] // k.shape[1]
        kk = np.repeat(k, rep, axis=1).astype(np.float32)
        vv = np.repeat(v, rep, axis=1).astype(np.float32)
        s = np.matmul(q.astype(np.float32), kk.swapaxes(-1, -2)) * np.float32(scale)
        if softcap:
            s = np.tanh(s / np.float32(softcap)) * np.float32(softcap)
        S_, T = q.shape[2], k.shape[2]
        qpos = np.arange(T - S_, T)[:, None]
        kpos = np.arange(T)[None, :]
        allowed = kpos <= qpos
        if window:
            allowed &= kpos > qpos - window
        s = np.where(allowed, s, np.float32(-np.inf))
        m = s.max(-1, keepdims=True)
        if sinks:
            sink = np.asarray(sinks, np.float32)[None, :, None, None]
            m = np.maximum(m, sink)
        p = np.exp(s - m)
        denom = p.sum(-1, keepdims=True)
        if sinks:
            denom = denom + np.exp(sink - m)
        p /= denom
        out = np.matmul(p, vv).swapaxes(1, 2).astype(q.dtype)
        return out if past_k is None else (out, *present)

    return infer, ref
