"""Tiny random mixture-of-experts models for tests, built from transformers' own configs.

Like tiny.py (same vocabulary and tokenizer), with 4 experts, 2 routed per token, so a short
prompt reaches every expert. Router weights are scaled up so that routing decisions are clear
(no near-ties that float rounding could flip between two implementations).
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

from edgec.synthetic import VOCAB, char_tokenizer

MOE_ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe"]


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
    raise ValueError(f"no tiny MoE config for {arch!r}")


def save_tiny_moe(arch: str, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_moe_config(arch)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.weight") and p.dim() == 2 and p.shape[0] == 4:
                p.mul_(8.0)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path
