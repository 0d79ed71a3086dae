"""The edgec experts op, plugged into transformers' ExpertsInterface (mixture-of-experts models).

transformers' MoE blocks route tokens with ordinary tensor code (a router linear, softmax or sigmoid,
top-k) and then call one experts function per layer with the chosen expert indices and weights. Its
eager version loops over the experts that were hit, which torch.export cannot trace with a dynamic
sequence; routing that call to a `torch.library.custom_op` keeps each layer's experts as one opaque
node (`edgec.moe_experts`), like edgec.frontend.attention does for attention. The router stays in the
trace; passes/raise_moe.py folds router and experts into the IR's `moe` op.

Supported expert layouts: gate and up stacked in one [E, 2I, H] tensor (gate first), down [E, H, I],
no biases, act(gate) * up; and GPT-OSS's: [E, H, 2I] with gate and up interleaved (even/odd columns),
down [E, I, H], both biased, a clamped SwiGLU. The op takes the module's own tensors and layout flags;
the importer (aten.py) rewrites GPT-OSS's weights once into the first layout. Others fail at trace time
with their name.
"""
from __future__ import annotations

import torch

from ..errors import UnsupportedModelError

EXPERTS_IMPLEMENTATION = "edgec"


def _act(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "silu":
        return torch.nn.functional.silu(x)
    if act == "relu":
        return torch.relu(x)
    return torch.nn.functional.gelu(x, approximate="tanh" if act == "gelu_tanh" else "none")


def _gated(h: torch.Tensor, act: str, alpha: float, limit: float) -> torch.Tensor:
    inter = h.shape[-1] // 2
    g, u = h[..., :inter], h[..., inter:]
    if act != "clamped_swiglu":
        return _act(g, act) * u
    g, u = g.clamp(max=limit), u.clamp(-limit, limit)
    return (u + 1) * g * torch.sigmoid(g * alpha)


def standard_layout(gate_up, down, gate_up_bias=None, transposed: bool = False, interleaved: bool = False):
    """(gate_up [E, 2I, H] gate first, down [E, H, I], gate_up_bias [E, 2I] gate first) from a module's
    tensors (torch or numpy alike): transposed ones are [E, H, 2I] and [E, I, H]; interleaved ones hold gate
    and up in even and odd columns."""
    if transposed:
        gate_up, down = gate_up.swapaxes(1, 2), down.swapaxes(1, 2)
    if interleaved:
        width = gate_up.shape[1]
        order = list(range(0, width, 2)) + list(range(1, width, 2))
        gate_up = gate_up[:, order]
        gate_up_bias = gate_up_bias[:, order] if gate_up_bias is not None else None
    return gate_up, down, gate_up_bias


@torch.library.custom_op("edgec::moe_experts", mutates_args=())
def edgec_moe_experts(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, gate_up: torch.Tensor,
                      down: torch.Tensor, act: str, gate_up_bias: torch.Tensor | None = None,
                      down_bias: torch.Tensor | None = None, transposed: bool = False, interleaved: bool = False,
                      alpha: float = 1.0, limit: float = 0.0) -> torch.Tensor:
    """sum_k weight[t,k] * (down[e] @ gated(gate_up[e] x_t + gate_up_bias[e]) + down_bias[e]), e = index[t,k];
    x [T, H]; the weights in the module's layout (`standard_layout`)."""
    gate_up, down, gate_up_bias = standard_layout(gate_up, down, gate_up_bias, transposed, interleaved)
    out = torch.zeros_like(x)
    for e in index.unique().tolist():
        rows, slot = torch.where(index == e)
        h = x[rows] @ gate_up[e].T
        if gate_up_bias is not None:
            h = h + gate_up_bias[e]
        y = _gated(h, act, alpha, limit) @ down[e].T
        if down_bias is not None:
            y = y + down_bias[e]
        out.index_add_(0, rows, (y * weight[rows, slot, None]).to(out.dtype))
    return out


@edgec_moe_experts.register_fake
def _(x, index, weight, gate_up, down, act, gate_up_bias=None, down_bias=None, transposed=False, interleaved=False,
      alpha=1.0, limit=0.0):
    return torch.empty_like(x)


_ACT_NAMES = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
              "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def _activation(module) -> str:
    name = getattr(module.config, "hidden_act", None) or getattr(module.config, "hidden_activation", None)
    if name not in _ACT_NAMES:
        raise UnsupportedModelError(f"{type(module).__name__}: expert activation {name!r} is not supported; "
                                    f"supported: {', '.join(sorted(_ACT_NAMES))}")
    return _ACT_NAMES[name]


def _is_gpt_oss(module) -> bool:
    """GPT-OSS's experts (or a subclass keeping their clamped SwiGLU)."""
    try:
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
    except ImportError:
        return False
    return isinstance(module, GptOssExperts) and type(module)._apply_gate is GptOssExperts._apply_gate


def _experts_forward(module, hidden_states, top_k_index, top_k_weights):
    kind = type(module).__name__
    weight = top_k_weights.to(hidden_states.dtype)
    if _is_gpt_oss(module):
        return edgec_moe_experts(hidden_states, top_k_index, weight, module.gate_up_proj, module.down_proj,
                                 "clamped_swiglu", module.gate_up_proj_bias, module.down_proj_bias,
                                 transposed=True, interleaved=True, alpha=float(module.alpha),
                                 limit=float(module.limit))
    for flag, what in (("has_bias", "biased experts"), ("is_transposed", "transposed expert weights"),
                       ("has_post_expert_norm", "a norm after each expert")):
        if getattr(module, flag, False):
            raise UnsupportedModelError(f"{kind}: {what} are not supported yet")
    if not getattr(module, "is_concatenated", True):
        raise UnsupportedModelError(f"{kind}: interleaved gate/up expert weights are not supported yet")
    if not getattr(module, "has_gate", True) or not hasattr(module, "gate_up_proj"):
        raise UnsupportedModelError(f"{kind}: experts without a gated (act(gate) * up) FFN are not supported")
    if type(module)._apply_gate.__name__ != "_default_apply_gate":
        raise UnsupportedModelError(f"{kind}: a custom expert gate ({kind}._apply_gate) is not supported")
    return edgec_moe_experts(hidden_states, top_k_index, weight, module.gate_up_proj, module.down_proj,
                             _activation(module))


_registered = False


def register() -> str:
    """Register edgec's experts function with transformers (idempotent)."""
    global _registered
    if not _registered:
        from transformers.integrations.moe import ExpertsInterface

        ExpertsInterface.register(EXPERTS_IMPLEMENTATION, _experts_forward)
        _registered = True
    return EXPERTS_IMPLEMENTATION


def set_experts(model) -> None:
    """Route every experts module of `model` through edgec's op (no-op for dense models)."""
    experts = [m for m in model.modules() if hasattr(m, "is_concatenated") and hasattr(m, "down_proj")]
    if not experts:
        return
    name = register()
    for m in experts:
        m.config._experts_implementation = name
