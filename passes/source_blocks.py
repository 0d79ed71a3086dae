"""Keep a quantized source's own blocks (`--recipe source`): no second quantization.

A GGUF file arrives quantized (the default SmolLM2 is Q4_1); quantizing its
dequantized weights again onto another grid adds a second rounding error.
This pass gives every linear (and a tied embedding) the source's blocks
exactly as stored, converted losslessly to edgec's packed format
(edgec/frontend/gguf_blocks.py, edgec/ir/ggml.py).
"""
from edgec.errors import EdgecError
from edgec.ir import Graph

from .registry import PassResult, register_pass


@register_pass("source_blocks", skip=[], lm_head=True)
def source_blocks(graph: Graph, ctx, skip=(), lm_head=True) -> PassResult:
    """Replace each weight a quantized GGUF tensor holds by that tensor's blocks, bit for bit.

    skip (weight-name substrings) and lm_head=false leave those weights as float for a later pass,
    e.g. a mixed recipe that keeps the sensitive tensors exact and requantizes the rest.
    """
    from edgec.frontend.gguf_blocks import keep_blocks

    from .quantize import lm_head_linears

    src = getattr(ctx, "source", None)
    if src is None or src.kind not in ("gguf", "default"):
        what = "a model folder" if src is not None else "a graph without a known source"
        raise EdgecError(f"recipe 'source' keeps a quantized GGUF file's blocks, but this is {what}; "
                         "choose a recipe that quantizes (see `edgec recipes`)")
    before = graph.weights.total_bytes()
    if isinstance(skip, str):
        skip = [skip]
    heads = set() if lm_head else {n.inputs[1].name for n in lm_head_linears(graph)}
    kept = keep_blocks(graph, src.path, ctx.progress,
                       keep=lambda name: name not in heads and not any(p in name for p in skip))
    kinds = sorted(set(kept.kept.values()))
    after = graph.weights.total_bytes()
    extra = f"; left float: {', '.join(kept.left_float)}" if kept.left_float else ""
    extra += f"; {len(kept.skipped)} left float for later passes (skip/lm_head)" if kept.skipped else ""
    extra += f"; {len(kept.unmatched)} GGUF tensors not in the graph" if kept.unmatched else ""
    return PassResult(f"kept the source's blocks for {len(kept.kept)} weights ({', '.join(kinds)}), "
                      f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB{extra}",
                      {"kept": len(kept.kept), "left_float": len(kept.left_float),
                       "unmatched": len(kept.unmatched), "skipped": len(kept.skipped),
                       "bytes_before": before, "bytes_after": after})
