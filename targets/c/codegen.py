"""IR -> C: one function, `ec_graph_run`, that runs the graph's nodes in order for the exact model.

Shapes, formats and fusion decisions are baked in: every dimension is a C expression over the
graph's symbols (`seq`, `past`, ...), quantized and fp16 weights feeding a linear or an embedding
become one fused kernel call (the dequantize/cast node is never run), reshapes are free aliases,
and intermediates come from the runtime's buffer pool and go back right after their last use.

The KV cache stays in place: an attention whose past inputs are graph inputs and whose presents
are graph outputs reads and appends to a caller-owned cache of `cap` rows (`cache[i]`, one per cached
tensor); such pasts and presents are not among `in`/`out`. A float cache is stored as float32, or as
IEEE half with kv_cache="fp16" (the backend option); the int8 cache of passes/kv_cache.py (bits=8) is
recognised as its pattern and kept as int8 rows plus a float scale per row, the attention kernel doing
the quantize_rows/concat/dequantize_rows itself. Any op this module cannot lower fails the build
naming it (UNSUPPORTED lists the IR ops with no C lowering).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgec.errors import EdgecError, UnsupportedModelError
from edgec.ir import Graph, Node, Value
from edgec.ir import shapes as S
from edgec.ir.cost import layer_labels
from edgec.ir.ops import INT_MAX, get_op
from edgec.ir.ops_moe import BIASES, check_routing, moe_biases
from edgec.ir.quant import PackedLayout

MAX_TIMERS = 1024  # ec_rt.h EC_MAX_TIMERS: op kind x layer timers of an EC_PROFILE build

UNSUPPORTED = {"gqa", "gqa_packed"}  # the ONNX backend's prelower forms: the C backend keeps `attention`

CTYPE = {"float32": "float", "float16": "uint16_t", "int64": "int64_t", "int32": "int32_t", "int8": "int8_t",
         "uint8": "uint8_t", "bool": "uint8_t"}
ECDT = {"float32": "EC_F32", "float16": "EC_F16", "int64": "EC_I64", "int32": "EC_I32", "int8": "EC_I8",
        "uint8": "EC_U8", "bool": "EC_BOOL"}
BINARY = {"add": "EC_ADD", "sub": "EC_SUB", "mul": "EC_MUL", "div": "EC_DIV", "pow": "EC_POW",
          "maximum": "EC_MAX"}
UNARY = {"neg": "EC_NEG", "sqrt": "EC_SQRT", "rsqrt": "EC_RSQRT", "exp": "EC_EXP", "tanh": "EC_TANH",
         "sin": "EC_SIN", "cos": "EC_COS", "relu": "EC_RELU", "sigmoid": "EC_SIGMOID", "silu": "EC_SILU"}
GLU_ACT = {"silu": "EC_SILU", "gelu": "EC_GELU", "gelu_tanh": "EC_GELU_TANH", "relu": "EC_RELU"}
ALIASES = {"reshape", "unsqueeze"}  # same bytes, new shape
COPIES = ALIASES | {"permute", "slice", "expand", "concat", "split", "last_rows", "embedding", "const", "cast"}
WIDENED_BITS = (3, 5, 6)  # packed code widths the runtime widens to bytes at bind (see CodeGen._codes_ptr)
NATIVE_F16 = COPIES | {"linear", "ffn_offload"}  # ops that take float16 tensors as they are; the rest compute in float32
MOE_MAX_EXPERTS = 256  # runtime/moe.h EC_MOE_MAX_EXPERTS: experts per layer the C kernel serves
# the moe attributes the C kernel knows
MOE_ATTRS = {"top_k", "scoring", "normalize", "act", "alpha", "limit", "n_group", "topk_group", "routed_scaling",
             "jitter_eps", "biases"}
MOE_ACT = {**GLU_ACT, "clamped_swiglu": "EC_MOE_CLAMPED_SWIGLU"}  # runtime/moe.h's ec_moe_layer.act
MOE_SCORING = {"softmax": "EC_MOE_SOFTMAX", "sigmoid": "EC_MOE_SIGMOID",  # runtime/moe.h's ec_moe_layer.scoring
               "sparsemixer": "EC_MOE_SPARSEMIXER"}
MOE_DEFAULTS = {k: v for k, v in get_op("moe").attrs.items() if k != "top_k"}  # for attrs a pass left out
MOE_OPS = ("moe", "moe_offload")  # moe_offload: targets/c/offload_moe.py's form of a moe with cold experts


KV_FORMS = ("fp32", "fp16")  # the backend option kv_cache: how a float KV cache is stored


@dataclass
class CacheEntry:
    """One tensor of the caller's in-place KV cache, `cache[index]`: [1, heads, cap, dim] of `dtype`, its
    storage form (float16 under kv_cache="fp16", while the graph's past and present stay float32)."""

    index: int
    past: Value
    present: Value
    dtype: str

    @property
    def heads(self) -> int:
        return int(self.past.shape[1])

    @property
    def dim(self) -> int:
        return int(self.past.shape[3])


@dataclass
class CacheBinding:
    """An attention whose KV cache lives in the caller's buffers, appended to in place. form "f32" or
    "f16": entries key, value; "i8": key, key_scale, value, value_scale (kv_cache's int8 pattern, whose
    quantize_rows/concat/dequantize_rows nodes, `folded`, the attention kernel does itself)."""

    attention: Node
    form: str
    entries: list[CacheEntry]
    rows: tuple[Value, Value]            # the float key and value rows this call appends
    folded: list[Node] = field(default_factory=list)


@dataclass
class Generated:
    source: str
    weights: list[str]                       # stored weight names, in table order
    inputs: list[Value]                      # `in[i]`
    outputs: list[Value]                     # `out[i]`
    symbols: list[str]                       # `syms[i]`
    caches: list[CacheEntry] = field(default_factory=list)  # `cache[i]`, in order
    row_symbols: dict[str, tuple[str, str]] = field(default_factory=dict)  # last_rows symbol -> (rows input, x dim)
    moe_layers: list[tuple[int, int]] = field(default_factory=list)  # per moe op in order: (experts, top_k)


def dim_c(d) -> str:
    """A dimension as a C int64 expression."""
    if isinstance(d, int):
        return str(d)
    const, syms = S._terms(d)
    parts = [f"s_{s}" for s in syms] + ([str(const)] if const else [])
    return "(" + " + ".join(parts) + ")"


def numel_c(shape) -> str:
    return " * ".join([dim_c(d) for d in shape]) or "1"


def strides_c(shape) -> list[str]:
    out, acc = [], []
    for d in reversed(shape):
        out.append(" * ".join(acc) or "1")
        acc = [dim_c(d)] + acc
    return list(reversed(out))


def arr(items) -> str:
    return "(int64_t[]){" + ", ".join(str(i) for i in items) + "}" if items else "(int64_t[]){0}"


class CodeGen:
    def __init__(self, graph: Graph, kv_cache: str = "fp32"):
        if kv_cache not in KV_FORMS:
            raise EdgecError(f"kv_cache must be one of {list(KV_FORMS)}, got {kv_cache!r}")
        self.g = graph
        self.kv_cache = kv_cache
        self.binding: dict[int, CacheBinding] = {}  # id(attention) ->
        self.users = graph.users()
        self.lines: list[str] = []
        self.names: dict[int, str] = {}
        self.weights: list[str] = []
        self.weight_index: dict[str, int] = {}
        # weights the runtime widens once, at bind (ec_api.c): 1 = float16 scales/minima to float32,
        # 3/5/6 = packed codes of that width to one byte each (the 8-bit kernels then run them)
        self.widened: dict[str, int] = {}
        self.consts: list[str] = []
        self.folded: set[int] = set()
        self.alias_root: dict[int, Value] = {}
        self.owned: set[int] = set()
        self.qweights: set[str] = set()
        self.op_kinds: dict[str, int] = {}
        self.cold_bytes = 0  # cold.bin's size (ffn_offload nodes, targets/c/offload.py)
        self.moe_layers: list[tuple[int, int]] = []  # per moe op in order: (experts, top_k)

    # -- names and pointers ------------------------------------------------------------
    def var(self, v: Value) -> str:
        if id(v) not in self.names:
            self.names[id(v)] = f"t{len(self.names)}"
        return self.names[id(v)]

    def ptr(self, v: Value, ctype: str | None = None) -> str:
        """A C expression for the value's data pointer (weights through the bound table)."""
        ct = ctype or CTYPE[v.dtype]
        if v.kind == "weight":
            if v.name not in self.weight_index:
                self.weight_index[v.name] = len(self.weights)
                self.weights.append(v.name)
            return f"(({'const ' + ct} *)rt->w[@W{self.weight_index[v.name]}@])"  # final index: _order_weights
        return f"(({ct} *){self.var(v)})"

    def emit(self, line: str) -> None:
        self.lines.append("    " + line)

    # -- analysis ----------------------------------------------------------------------------
    def _fusable_weight(self, v: Value) -> str | None:
        """'q' if v = dequantize(weights...), 'f16' if v = cast(fp16 weight) -> float32 (2-D, or the 3-D experts
        of a moe), else None."""
        n = v.producer
        if n is None or not all(i.kind == "weight" for i in n.inputs):
            return None
        if n.op == "dequantize":
            return "q"
        if n.op == "cast" and n.inputs[0].dtype == "float16" and v.dtype == "float32" and n.inputs[0].rank in (2, 3):
            return "f16"
        return None

    def _analyse(self) -> None:
        for n in self.g.nodes:
            if n.op in UNSUPPORTED:
                raise UnsupportedModelError(f"the C backend has no kernel for the IR op {n.op!r}; build with another "
                                 "--backend or without the pass that made it")
            kind = self._fusable_weight(n.outputs[0]) if len(n.outputs) == 1 else None
            if kind is None:
                continue
            readers = self.users.get(n.outputs[0], [])
            v = n.outputs[0]
            flat = v.rank == 2
            ok = v not in self.g.outputs and readers and all(
                (r.op == "linear" and flat and r.inputs[1] is v and r.inputs[0] is not v)
                or (r.op == "embedding" and flat and r.inputs[0] is v)
                or (r.op == "ffn_offload" and flat and r.inputs[0] is not v)
                or (r.op in MOE_OPS and kind == "f16" and r.inputs[0] is not v) for r in readers)
            if ok:
                self.folded.add(id(n))

    def _caches(self) -> list[CacheBinding]:
        """The attentions whose caches can live in place, their entries numbered in order."""
        ins, outs = {id(v) for v in self.g.inputs}, {id(v) for v in self.g.outputs}
        found, index = [], 0
        for n in self.g.nodes:
            if n.op != "attention" or len(n.inputs) != 5 or any(self.users.get(o) for o in n.outputs[1:]):
                continue
            b = self._float_cache(n, ins, outs) or self._int8_cache(n, ins, outs)
            if b is None:
                continue
            for e in b.entries:
                e.index, index = index, index + 1
            found.append(b)
        return found

    def _float_cache(self, n: Node, ins: set, outs: set) -> CacheBinding | None:
        """Float32 pasts that are graph inputs read by this attention only, presents that are graph outputs."""
        pk, pv = n.inputs[3:]
        _, ck, cv = n.outputs
        if not (id(pk) in ins and id(pv) in ins and id(ck) in outs and id(cv) in outs) or pk is pv:
            return None
        if len(self.users.get(pk, [])) != 1 or len(self.users.get(pv, [])) != 1:
            return None
        if pk.dtype != "float32" or pv.dtype != "float32":
            return None
        dt = "float16" if self.kv_cache == "fp16" else "float32"
        return CacheBinding(n, "f16" if dt == "float16" else "f32",
                            [CacheEntry(0, pk, ck, dt), CacheEntry(0, pv, cv, dt)], (n.inputs[1], n.inputs[2]))

    def _int8_cache(self, n: Node, ins: set, outs: set) -> CacheBinding | None:
        """passes/kv_cache.py's int8 cache (bits=8) around this attention, for keys and values alike:
        new_q, new_s = quantize_rows(rows); the attention reads dequantize_rows(new_q, new_s) and
        dequantize_rows(past_q, past_s) (graph inputs); the presents (graph outputs) are concat(past_q,
        new_q) and concat(past_s, new_s) along the rows. Nothing else may read any of them: the kernel
        writes the rows into the cache and reads them from there."""
        sides = [self._int8_side(n, n.inputs[i], n.inputs[i + 2], ins, outs) for i in (1, 2)]
        if None in sides:
            return None
        (ek, rk, fk), (ev, rv, fv) = sides
        return CacheBinding(n, "i8", ek + ev, (rk, rv), fk + fv)

    def _int8_side(self, attn: Node, new: Value, past: Value, ins: set, outs: set):
        """One side (keys or values) of _int8_cache: (its two entries, the float rows, the nodes folded) or None."""
        def only(v, *readers):
            got = self.users.get(v, [])
            return len(got) == len(readers) and {id(r) for r in got} == {id(r) for r in readers}

        dn, dp = new.producer, past.producer
        if dn is None or dp is None or dn.op != "dequantize_rows" or dp.op != "dequantize_rows" or dn is dp:
            return None
        (nq, ns), (pq, ps) = dn.inputs, dp.inputs
        qn = nq.producer
        if qn is None or qn.op != "quantize_rows" or qn.outputs[0] is not nq or qn.outputs[1] is not ns:
            return None
        rows = qn.inputs[0]
        if not (id(pq) in ins and id(ps) in ins and pq.dtype == "int8" and ps.dtype == "float32"
                and rows.dtype == "float32" and rows.rank == 4 and pq.rank == 4):
            return None

        def present(a, b):  # concat(a, b) along the rows: a graph output nothing reads
            cat = [u for u in self.users.get(a, []) if u.op == "concat"]
            if len(cat) != 1 or len(cat[0].inputs) != 2 or cat[0].inputs[0] is not a or cat[0].inputs[1] is not b:
                return None
            c = cat[0]
            ok = c.attrs["axis"] % 4 == 2 and id(c.output) in outs and not self.users.get(c.output)
            return c if ok else None

        cq, cs = present(pq, nq), present(ps, ns)
        if cq is None or cs is None:
            return None
        if not (only(pq, dp, cq) and only(ps, dp, cs) and only(nq, dn, cq) and only(ns, dn, cs)
                and only(new, attn) and only(past, attn)):
            return None
        entries = [CacheEntry(0, pq, cq.output, "int8"), CacheEntry(0, ps, cs.output, "float32")]
        return entries, rows, [qn, dn, dp, cq, cs]

    # -- the function ---------------------------------------------------------------------------
    def generate(self) -> Generated:
        g = self.g
        self._analyse()
        bindings = self._caches()
        caches = [e for b in bindings for e in b.entries]
        for b in bindings:
            self.binding[id(b.attention)] = b
            self.folded.update(id(f) for f in b.folded)
        bound_in = {id(e.past) for e in caches}
        bound_out = {id(e.present) for e in caches}
        inputs = [v for v in g.inputs if id(v) not in bound_in]
        outputs = [v for v in g.outputs if id(v) not in bound_out]
        symbols = sorted({s for v in g.inputs for d in v.shape for s in S.symbols_of(d)})
        row_symbols = {}
        for n in g.nodes:
            if n.op == "last_rows":
                row_symbols[n.attrs["dim"]] = (n.inputs[1].name, n.inputs[0].shape[1])
        for i, s in enumerate(symbols):
            self.emit(f"const int64_t s_{s} = syms[{i}];")
        for i, v in enumerate(inputs):
            self.emit(f"void *{self.var(v)} = in[{i}];")
        self.emit("(void)cap; (void)cache;")  # a bound cache is read only by its attention's kernel call

        # last use of every buffer (aliases keep their root alive)
        last: dict[int, int] = {}
        for i, n in enumerate(g.nodes):
            for v in self._reads(n):
                root = self.alias_root.get(id(v), v)
                last[id(root)] = i
            if n.op in ALIASES and id(n) not in self.folded:
                self.alias_root[id(n.outputs[0])] = self.alias_root.get(id(n.inputs[0]), n.inputs[0])
        for v in g.outputs:
            root = self.alias_root.get(id(v), v)
            last[id(root)] = len(g.nodes)
        layers = layer_labels(g)  # the timers are per op kind and layer: `edgec profile` splits time per layer
        for i, n in enumerate(g.nodes):
            if id(n) in self.folded:
                continue
            self.emit(f"/* {n.op} -> {', '.join(o.name for o in n.outputs)} */")
            timer = f"{n.op}@{layers[i]}"
            if timer not in self.op_kinds and len(self.op_kinds) >= MAX_TIMERS - 1:
                timer = "other@other"  # a model with more op kinds x layers than timers: the rest share one
            kind = self.op_kinds.setdefault(timer, len(self.op_kinds))
            self.emit(f"EC_TIME_BEGIN(tm{i});")
            if n.op not in NATIVE_F16 and any(v.dtype == "float16" for v in list(n.inputs) + list(n.outputs)):
                self._via_f32(n)
            else:
                getattr(self, f"op_{n.op}", self.op_generic_missing)(n)
            self.emit(f"EC_TIME_END(rt, tm{i}, {kind});")
            for v in {id(x): x for x in self._reads(n)}.values():
                root = self.alias_root.get(id(v), v)
                if last.get(id(root)) == i and id(root) in self.owned:
                    self.emit(f"ec_put(rt, {self.var(root)});")
                    self.owned.discard(id(root))
            for o in n.outputs:  # an output nobody reads
                if id(o) in self.owned and id(o) not in last:
                    self.emit(f"ec_put(rt, {self.var(o)});")
                    self.owned.discard(id(o))
        for i, v in enumerate(outputs):
            src = self.ptr(v) if v.kind == "weight" else self.var(v)
            self.emit(f"memcpy(out[{i}], {src}, (size_t)({numel_c(v.shape)}) * {np.dtype(v.dtype).itemsize});")
        for vid in list(self.owned):
            self.emit(f"ec_put(rt, {self.names[vid]});")
        self.emit("return 0;")
        self.info = self._info(inputs, outputs, symbols, caches)
        src = self._source(symbols)
        return Generated(src, self.weights, inputs, outputs, symbols, caches, row_symbols, list(self.moe_layers))

    def _reads(self, n: Node) -> list[Value]:
        """The values node n's C code reads: none for a folded node; an attention over an int8 cache reads
        the float rows its kernel quantizes, not their dequantized copies (which never exist)."""
        if id(n) in self.folded:
            return []
        b = self.binding.get(id(n))
        if b is not None and b.form == "i8":
            return [n.inputs[0], *b.rows]
        return list(n.inputs)

    def _info(self, inputs, outputs, symbols, caches) -> list[str]:
        """ec_model_info: where the LLM roles sit in in[]/out[]/syms[] (for ec_model_forward)."""
        from edgec.interface import LOGITS, LOGITS_ROWS, POSITIONS, TOKENS

        def index(vals, name):
            return next((i for i, v in enumerate(vals) if v.name == name), -1)

        tok = next((v for v in inputs if v.name == TOKENS), None)
        seq = tok.shape[-1] if tok is not None and isinstance(tok.shape[-1], str) else None
        past = caches[0].past.shape[2] if caches and isinstance(caches[0].past.shape[2], str) else None
        logits = next((v for v in outputs if v.name == LOGITS), None)
        vocab = logits.shape[-1] if logits is not None and isinstance(logits.shape[-1], int) else 0
        heads = ", ".join(str(e.heads) for e in caches) or "0"
        dims = ", ".join(str(e.dim) for e in caches) or "0"
        dtypes = ", ".join(ECDT[e.dtype] for e in caches) or "0"
        experts = ", ".join(str(e) for e, _ in self.moe_layers) or "0"
        top_k = ", ".join(str(k) for _, k in self.moe_layers) or "0"
        return [f"static const int64_t ec_cache_heads[] = {{{heads}}};",
                f"static const int ec_moe_experts[] = {{{experts}}};  /* each moe layer's experts and top_k */",
                f"static const int ec_moe_top_k[] = {{{top_k}}};",
                f"static const int64_t ec_cache_dim[] = {{{dims}}};",
                f"static const int ec_cache_dtype[] = {{{dtypes}}};  /* each cache's storage form */",
                "const ec_model_info ec_model = {",
                f"    {len(inputs)}, {len(outputs)}, {len(symbols)}, {len(caches)},",
                f"    {index(inputs, TOKENS)}, {index(inputs, POSITIONS)}, {index(inputs, LOGITS_ROWS)}, "
                f"{index(outputs, LOGITS)},",
                f"    {symbols.index(seq) if seq in symbols else -1}, {symbols.index(past) if past in symbols else -1},",
                f"    {vocab}, {int(self.g.facts.context_length or 0)},",
                "    ec_cache_heads, ec_cache_dim, ec_cache_dtype,",
                "#ifdef EC_ACT_INT8",
                "    1,",
                "#else",
                "    0,",
                "#endif",
                f"    {sum(n.op in ('ffn_offload', 'moe_offload') for n in self.g.nodes)}, "
                f"UINT64_C({self.cold_bytes}),",
                f"    {len(self.moe_layers)}, ec_moe_experts, ec_moe_top_k,",
                "};"]

    def _order_weights(self, text: str) -> str:
        """Put the weights the runtime widens at bind last in the table (= the file's order), and give the code
        their final indices: a loader can then release the file's widened tail once the copies exist
        (edgec_load does), so the packed bytes are not held twice."""
        order = sorted(range(len(self.weights)), key=lambda i: (self.weights[i] in self.widened, i))
        final = {old: new for new, old in enumerate(order)}
        self.weights = [self.weights[i] for i in order]
        self.weight_index = {n: i for i, n in enumerate(self.weights)}
        return re.sub(r"@W(\d+)@", lambda m: str(final[int(m.group(1))]), text)

    def _source(self, symbols) -> str:
        body = self._order_weights("\n".join(self.lines))
        names = ",\n    ".join(_c_string(n) for n in self.weights) or "0"
        infos = [self.g.weights.info(n) for n in self.weights]
        sizes = ", ".join(f"UINT64_C({i.nbytes})" for i in infos) or "0"
        dtypes = ", ".join(ECDT[i.dtype] for i in infos) or "0"
        widen = ", ".join(str(self.widened.get(n, 0)) for n in self.weights) or "0"
        return "\n".join([
            "/* Generated by edgec (targets/c/codegen.py) for one model: do not edit. */",
            "#include <math.h>", "#include <string.h>", '#include "ec_rt.h"', '#include "moe.h"',
            '#include "offload.h"', "",
            *self.consts, "",
            f"const int ec_model_n_weights = {len(self.weights)};",
            f"const int ec_model_n_op_kinds = {len(self.op_kinds)};",
            "const char *const ec_model_op_kinds[] = {" + ", ".join(_c_string(k) for k in self.op_kinds) + "};",
            f"const char *const ec_model_weight_names[] = {{\n    {names}\n}};",
            "/* each weight's size and dtype: ec_rt_bind checks the file's table against them */",
            f"const uint64_t ec_model_weight_bytes[] = {{{sizes}}};",
            f"const int ec_model_weight_dtypes[] = {{{dtypes}}};",
            "/* what ec_rt_bind widens once: 1 float16 scales/minima to float32, 3/5/6 packed codes to bytes */",
            f"const unsigned char ec_model_weight_widen[] = {{{widen}}};", "",
            *self.info, "",
            "int ec_graph_run(ec_rt *rt, const int64_t *syms, void *const *in, void *const *out, "
            "void *const *cache, int64_t cap) {",
            body, "}", ""])

    # -- helpers for op emitters ------------------------------------------------------------
    def alloc(self, v: Value) -> str:
        self.emit(f"void *{self.var(v)} = ec_get(rt, (size_t)({numel_c(v.shape)}) * {np.dtype(v.dtype).itemsize});")
        self.owned.add(id(v))
        return self.var(v)

    def _via_f32(self, n: Node) -> None:
        """An op on float16 tensors computed in float32 between casts: what the reference does (it
        computes norms and attention in float32), and exact for + - * / (float32 holds every fp16 result)."""
        temps, ins, outs, back = [], [], [], []
        for v in n.inputs:
            if v.dtype != "float16":
                ins.append(v)
                continue
            t = Value(f"{v.name}_f32", "float32", v.shape)
            self.alloc(t)
            self.emit(f"ec_cast({self.var(t)}, EC_F32, {self.ptr(v)}, EC_F16, {numel_c(v.shape)});")
            temps.append(t)
            ins.append(t)
        for o in n.outputs:
            if o.dtype != "float16":
                outs.append(o)
                continue
            t = Value(f"{o.name}_f32", "float32", o.shape)
            outs.append(t)
            back.append((o, t))
        getattr(self, f"op_{n.op}", self.op_generic_missing)(Node(n.op, ins, outs, dict(n.attrs)))
        for o, t in back:
            self.alloc(o)
            self.emit(f"ec_cast({self.var(o)}, EC_F16, {self.var(t)}, EC_F32, {numel_c(o.shape)});")
            temps.append(t)
        for t in temps:
            if id(t) in self.owned:
                self.emit(f"ec_put(rt, {self.var(t)});")
                self.owned.discard(id(t))

    def op_generic_missing(self, n: Node) -> None:
        raise UnsupportedModelError(f"the C backend has no kernel for the IR op {n.op!r}; build with another "
                                    "--backend")

    # -- ops ------------------------------------------------------------------------------------
    def op_const(self, n: Node) -> None:
        v = n.output
        a = np.asarray(n.attrs["value"], dtype=v.dtype).reshape(-1)
        name = f"c_{self.var(v)}"
        vals = ", ".join(_c_literal(x, v.dtype) for x in a) or "0"
        self.consts.append(f"static const {CTYPE[v.dtype]} {name}[] = {{{vals}}};")
        self.emit(f"void *{self.var(v)} = (void *){name};")

    def op_reshape(self, n: Node) -> None:
        self.emit(f"void *{self.var(n.output)} = (void *){self.ptr(n.inputs[0])};")

    op_unsqueeze = op_reshape

    def op_cast(self, n: Node) -> None:
        x, o = n.inputs[0], n.output
        self.alloc(o)
        self.emit(f"ec_cast({self.var(o)}, {ECDT[o.dtype]}, {self.ptr(x)}, {ECDT[x.dtype]}, {numel_c(o.shape)});")

    def _binary(self, n: Node) -> None:
        a, b = n.inputs
        o = n.output
        if o.dtype not in ("float32", "int64"):
            raise EdgecError(f"the C backend's {n.op!r} takes float32 or int64, not {o.dtype}")
        self.alloc(o)
        rank = o.rank
        dims = [dim_c(d) for d in o.shape]

        def bstr(v):
            pad = [1] * (rank - v.rank) + list(v.shape)
            st = [1] * (rank - v.rank) + strides_c(v.shape)
            return ["0" if (p == 1 and o.shape[i] != 1) else st[i] for i, p in enumerate(pad)]

        fn = "ec_binary_f32" if o.dtype == "float32" else "ec_binary_i64"
        self.emit(f"{fn}({BINARY[n.op]}, {self.ptr(o)}, {self.ptr(a)}, {arr(bstr(a))}, {self.ptr(b)}, "
                  f"{arr(bstr(b))}, {rank}, {arr(dims)});")

    def _unary(self, n: Node, code: str) -> None:
        o = n.output
        self.alloc(o)
        self.emit(f"ec_unary_f32({code}, {self.ptr(o)}, {self.ptr(n.inputs[0])}, {numel_c(o.shape)});")

    def op_gelu(self, n: Node) -> None:
        self._unary(n, "EC_GELU_TANH" if n.attrs.get("approximate") == "tanh" else "EC_GELU")

    def op_mean(self, n: Node) -> None:
        x, o = n.inputs[0], n.output
        axes = {a % x.rank for a in n.attrs["axes"]}
        self.alloc(o)
        flags = "(int[]){" + ", ".join("1" if i in axes else "0" for i in range(x.rank)) + "}"
        self.emit(f"ec_mean_f32({self.ptr(o)}, {self.ptr(x)}, {x.rank}, {arr([dim_c(d) for d in x.shape])}, {flags});")

    def op_softmax(self, n: Node) -> None:
        x, o = n.inputs[0], n.output
        ax = n.attrs["axis"] % x.rank
        self.alloc(o)
        outer = numel_c(x.shape[:ax])
        inner = numel_c(x.shape[ax + 1:])
        self.emit(f"ec_softmax_f32({self.ptr(o)}, {self.ptr(x)}, {outer}, {dim_c(x.shape[ax])}, {inner});")

    def _strided(self, o: Value, src: str, sstr: list[str]) -> None:
        self.emit(f"ec_copy_strided({self.var(o)}, {src}, {o.rank}, {arr([dim_c(d) for d in o.shape])}, "
                  f"{arr(sstr)}, {np.dtype(o.dtype).itemsize});")

    def op_permute(self, n: Node) -> None:
        x, o = n.inputs[0], n.output
        st = strides_c(x.shape)
        self.alloc(o)
        self._strided(o, self.ptr(x), [st[p] for p in n.attrs["perm"]])

    def op_expand(self, n: Node) -> None:
        x, o = n.inputs[0], n.output
        pad = [1] * (o.rank - x.rank) + list(x.shape)
        st = ["0"] * (o.rank - x.rank) + strides_c(x.shape)
        self.alloc(o)
        self._strided(o, self.ptr(x), ["0" if p == 1 else st[i] for i, p in enumerate(pad)])

    def op_slice(self, n: Node) -> None:
        x, o = n.inputs[0], n.output
        ax = n.attrs["axis"] % x.rank
        start, end, step = n.attrs["start"], n.attrs["end"], n.attrs["step"]
        st = strides_c(x.shape)
        self.alloc(o)
        v = self.var(o)
        end = min(end, INT_MAX // 2)
        self.emit(f"int64_t {v}_st = ec_slice_start({dim_c(x.shape[ax])}, {start}, {end}, {step});")
        sstr = list(st)
        sstr[ax] = f"({st[ax]}) * {step}"
        esz = np.dtype(x.dtype).itemsize
        self._strided(o, f"(const char *){self.ptr(x)} + {v}_st * ({st[ax]}) * {esz}", sstr)

    def op_concat(self, n: Node) -> None:
        o = n.output
        ax = n.attrs["axis"] % o.rank
        esz = np.dtype(o.dtype).itemsize
        self.alloc(o)
        v = self.var(o)
        outer, inner = numel_c(o.shape[:ax]), numel_c(o.shape[ax + 1:])
        self.emit(f"{{ int64_t off = 0, row = {dim_c(o.shape[ax])} * {inner} * {esz};")
        for x in n.inputs:
            w = f"{dim_c(x.shape[ax])} * {inner} * {esz}"
            self.emit(f"  for (int64_t r = 0; r < {outer}; r++) memcpy((char *){v} + r * row + off, "
                      f"(const char *){self.ptr(x)} + r * ({w}), (size_t)({w}));")
            self.emit(f"  off += {w};")
        self.emit("}")

    def op_split(self, n: Node) -> None:
        x = n.inputs[0]
        ax = n.attrs["axis"] % x.rank
        esz = np.dtype(x.dtype).itemsize
        outer, inner = numel_c(x.shape[:ax]), numel_c(x.shape[ax + 1:])
        row = f"{dim_c(x.shape[ax])} * {inner} * {esz}"
        off = 0
        for o, size in zip(n.outputs, n.attrs["sizes"]):
            self.alloc(o)
            w = f"{size} * {inner} * {esz}"
            self.emit(f"for (int64_t r = 0; r < {outer}; r++) memcpy((char *){self.var(o)} + r * ({w}), "
                      f"(const char *){self.ptr(x)} + r * ({row}) + {off} * {inner} * {esz}, (size_t)({w}));")
            off += int(size)

    def op_last_rows(self, n: Node) -> None:
        x, rows = n.inputs
        o = n.output
        sym = n.attrs["dim"]
        esz = np.dtype(x.dtype).itemsize
        s, d = dim_c(x.shape[1]), dim_c(x.shape[2])
        self.emit(f"int64_t s_{sym} = {self.ptr(rows)}[0];")
        self.emit(f"if (s_{sym} <= 0 || s_{sym} > {s}) s_{sym} = {s};")
        self.alloc(o)
        self.emit(f"for (int64_t b = 0; b < {dim_c(x.shape[0])}; b++) memcpy((char *){self.var(o)} + b * s_{sym} * "
                  f"{d} * {esz}, (const char *){self.ptr(x)} + (b * {s} + {s} - s_{sym}) * {d} * {esz}, "
                  f"(size_t)(s_{sym} * {d} * {esz}));")

    def _scales_ptr(self, v: Value) -> str:
        """float32 scales or minima for ec_qweight: float16 ones are widened once, when the weights are bound."""
        if v.dtype == "float16":
            self.widened[v.name] = 1
        return self.ptr(v, "float")

    def _codes_ptr(self, v: Value, bits: int) -> str:
        """The packed codes for ec_qweight: 3-, 5- and 6-bit ones are widened to bytes once, at bind, because
        the runtime's fast kernels read 4- and 8-bit codes (its generic bit-stream loop ran a 5-bit g32 model
        ~40x slower than Q4_1); the file keeps them packed, memory holds a byte per weight."""
        if bits in WIDENED_BITS:
            self.widened[v.name] = bits
        return self.ptr(v)

    def _qweight(self, dq: Node) -> str:
        packed, scales, zeros = dq.inputs[:3]
        mins = dq.inputs[3] if len(dq.inputs) > 3 else None
        lay = PackedLayout.of(dq.attrs["bits"], dq.attrs["group_size"], dq.attrs["k"])
        name = f"q{self.var(dq.outputs[0])}"
        if name in self.qweights:
            return name
        self.qweights.add(name)
        bits = 8 if lay.bits in WIDENED_BITS else lay.bits
        self.emit(f"const ec_qweight {name} = {{{bits}, {lay.group}, {lay.k}, {lay.kp}, {lay.groups}, "
                  f"{self._codes_ptr(packed, lay.bits)}, {self._scales_ptr(scales)}, {self.ptr(zeros)}, "
                  f"{self._scales_ptr(mins) if mins is not None else 'NULL'}}};")
        return name

    def op_dequantize(self, n: Node) -> None:
        o = n.output
        q = self._qweight(n)
        self.alloc(o)
        self.emit(f"ec_dequantize({self.ptr(o)}, &{q}, {dim_c(o.shape[0])});")

    def op_embedding(self, n: Node) -> None:
        table, ids = n.inputs
        o = n.output
        count = numel_c(ids.shape)
        if ids.dtype != "int64":
            wide = Value(f"{ids.name}_i64", "int64", ids.shape)
            self.alloc(wide)
            self.emit(f"ec_cast({self.var(wide)}, EC_I64, {self.ptr(ids)}, {ECDT[ids.dtype]}, {count});")
            self._embedding(n, table, wide, o, count)
            self.emit(f"ec_put(rt, {self.var(wide)});")
            self.owned.discard(id(wide))
            return
        self._embedding(n, table, ids, o, count)

    def _embedding(self, n: Node, table: Value, ids: Value, o: Value, count: str) -> None:
        self.alloc(o)
        src = table.producer
        if src is not None and id(src) in self.folded and src.op == "dequantize":
            q = self._qweight(src)
            self.emit(f"ec_embedding_q({self.ptr(o)}, &{q}, {dim_c(table.shape[0])}, {self.ptr(ids)}, {count});")
            return
        if src is not None and id(src) in self.folded:  # cast(fp16 table): gather the rows, then widen them
            w16 = src.inputs[0]
            tmp = f"{self.var(o)}_16"
            self.emit(f"void *{tmp} = ec_get(rt, (size_t)({count}) * {dim_c(table.shape[1])} * 2);")
            self.emit(f"ec_embedding({tmp}, {self.ptr(w16)}, {dim_c(table.shape[0])}, {dim_c(table.shape[1])}, 2, "
                      f"{self.ptr(ids)}, {count});")
            self.emit(f"ec_cast({self.var(o)}, EC_F32, {tmp}, EC_F16, ({count}) * {dim_c(table.shape[1])});")
            self.emit(f"ec_put(rt, {tmp});")
            return
        self.emit(f"ec_embedding({self.var(o)}, {self.ptr(table)}, {dim_c(table.shape[0])}, {dim_c(table.shape[1])}, "
                  f"{np.dtype(table.dtype).itemsize}, {self.ptr(ids)}, {count});")

    def op_linear(self, n: Node) -> None:
        x, w = n.inputs[:2]
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        o = n.output
        if x.dtype != "float32" or (bias is not None and bias.dtype != "float32"):
            raise EdgecError(f"the C backend's linear takes float32 activations and bias, not {x.dtype}")
        k, nout = dim_c(w.shape[1]), dim_c(w.shape[0])
        m = f"({numel_c(x.shape)}) / {k}"
        b = self.ptr(bias) if bias is not None else "NULL"
        self.alloc(o)
        src = w.producer
        if src is not None and id(src) in self.folded and src.op == "dequantize":
            q = self._qweight(src)
            self.emit(f"ec_linear_q_mt(rt, {self.ptr(o)}, {self.ptr(x)}, &{q}, {b}, {m}, {nout});")
        elif src is not None and id(src) in self.folded:
            self.emit(f"ec_linear_f16_mt(rt, {self.ptr(o)}, {self.ptr(x)}, {self.ptr(src.inputs[0])}, {b}, {m}, "
                      f"{k}, {nout});")
        elif w.dtype == "float16":
            self.emit(f"ec_linear_f16_mt(rt, {self.ptr(o)}, {self.ptr(x)}, {self.ptr(w)}, {b}, {m}, {k}, {nout});")
        else:
            self.emit(f"ec_linear_f32_mt(rt, {self.ptr(o)}, {self.ptr(x)}, {self.ptr(w)}, {b}, {m}, {k}, {nout});")

    def op_matmul(self, n: Node) -> None:
        x, y = n.inputs
        o = n.output
        br = o.rank - 2
        batch = list(o.shape[:br])

        def bstr(v):
            vb = v.rank - 2
            st = strides_c(v.shape)[:vb]
            pad = [1] * (br - vb) + list(v.shape[:vb])
            st = ["0"] * (br - vb) + st
            return ["0" if (p == 1 and batch[i] != 1) else st[i] for i, p in enumerate(pad)]

        self.alloc(o)
        self.emit(f"ec_matmul_f32({self.ptr(o)}, {self.ptr(x)}, {arr(bstr(x))}, {self.ptr(y)}, {arr(bstr(y))}, "
                  f"{br}, {arr([dim_c(d) for d in batch])}, {dim_c(x.shape[-2])}, {dim_c(x.shape[-1])}, "
                  f"{dim_c(y.shape[-1])});")

    def _rows(self, v: Value) -> tuple[str, str]:
        d = dim_c(v.shape[-1])
        return f"({numel_c(v.shape)}) / {d}", d

    def op_layer_norm(self, n: Node) -> None:
        x, o = n.inputs[0], n.output
        w = self.ptr(n.inputs[1]) if len(n.inputs) > 1 else "NULL"
        b = self.ptr(n.inputs[2]) if len(n.inputs) > 2 else "NULL"
        rows, d = self._rows(x)
        self.alloc(o)
        self.emit(f"ec_layer_norm_f32({self.ptr(o)}, {self.ptr(x)}, {w}, {b}, {rows}, {d}, {_c_float(n.attrs['eps'])});")

    def op_rms_norm(self, n: Node) -> None:
        x, w = n.inputs
        o = n.output
        rows, d = self._rows(x)
        self.alloc(o)
        self.emit(f"ec_rms_norm_f32({self.ptr(o)}, {self.ptr(x)}, {self.ptr(w)}, {rows}, {d}, "
                  f"{_c_float(n.attrs['eps'])});")

    def op_add_rms_norm(self, n: Node) -> None:
        x, skip, w = n.inputs
        normed, total = n.outputs
        rows, d = self._rows(x)
        self.alloc(normed)
        self.alloc(total)
        self.emit(f"ec_add_rms_norm_f32({self.ptr(normed)}, {self.ptr(total)}, {self.ptr(x)}, {self.ptr(skip)}, "
                  f"{self.ptr(w)}, {rows}, {d}, {_c_float(n.attrs['eps'])});")

    def op_rotary(self, n: Node) -> None:
        x, cos, sin = n.inputs
        o = n.output
        if x.rank != 4 or cos.rank > 4:
            raise EdgecError(f"the C backend's rotary takes x [B,H,S,D], got {x.shape}")
        pad = [1] * (4 - cos.rank) + list(cos.shape)
        st = ["0"] * (4 - cos.rank) + strides_c(cos.shape)
        cstr = ["0" if pad[i] == 1 else st[i] for i in range(3)]
        self.alloc(o)
        b, h, s, d = (dim_c(v) for v in x.shape)
        self.emit(f"ec_rotary_f32({self.ptr(o)}, {self.ptr(x)}, {self.ptr(cos)}, {self.ptr(sin)}, {arr(cstr)}, "
                  f"{b}, {h}, {s}, {d}, {dim_c(cos.shape[-1])});")

    def op_rotary_cached(self, n: Node) -> None:
        x, pos, cos, sin = n.inputs
        o = n.output
        if pos.dtype != "int64":
            raise EdgecError("the C backend's rotary_cached takes int64 positions")
        b, h, s, d = (dim_c(v) for v in x.shape)
        rows = dim_c(cos.shape[0])
        self.emit(f"if (!ec_positions_ok({self.ptr(pos)}, {numel_c(pos.shape)}, {rows})) {{ "
                  f"ec_set_error(rt, \"positions outside the %lld-position rotary table\", (long long){rows}); "
                  "return -1; }")
        self.alloc(o)
        self.emit(f"ec_rotary_cached_f32({self.ptr(o)}, {self.ptr(x)}, {self.ptr(pos)}, {self.ptr(cos)}, "
                  f"{self.ptr(sin)}, {rows}, {b}, {h}, {s}, {d}, 2 * {dim_c(cos.shape[1])});")

    def op_glu(self, n: Node) -> None:
        gate, up = n.inputs
        o = n.output
        if [S.normalize(d) for d in gate.shape] != [S.normalize(d) for d in up.shape]:
            raise EdgecError(f"the C backend's glu takes equal shapes, got {gate.shape} and {up.shape}")
        self.alloc(o)
        self.emit(f"ec_glu_f32({self.ptr(o)}, {self.ptr(gate)}, {self.ptr(up)}, {numel_c(o.shape)}, "
                  f"{GLU_ACT[n.attrs['act']]}, {_c_float(n.attrs.get('threshold', 0.0))});")

    def _ffn_rows(self, v: Value | None, k: str) -> str:
        """ec_ffn_rows over a folded weight (dequantize or fp16 cast), or an empty one."""
        if v is None:
            return "{NULL, NULL, 0}"
        src = v.producer
        if src.op == "dequantize":
            return f"{{&{self._qweight(src)}, NULL, {k}}}"
        return f"{{NULL, {self.ptr(src.inputs[0])}, {k}}}"

    def op_ffn_offload(self, n: Node) -> None:
        """A hot/cold FFN (targets/c/offload.py): resident rows here, cold bundles in cold.bin (offload.h)."""
        a = n.attrs
        ins = dict(zip(a["roles"], n.inputs))
        x, o = ins["x"], n.output
        d = a["d"]
        self.cold_bytes = max(self.cold_bytes, a["offset"] + a["cold"] * a["bundle"])
        parts = ", ".join("{%d, %d, %d, %d, %d, %d, %d, %d}" % (p["f16"], p["bits"], p["group"], p["k"], p["kp"],
                                                             p["groups"], p["scale_half"], p["has_mins"])
                          for p in a["parts"])
        idx = {r: (self.ptr(ins[r]) if r in ins else "NULL") for r in ("hot_idx", "cold_idx", "pred_a", "pred_b")}
        act = GLU_ACT[a["act"]]
        self.alloc(o)
        name = f"off{a['id']}"
        self.emit(f"const ec_offload_ffn {name} = {{{a['id']}, {d}, {a['inter']}, {a['hot']}, {a['cold']}, {act}, "
                  f"{_c_float(a['threshold'])}, {a['stream']}, {idx['hot_idx']}, {idx['cold_idx']}, "
                  f"{self._ffn_rows(ins.get('gate'), d)}, {self._ffn_rows(ins.get('up'), d)}, "
                  f"{self._ffn_rows(ins.get('down_t'), d)}, UINT64_C({a['offset']}), {a['bundle']}u, {len(a['parts'])}, "
                  f"{{{parts}}}, {a['slots']}, {idx['pred_a']}, {idx['pred_b']}, {a.get('rank', 0)}, "
                  f"{_c_float(a.get('tau', 0.0))}}};")
        self.emit(f"if (ec_ffn_offload(rt, &{name}, {self.ptr(x)}, {self.ptr(o)}, ({numel_c(x.shape)}) / {d}) != 0) "
                  "return -1;")

    def _moe_refuse(self, n: Node, why: str):
        return UnsupportedModelError(f"the C runtime's 'moe' kernel does not serve {n.inputs[0].name}'s layer: {why}; "
                                     "build with --backend onnx or tvm")

    def _moe_mat(self, n: Node, v: Value, what: str) -> str:
        """runtime/moe.h's ec_moe_mat for expert weights v ([E, R, K], or the [n*R, K] rows of resident experts):
        a float32 weight, or a float16 one through its folded cast."""
        src = v.producer
        if v.kind == "weight" and v.dtype == "float32":
            return f"{{EC_F32, {self.ptr(v)}, NULL}}"
        if src is not None and id(src) in self.folded and src.op == "cast":
            return f"{{EC_F16, {self.ptr(src.inputs[0])}, NULL}}"
        inner = src.inputs[0].producer if src is not None and src.op in ALIASES else src
        if inner is not None and inner.op == "dequantize":
            raise self._moe_refuse(n, f"its {what} weights are quantized, and quantized MoE experts are not "
                                      "supported by the C runtime yet (build with a recipe that leaves the experts "
                                      "in fp32 or fp16)")
        raise self._moe_refuse(n, f"its {what} weights are computed at run time ({src.op if src else v.kind}), not "
                                  "stored float32 or float16 weights")

    def _moe_bias(self, n: Node, v: Value | None, what: str) -> str:
        """runtime/moe.h's ec_moe_bias for a bias input v ([E, n]): float32 (a weight or computed), or a float16 weight
        through its folded cast; {EC_F32, NULL} when absent."""
        if v is None:
            return "{EC_F32, NULL}"
        src = v.producer
        if src is not None and id(src) in self.folded and src.op == "cast":
            return f"{{EC_F16, {self.ptr(src.inputs[0])}}}"
        if v.dtype != "float32":
            raise self._moe_refuse(n, f"a {v.dtype} {what} bias")
        return f"{{EC_F32, {self.ptr(v)}}}"

    def _moe_struct(self, n: Node, name: str, x: Value, router: Value, gate_up: Value | None, down: Value | None,
                    biases: dict, where: str = "NULL", cold: str = "NULL") -> str:
        """The ec_moe_layer for moe node n (or its moe_offload form, whose gate_up and down are the resident experts'
        rows, absent when none is; its biases are every expert's), after checking what the kernel serves."""
        a = dict(n.attrs)
        unknown = sorted(set(a) - MOE_ATTRS - ({"offload"} if n.op == "moe_offload" else set()))
        if unknown:
            raise self._moe_refuse(n, f"attribute(s) {unknown} of its router are unknown to it")
        if a["scoring"] not in MOE_SCORING:
            raise self._moe_refuse(n, f"router scoring {a['scoring']!r} (it knows {', '.join(MOE_SCORING)})")
        if set(biases) - set(BIASES):
            raise self._moe_refuse(n, f"biases {sorted(set(biases) - set(BIASES))}")
        if a["act"] not in MOE_ACT:
            raise self._moe_refuse(n, f"expert activation {a['act']!r}")
        if x.dtype != "float32" or n.output.dtype != "float32":
            raise self._moe_refuse(n, f"{x.dtype} activations (it computes in float32)")
        if n.op == "moe":
            experts, inter, d = int(gate_up.shape[0]), int(down.shape[2]), int(down.shape[1])
        else:
            experts, inter, d = (int(a["offload"][k]) for k in ("experts", "inter", "d"))
        top_k = int(a["top_k"])
        if experts > MOE_MAX_EXPERTS:
            raise self._moe_refuse(n, f"{experts} experts (it serves at most {MOE_MAX_EXPERTS} per layer)")
        if not 1 <= top_k <= experts:
            raise self._moe_refuse(n, f"top_k={top_k} of {experts} experts")
        try:  # what the op itself defines (its verifier checks it too): one owner, ops_moe
            check_routing({**MOE_DEFAULTS, **a}, experts, biases)
        except ValueError as e:
            raise self._moe_refuse(n, str(e).removeprefix("moe: ")) from None
        groups, keep = int(a.get("n_group", 1)), int(a.get("topk_group", 1))
        src = router.producer
        if src is not None and id(src) in self.folded and src.op == "cast":
            rdt, rptr = "EC_F16", self.ptr(src.inputs[0])
        elif router.dtype == "float32":
            rdt, rptr = "EC_F32", self.ptr(router)
        else:
            raise self._moe_refuse(n, f"a {router.dtype} router")
        for k in ("logit", "score"):
            if k in biases and biases[k].dtype != "float32":
                raise self._moe_refuse(n, f"a {biases[k].dtype} {k} bias")
        layer = len(self.moe_layers)
        self.moe_layers.append((experts, top_k))
        empty = "{%s, NULL, NULL}" % ("EC_F16" if a.get("offload", {}).get("dtype") == "float16" else "EC_F32")
        gu = self._moe_mat(n, gate_up, "gate_up") if gate_up is not None else empty
        dn = self._moe_mat(n, down, "down") if down is not None else empty
        lptr, sptr = (self.ptr(biases[k]) if k in biases else "NULL" for k in ("logit", "score"))
        gub, dnb = (self._moe_bias(n, biases.get(k), k) for k in ("gate_up", "down"))
        threshold = np.float32(2 * a.get("jitter_eps", 0.0))  # as ops_moe._sparsemixer's
        return (f"const ec_moe_layer {name} = {{{layer}, {experts}, {d}, {inter}, {top_k}, "
                f"{int(bool(a['normalize']))}, {_c_float(a.get('routed_scaling', 1.0))}, {MOE_SCORING[a['scoring']]}, "
                f"{groups}, {keep}, {_c_float(threshold)}, {MOE_ACT[a['act']]}, {_c_float(a.get('alpha', 1.0))}, "
                f"{_c_float(a.get('limit', 0.0))}, {rdt}, {rptr}, {lptr}, {sptr}, {gub}, {dnb}, {gu}, {dn}, {where}, "
                f"{cold}}};")

    def op_moe(self, n: Node) -> None:
        """A mixture-of-experts layer: runtime/moe.h's ec_moe (only the routed experts are computed)."""
        name = f"moe{len(self.moe_layers)}"
        names = tuple(n.attrs.get("biases") or ())
        if len(n.inputs) != 4 + len(names):
            raise self._moe_refuse(n, f"{len(n.inputs)} inputs for biases {list(names)} (it takes x, router, gate_up, "
                                      "down and the biases the attribute names)")
        self.emit(self._moe_struct(n, name, *n.inputs[:4], moe_biases(n)))
        self._moe_call(n, name, n.inputs[0])

    def _moe_call(self, n: Node, name: str, x: Value) -> None:
        o = n.output
        self.alloc(o)
        self.emit(f"if (ec_moe(rt, &{name}, {self.ptr(x)}, {self.ptr(o)}, ({numel_c(x.shape)}) / {dim_c(x.shape[-1])}) "
                  "!= 0) return -1;")

    def op_moe_offload(self, n: Node) -> None:
        """A moe layer with cold experts (targets/c/offload_moe.py): resident experts' rows here, the others in
        cold.bin, read whole through the context's expert slots (offload.h's ec_moe_cold)."""
        off = n.attrs["offload"]
        ins = dict(zip(off["roles"], n.inputs))
        name = f"moe{len(self.moe_layers)}"
        self.cold_bytes = max(self.cold_bytes, off["offset"] + off["n_cold"] * off["bundle"])
        self.emit(f"const ec_moe_cold {name}_cold = {{{off['id']}, {off['n_cold']}, {off['stream']}, {off['slots']}, "
                  f"UINT64_C({off['offset']}), UINT64_C({off['bundle']}), UINT64_C({off['down_at']}), "
                  f"UINT64_C({off['slot_bytes']})}};")
        biases = {k: ins[f"{k}_bias"] for k in BIASES if f"{k}_bias" in ins}
        self.emit(self._moe_struct(n, name, ins["x"], ins["router"], ins.get("gate_up"), ins.get("down"), biases,
                                   where=self.ptr(ins["where"]), cold=f"&{name}_cold"))
        self._moe_call(n, name, ins["x"])

    def op_sparsify(self, n: Node) -> None:
        o = n.output
        self.alloc(o)
        self.emit(f"ec_sparsify_f32({self.ptr(o)}, {self.ptr(n.inputs[0])}, {numel_c(o.shape)}, "
                  f"{_c_float(n.attrs['threshold'])});")

    def op_quantize_rows(self, n: Node) -> None:
        x = n.inputs[0]
        q, s = n.outputs
        rows, d = self._rows(x)
        self.alloc(q)
        self.alloc(s)
        self.emit(f"ec_quantize_rows({self.ptr(q)}, {self.ptr(s)}, {self.ptr(x)}, {rows}, {d});")

    def op_dequantize_rows(self, n: Node) -> None:
        q, s = n.inputs
        o = n.output
        rows, d = self._rows(q)
        self.alloc(o)
        self.emit(f"ec_dequantize_rows({self.ptr(o)}, {self.ptr(q)}, {self.ptr(s)}, {rows}, {d});")

    def op_linear_w8a8(self, n: Node) -> None:
        x, wq, ws = n.inputs[:3]
        bias = self.ptr(n.inputs[3]) if len(n.inputs) > 3 else "NULL"
        o = n.output
        k, nout = dim_c(wq.shape[1]), dim_c(wq.shape[0])
        self.alloc(o)
        self.emit(f"ec_linear_w8a8(rt, {self.ptr(o)}, {self.ptr(x)}, {self.ptr(wq)}, {self.ptr(ws)}, {bias}, "
                  f"({numel_c(x.shape)}) / {k}, {k}, {nout});")

    def _attention_sinks(self, n: Node) -> str:
        """The kernel's sinks argument: a static array of the node's sinks (one logit per query head), or NULL."""
        sinks = tuple(n.attrs.get("sinks") or ())
        if not sinks:
            return "NULL"
        heads = n.inputs[0].shape[1]
        if isinstance(heads, int) and len(sinks) != heads:
            raise EdgecError(f"attention: {len(sinks)} sinks for {heads} query heads")
        name = f"sinks_{self.var(n.outputs[0])}"
        self.consts.append(f"static const float {name}[] = {{{', '.join(_c_float(x) for x in sinks)}}};")
        return name

    def op_attention(self, n: Node) -> None:
        q, k, v = n.inputs[:3]
        if any(t.dtype != "float32" for t in n.inputs):
            raise EdgecError("the C backend's attention computes in float32 (float16 inputs given)")
        out = n.outputs[0]
        b, h, s, d = (dim_c(x) for x in q.shape)
        kvh, dv = dim_c(k.shape[1]), dim_c(v.shape[3])
        self.alloc(out)
        a = n.attrs
        tail = (f"{_c_float(a['scale'])}, {_c_float(a.get('softcap') or 0.0)}, {int(a.get('window') or 0)}, "
                f"{self._attention_sinks(n)}")
        if len(n.inputs) == 3:
            tmpk, tmpv = f"{self.var(out)}_k", f"{self.var(out)}_v"
            self.emit(f"void *{tmpk} = ec_get(rt, (size_t)({numel_c(k.shape)}) * 4);")
            self.emit(f"void *{tmpv} = ec_get(rt, (size_t)({numel_c(v.shape)}) * 4);")
            self.emit(f"ec_attention_f32(rt, {self.ptr(out)}, {self.ptr(q)}, {self.ptr(k)}, {self.ptr(v)}, NULL, NULL, "
                      f"0, (float *){tmpk}, (float *){tmpv}, {s}, {b}, {h}, {kvh}, {s}, 0, {d}, {dv}, {tail});")
            self.emit(f"ec_put(rt, {tmpk}); ec_put(rt, {tmpv});")
            return
        pk, pv = n.inputs[3:]
        _, ck, cv = n.outputs
        p = dim_c(pk.shape[2])
        bound = self.binding.get(id(n))
        if bound is not None:  # the caller's cache, in place: rows [0, p) are there, the kernel appends s
            c = [f"cache[{e.index}]" for e in bound.entries]
            dims = f"cap, {b}, {h}, {kvh}, {s}, {p}, {d}, {dv}, {tail}"
            if bound.form == "i8":
                rk, rv = bound.rows
                self.emit(f"ec_attention_i8(rt, {self.ptr(out)}, {self.ptr(q)}, {self.ptr(rk)}, {self.ptr(rv)}, "
                          f"(int8_t *){c[0]}, (float *){c[1]}, (int8_t *){c[2]}, (float *){c[3]}, {dims});")
            elif bound.form == "f16":
                self.emit(f"ec_attention_f16(rt, {self.ptr(out)}, {self.ptr(q)}, {self.ptr(k)}, {self.ptr(v)}, "
                          f"(uint16_t *){c[0]}, (uint16_t *){c[1]}, {dims});")
            else:
                self.emit(f"ec_attention_f32(rt, {self.ptr(out)}, {self.ptr(q)}, {self.ptr(k)}, {self.ptr(v)}, "
                          f"(float *){c[0]}, (float *){c[1]}, cap, (float *){c[0]}, (float *){c[1]}, {dims});")
            return
        self.alloc(ck)
        self.alloc(cv)
        total = dim_c(ck.shape[2])
        self.emit(f"ec_attention_f32(rt, {self.ptr(out)}, {self.ptr(q)}, {self.ptr(k)}, {self.ptr(v)}, {self.ptr(pk)}, "
                  f"{self.ptr(pv)}, {p}, {self.ptr(ck)}, {self.ptr(cv)}, {total}, {b}, {h}, {kvh}, {s}, {p}, {d}, "
                  f"{dv}, {tail});")


for _op, _code in BINARY.items():
    setattr(CodeGen, f"op_{_op}", CodeGen._binary)
for _op, _code in UNARY.items():
    setattr(CodeGen, f"op_{_op}", lambda self, n, _c=_code: self._unary(n, _c))


def _c_float(x) -> str:
    x = float(np.float32(x))
    if np.isnan(x):
        return "NAN"
    if np.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    return f"{x!r}f"


def _c_literal(x, dtype: str) -> str:
    if dtype == "float32":
        return _c_float(x)
    if dtype == "float16":
        return str(int(np.asarray(x, np.float16).view(np.uint16)))
    if dtype == "int64":
        return f"INT64_C({int(x)})"
    return str(int(x))


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate(graph: Graph, kv_cache: str = "fp32") -> Generated:
    """The C source of `ec_graph_run` for graph, with its weight table and I/O order; kv_cache: how a
    float KV cache is stored in place ("fp32" or "fp16")."""
    return CodeGen(graph, kv_cache).generate()
