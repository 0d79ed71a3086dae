"""The edgec attention op, plugged into transformers' attention interface.

transformers calls one attention function per layer with q, k, v in
[batch, heads, seq, head_dim]. Routing it to a `torch.library.custom_op`
makes `torch.export` keep each layer's attention as one opaque node
(`edgec.attention`) instead of tracing masks and softmax; the mask function
returns None so none of transformers' mask-building code lands in the graph.
The op is always causal; sliding window and logit soft-capping are attributes, and
attention sinks (GPT-OSS's `s_aux`: one logit per head in each row's softmax
denominator) an optional tensor the importer reads into an attribute.
"""
from __future__ import annotations

import torch

from ..errors import UnsupportedModelError

ATTN_IMPLEMENTATION = "edgec"


@torch.library.custom_op("edgec::attention", mutates_args=())
def edgec_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    softcap: float, window: int, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Causal GQA attention; returns [batch, seq, heads, head_dim_v] like transformers."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if softcap > 0:
        s = torch.tanh(s / softcap) * softcap
    S, T = q.shape[2], k.shape[2]
    qpos = torch.arange(T - S, T)[:, None]
    kpos = torch.arange(T)[None, :]
    allowed = kpos <= qpos
    if window > 0:
        allowed &= kpos > qpos - window
    s = s.masked_fill(~allowed, float("-inf"))
    if sinks is not None:  # a column that joins the softmax and is dropped after it
        sink = sinks.float().reshape(1, -1, 1, 1).expand(s.shape[0], -1, S, 1)
        p = torch.cat([s, sink], dim=-1).softmax(-1)[..., :-1]
    else:
        p = s.softmax(-1)
    out = torch.matmul(p, v.float()).to(q.dtype)
    return out.transpose(1, 2).contiguous()


@edgec_attention.register_fake
def _(q, k, v, scale, softcap, window, sinks=None):
    return q.new_empty(q.shape[0], q.shape[2], q.shape[1], v.shape[3])


def _attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       **kwargs):
    if kwargs.get("is_causal") is False:
        raise UnsupportedModelError(f"{type(module).__name__}: non-causal attention is not supported")
    scale = float(scaling) if scaling is not None else float(query.shape[-1]) ** -0.5
    softcap = float(kwargs.get("softcap") or 0.0)
    window = int(kwargs.get("sliding_window") or 0)
    return edgec_attention(query, key, value, scale, softcap, window, kwargs.get("s_aux")), None


def _no_mask(*args, **kwargs):
    return None


_registered = False


def register() -> str:
    """Register edgec's attention and mask functions with transformers (idempotent)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTN_IMPLEMENTATION, _attention_forward)
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)
        _registered = True
    return ATTN_IMPLEMENTATION
