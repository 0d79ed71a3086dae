"""torch.export of a causal LM with a dynamic sequence axis.

The model is traced once over the full sequence, without a KV cache: inputs
`input_ids` and `position_ids` ([1, seq], int64), output logits. Passing
position ids explicitly keeps rotary/learned positions correct when a later
pass adds the cache (decode steps then pass their absolute positions).
"""
from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from . import attention, moe
from .source import VERIFIED_ARCHITECTURES

EXAMPLE_SEQ = 7


def set_attention(model) -> None:
    """Ask transformers to route attention through edgec's op (checked after export)."""
    name = attention.register()
    try:
        model.set_attn_implementation(name)
    except Exception:  # noqa: BLE001 - some models only read the config attribute
        model.config._attn_implementation = name


def context_length(config) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


def check_variant(config, arch: str) -> None:
    """Refuse variants edgec's attention op cannot express before tracing them: an ALiBi model
    (Falcon's config.alibi) puts its position bias in the attention mask, which the op never takes."""
    if getattr(config, "alibi", False):
        raise UnsupportedModelError(f"architecture {arch!r} with ALiBi position bias (config.alibi) is not supported")


def export(model) -> torch.export.ExportedProgram:
    arch = getattr(model.config, "model_type", type(model).__name__)
    check_variant(model.config, arch)
    set_attention(model)
    moe.set_experts(model)
    max_seq = max(EXAMPLE_SEQ + 1, context_length(model.config))
    seq = torch.export.Dim("seq", min=1, max=max_seq)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    ids = (torch.arange(EXAMPLE_SEQ) * 7 % vocab)[None]
    pos = torch.arange(EXAMPLE_SEQ)[None]
    kwargs = dict(input_ids=ids, position_ids=pos, use_cache=False)
    shapes = dict(input_ids={1: seq}, position_ids={1: seq}, use_cache=None)
    try:
        with torch.no_grad():
            ep = torch.export.export(model, (), kwargs, dynamic_shapes=shapes, strict=False)
    except UnsupportedModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any tracing failure is an unsupported model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(f"architecture {arch!r} could not be traced with edgec's "
                                    f"attention op: {type(e).__name__}: {first}") from None
    if not any(n.target is torch.ops.edgec.attention.default for n in ep.graph.nodes):
        raise UnsupportedModelError(
            f"architecture {arch!r} ({type(model).__name__}) does not use transformers' "
            "AttentionInterface, so edgec cannot capture its attention; supported: "
            + ", ".join(VERIFIED_ARCHITECTURES))
    return ep
