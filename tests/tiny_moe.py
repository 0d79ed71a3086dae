"""Tiny random mixture-of-experts models for tests, built from transformers' own configs.

Like tiny.py (same vocabulary and tokenizer), with 4 experts, 2 routed per token, so a short
prompt reaches every expert (DeepSeek-V3: 8 experts in 4 groups, 2 groups kept, 3 routed per token).
Router weights are scaled up so that routing decisions are clear (no near-ties that float rounding
could flip between two implementations); sigmoid routers less, so that no score saturates at 1.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

from edgec.synthetic import VOCAB, char_tokenizer

MOE_ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "phimoe", "gpt_oss", "deepseek_v2"]
# what raise_moe makes of each router (the moe op's attributes)
ROUTERS = {
    "mixtral": {"scoring": "softmax", "top_k": 2, "normalize": True},
    "qwen2_moe": {"scoring": "softmax", "top_k": 2, "normalize": False},
    "qwen3_moe": {"scoring": "softmax", "top_k": 2, "normalize": True},
    "deepseek_v3": {"scoring": "sigmoid", "top_k": 3, "normalize": True, "n_group": 4, "topk_group": 2,
                    "routed_scaling": 2.5},
    "phimoe": {"scoring": "sparsemixer", "top_k": 2, "normalize": False, "jitter_eps": 0.01},
    # softmax over the top-2 logits of a biased router; biased experts with a clamped SwiGLU
    "deepseek_v2": {"scoring": "softmax", "top_k": 2, "normalize": False},  # (complex RoPE: frontend/complex_pairs.py)
    "gpt_oss": {"scoring": "softmax", "top_k": 2, "normalize": True, "act": "clamped_swiglu", "limit": 1.5,
                "biases": ("logit", "gate_up", "down")},
}
ROUTER_SCALE = {"deepseek_v3": 2.0}  # else 8
def tiny_moe_config(arch: str):
    c = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2,
             num_experts_per_tok=2)
    if arch == "mixtral":
        return transformers.MixtralConfig(num_local_experts=4, **c)
    if arch == "qwen2_moe":
        # norm_topk_prob False: the top-k softmax scores are used as they are; a shared expert
        return transformers.Qwen2MoeConfig(num_experts=4, moe_intermediate_size=48,
                                           shared_expert_intermediate_size=80, norm_topk_prob=False, **c)
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(num_experts=4, moe_intermediate_size=48, norm_topk_prob=True,
                                           head_dim=16, **c)
    if arch == "deepseek_v3":
        # MLA (low-rank q and kv, interleaved rope on 8 of each head's 24 q/k dims, v heads of 12),
        # a dense first layer, a shared expert, sigmoid routing with a score bias over 4 groups of 2
        return transformers.DeepseekV3Config(
            n_routed_experts=8, n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
            moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=48,
            kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12, rope_interleave=True,
            **{**c, "num_hidden_layers": 3, "num_key_value_heads": 4, "num_experts_per_tok": 3})
    if arch == "phimoe":
        # sparsemixer routing (top-2 with a jitter threshold), LayerNorm
        return transformers.PhimoeConfig(num_local_experts=4, router_jitter_noise=0.01, **c)
    if arch == "gpt_oss":
        # attention sinks; sliding-window layers (window 6) alternating with full ones; a limit the clamped
        # SwiGLU reaches on these weights
        return transformers.GptOssConfig(num_local_experts=4, head_dim=16, sliding_window=6, swiglu_limit=1.5,
                                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **c)
    if arch == "deepseek_v2":
        # MLA without a q low-rank, complex-valued RoPE (torch.polar) on 8 of each head's 24 q/k dims
        return transformers.DeepseekV2Config(n_routed_experts=4, moe_intermediate_size=32, first_k_dense_replace=0,
                                             kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8,
                                             qk_nope_head_dim=16, v_head_dim=12, **{**c, "num_key_value_heads": 4})
    raise ValueError(f"no tiny MoE config for {arch!r}")


def save_tiny_moe(arch: str, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_moe_config(arch)).eval()
    experts = getattr(model.config, "num_local_experts", None) or model.config.num_experts
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight")) and p.dim() == 2 and p.shape[0] == experts:
                p.mul_(ROUTER_SCALE.get(arch, 8.0))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # chooses experts, never weighs them
                b.copy_(torch.linspace(-0.2, 0.2, experts)[torch.randperm(experts)])
        for name, p in model.named_parameters():  # GPT-OSS: sinks that matter, experts' biases (zero at init)
            if name.endswith("sinks"):
                p.copy_(torch.linspace(-2.0, 3.0, p.numel())[torch.randperm(p.numel())])
            elif name.endswith("proj_bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
