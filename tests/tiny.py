"""Tiny random models for tests, one per supported architecture, built from a config.

Each is saved with save_pretrained together with a small character-level
tokenizer, so the frontend sees exactly what a user's model folder holds.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

from edgec.synthetic import SPECIALS, VOCAB, VOCAB_CHARS, char_tokenizer  # noqa: F401 (the tests import them from here)

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gpt2", "opt",
         "gpt_neox", "stablelm", "cohere", "gptj", "falcon"]


def tiny_config(arch: str):
    c = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                       n_positions=128, bos_token_id=1, eos_token_id=2,
                                       initializer_range=0.2)
    if arch == "opt":
        return transformers.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      max_position_embeddings=128, word_embed_proj_dim=64,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                      init_std=0.2)
    if arch == "gptj":  # interleaved RoPE on the first half of each head (rotary_dim < head_dim)
        return transformers.GPTJConfig(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                       rotary_dim=8, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    if arch == "falcon":  # falcon-7b's layout: fused QKV, multi-query, parallel attention + MLP, RoPE
        return transformers.FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=128,
                                         new_decoder_architecture=False, multi_query=True,
                                         parallel_attn=True, alibi=False, bias=False,
                                         bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    if arch == "cohere":  # interleaved RoPE, bias-free LayerNorm, parallel attention + MLP, logit_scale
        return transformers.CohereConfig(logit_scale=0.5, **c)
    if arch == "gpt_neox":
        c.pop("num_key_value_heads")
        return transformers.GPTNeoXConfig(rotary_pct=0.25, **c)
    if arch == "stablelm":
        return transformers.StableLmConfig(partial_rotary_factor=0.25, **c)
    if arch in ("gemma", "gemma2", "qwen3"):
        c.update(head_dim=16)
    if arch == "gemma2":
        c.update(sliding_window=4, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    if arch == "mistral":
        c.update(sliding_window=6)
    names = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3",
             "phi3": "Phi3", "gemma": "Gemma", "gemma2": "Gemma2"}
    return getattr(transformers, names[arch] + "Config")(**c)


def tiny_tokenizer():
    return char_tokenizer()


def save_tiny(arch: str, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch)).eval()
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


# llama's HF parameter names -> GGUF tensor names (llama.cpp's convention)
_GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
_GGUF_BLOCK = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
               "post_attention_layernorm": "ffn_norm"}


def save_tiny_gguf(path: Path, qtype, seed: int = 0) -> Path:
    """The tiny random llama as a GGUF file whose matrices are quantized to `qtype` (a
    gguf.GGMLQuantizationType) by the gguf package, norms float32, with the tiny vocabulary.

    The matrices are written in HF row order (llama.cpp permutes q/k rows; transformers undoes
    that on load), so the model transformers loads is a valid llama, not this seed's HF model.
    """
    import gguf

    torch.manual_seed(seed)
    cfg = tiny_config("llama")
    tokens = SPECIALS + list(VOCAB_CHARS) + ["<|endoftext|>"]  # transformers' GPT-2 tokenizer adds it anyway
    cfg.vocab_size = len(tokens)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * len(VOCAB_CHARS) + [3])
    w.add_token_merges([])
    w.add_token_scores([0.0] * len(tokens))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(0)
    for name, t in model.state_dict().items():
        a = t.detach().float().numpy()
        if name in _GGUF_TOP:
            gname = _GGUF_TOP[name]
        else:
            _, _, layer, *rest = name.split(".")
            gname = f"blk.{layer}.{_GGUF_BLOCK['.'.join(rest[:-1])]}.weight"
        if a.ndim == 2:
            raw = gguf.quants.quantize(a, qtype)
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            w.add_tensor(gname, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
