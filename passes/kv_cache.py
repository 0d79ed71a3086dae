"""Give every attention a KV cache so one graph serves prefill and decode.

Each attention gains inputs past_key.N / past_value.N ([1, kv_heads, past,
head_dim]) and outputs present_key.N / present_value.N ([1, kv_heads,
past+seq, head_dim]), named by edgec.interface.kv_name (the one owner of the
model's I/O interface, which the manifest, runtime and backends read). position_ids stay a graph input, so callers pass
absolute positions at every step.

bits=8 stores the cache as int8 with one f32 scale per token and head
(symmetric, `quantize_rows` over head_dim): past_key.N int8 [1, KV, past, D]
plus past_key_scale.N f32 [1, KV, past, 1], the same for values, and
present_* likewise (the runtime feeds present_X back as past_X by name).
Only the new rows are quantized; they are appended to the int8 past by
concatenation, so a row is quantized once, when its token is computed, and
never re-quantized. Attention reads the dequantized past plus the
dequantized new rows, so prefill and step-by-step decode see the same
values (logits() of a prompt equals what generation computes), and the
attention keeps its cached form for later fusions.

max_context caps the context length the artifact accepts (the model's
max_position_embeddings otherwise; 0 = no cap), recorded as
graph.facts.context_length for the manifest. Backends with a preallocated
cache (ONNX GroupQueryAttention) size it per generation up to this length.
"""
from edgec.errors import EdgecError
from edgec.interface import kv_name
from edgec.ir import Graph

from .registry import PassResult, register_pass

CACHE_BITS = (8, 32)


@register_pass("kv_cache", bits=32, max_context=0)
def kv_cache(graph: Graph, bits: int = 32, max_context: int = 0) -> PassResult:
    """Add past/present KV tensors to every attention op (bits=8: int8 cache); cap the context."""
    if bits not in CACHE_BITS:
        raise EdgecError(f"kv_cache bits={bits!r} is not supported; use 32 (model dtype) or 8 (int8)")
    if not isinstance(max_context, int) or isinstance(max_context, bool) or max_context < 0:
        raise EdgecError(f"kv_cache max_context must be a whole number >= 0 (0 = the model's), got {max_context!r}")
    if max_context:
        model_ctx = graph.facts.context_length
        graph.facts.context_length = min(model_ctx, max_context) if model_ctx else max_context
    layers = 0
    for node in list(graph.nodes):
        if node.op != "attention" or len(node.inputs) != 3:
            continue
        if bits == 8:
            _int8_cache(graph, node, layers)
        else:
            _float_cache(graph, node, layers)
        layers += 1
    graph.facts.kv_layers = layers
    counts = {"cached_layers": layers, "bits": bits}
    if bits == 32:
        return PassResult(f"cached {layers} attention layers", counts)
    graph.facts.kv_bits = bits
    return PassResult(f"cached {layers} attention layers (int8 cache, per-token-per-head scales)", counts)


def _float_cache(graph: Graph, node, layer: int) -> None:
    q, k, v = node.inputs
    pk = graph.add_input(kv_name("past", "key", layer), k.dtype, k.shape[:2] + ("past",) + k.shape[3:])
    pv = graph.add_input(kv_name("past", "value", layer), v.dtype, v.shape[:2] + ("past",) + v.shape[3:])
    new = graph.make_node("attention", [q, k, v, pk, pv], node.attrs)
    graph.insert_before(node, new)
    graph.replace_all_uses(node.output, new.outputs[0])
    graph.remove(node)
    new.outputs[1].name = graph.fresh_name(kv_name("present", "key", layer))
    new.outputs[2].name = graph.fresh_name(kv_name("present", "value", layer))
    graph.outputs += [new.outputs[1], new.outputs[2]]


def _int8_cache(graph: Graph, node, layer: int) -> None:
    q, k, v = node.inputs
    if k.dtype != "float32" or v.dtype != "float32":
        raise EdgecError(f"int8 KV cache needs float32 keys/values, layer {layer} has {k.dtype}/{v.dtype}")
    added = []

    def add(op, inputs, **attrs):
        n = graph.make_node(op, inputs, attrs)
        added.append(n)
        return n.outputs

    deq, presents = {}, []
    for kind, t in (("key", k), ("value", v)):
        past_q = graph.add_input(kv_name("past", kind, layer), "int8", t.shape[:2] + ("past",) + t.shape[3:])
        past_s = graph.add_input(kv_name("past", f"{kind}_scale", layer), "float32", t.shape[:2] + ("past", 1))
        new_q, new_s = add("quantize_rows", [t])
        (present_q,) = add("concat", [past_q, new_q], axis=2)
        (present_s,) = add("concat", [past_s, new_s], axis=2)
        present_q.name = graph.fresh_name(kv_name("present", kind, layer))
        present_s.name = graph.fresh_name(kv_name("present", f"{kind}_scale", layer))
        presents += [present_q, present_s]
        (past,) = add("dequantize_rows", [past_q, past_s])
        (cur,) = add("dequantize_rows", [new_q, new_s])
        deq[kind] = (past, cur)
    attn = graph.make_node("attention", [q, deq["key"][1], deq["value"][1], deq["key"][0], deq["value"][0]],
                           node.attrs)
    added.append(attn)
    for n in added:
        graph.insert_before(node, n)
    graph.replace_all_uses(node.output, attn.outputs[0])
    graph.remove(node)
    graph.outputs += presents
