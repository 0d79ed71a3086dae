"""Random-weight models built from a config, with a character-level tokenizer: what edgec measures
when the model's quality does not matter (the host calibration of edgec.estimate) and what the
tests build their tiny models from (tests/tiny.py)."""
from __future__ import annotations

import string
from pathlib import Path

VOCAB_CHARS = string.ascii_letters + string.digits + " .,:;!?'-\n"
SPECIALS = ["<unk>", "<s>", "</s>"]
VOCAB = len(SPECIALS) + len(VOCAB_CHARS)


def char_tokenizer():
    """One token per character (and <unk>, <s>, </s>), saved with a model like any HF tokenizer."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + list(VOCAB_CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>",
        chat_template="{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}assistant: {% endif %}")


def save_random_llama(path: str | Path, *, hidden: int, layers: int, ffn: int, heads: int, kv_heads: int,
                      context: int = 1024, seed: int = 0) -> Path:
    """A Llama folder (config, safetensors, tokenizer) with random weights of the given shape."""
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=ffn,
                                      num_hidden_layers=layers, num_attention_heads=heads,
                                      num_key_value_heads=kv_heads, max_position_embeddings=context,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.02)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return Path(path)
