"""Store float32 weights as float16 (half the artifact), cast back where they are used.

Compute stays fp32: the backend sees fp16 constants followed by a cast, which
ONNX Runtime folds at load time or fuses into the consumer.

Vectors and scalars (rank <= 1: norm weights, biases, scales, the rotary
`inv_freq`) stay fp32, as in llama.cpp: they are a negligible share of the
bytes, and fp16 `inv_freq` puts an error on the RoPE angle `pos * inv_freq`
that grows with the position (~0.3 rad at position 4000).
"""
import numpy as np

from edgec.ir import Graph

from .registry import PassResult, register_pass


@register_pass("fp16_weights")
def fp16_weights(graph: Graph) -> PassResult:
    """Convert fp32 weights to fp16 storage."""
    users = graph.users()
    count, before = 0, graph.weights.total_bytes()
    casts = []
    for name, v in list(graph.weight_values.items()):
        if v.dtype != "float32" or v not in users or v.rank <= 1:
            continue
        half = graph.add_weight(name + ".fp16", np.asarray(graph.weight(v)).astype(np.float16))
        cast = graph.make_node("cast", [half], {"dtype": "float32"})
        casts.append(cast)
        graph.replace_all_uses(v, cast.output)
        count += 1
    graph.nodes = casts + graph.nodes
    graph.prune_weights()
    after = graph.weights.total_bytes()
    return PassResult(f"stored {count} weights as fp16, {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB",
                      {"fp16_weights": count, "bytes_before": before, "bytes_after": after})
