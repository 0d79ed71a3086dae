"""The edgec experts op, plugged into transformers' ExpertsInterface (mixture-of-experts models).

transformers' MoE blocks route tokens with ordinary tensor code (a router linear, softmax or sigmoid,
top-k) and then call one experts function per layer with the chosen expert indices and weights. Its
eager version loops over the experts that were hit, which torch.export cannot trace with a dynamic
sequence; routing that call to a `torch.library.custom_op` keeps each layer's experts as one opaque
node (`edgec.moe_experts`), like edgec.frontend.attention does for attention. The router stays in the
trace; passes/raise_moe.py folds router and experts into the IR's `moe` op.

Supported expert layouts: gate and up stacked in one [E, 2I, H] tensor (gate first), down [E, H, I],
no biases, act(gate) * up. Others (GPT-OSS's interleaved, transposed, biased experts) fail at trace
time with their name.
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


@torch.library.custom_op("edgec::moe_experts", mutates_args=())
def edgec_moe_experts(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, gate_up: torch.Tensor,
                      down: torch.Tensor, act: str) -> torch.Tensor:
    """sum_k weight[t,k] * down[e] @ (act(gate[e] x_t) * up[e] x_t), e = index[t,k]; x [T, H]."""
    inter = down.shape[2]
    out = torch.zeros_like(x)
    for e in index.unique().tolist():
        rows, slot = torch.where(index == e)
        h = x[rows] @ gate_up[e].T
        y = (_act(h[:, :inter], act) * h[:, inter:]) @ down[e].T
        out.index_add_(0, rows, (y * weight[rows, slot, None]).to(out.dtype))
    return out


@edgec_moe_experts.register_fake
def _(x, index, weight, gate_up, down, act):
    return torch.empty_like(x)


_ACT_NAMES = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
              "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def _activation(module) -> str:
    name = getattr(module.config, "hidden_act", None) or getattr(module.config, "hidden_activation", None)
    if name not in _ACT_NAMES:
        raise UnsupportedModelError(f"{type(module).__name__}: expert activation {name!r} is not supported; "
                                    f"supported: {', '.join(sorted(_ACT_NAMES))}")
    return _ACT_NAMES[name]


def _experts_forward(module, hidden_states, top_k_index, top_k_weights):
    kind = type(module).__name__
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
    return edgec_moe_experts(hidden_states, top_k_index, top_k_weights.to(hidden_states.dtype),
                             module.gate_up_proj, module.down_proj, _activation(module))


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
