"""The peers' models as edgec.eval scorers: `.logits(ids) -> [len(ids), vocab]` on the same token ids.

edgec.eval scores an artifact or a Hugging Face model itself; a peer is any
object with `.logits(ids)` and `.tokenizer` (plus, for the table, `.name`,
`.size_bytes`, `.weight_bytes`, `.parameters`). Every window starts from an
empty cache, as edgec's do, so the perplexities compare directly:

- llama.cpp (llama-cpp-python) on a GGUF, fed our ids with `Llama.eval` (no BOS);
- an ONNX decoder with past-KV inputs (ONNX Runtime GenAI's model, a
  torch.onnx.export), run with onnxruntime on the whole window and empty pasts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def gguf_tokenizer(gguf: Path):
    """The Hugging Face tokenizer of a GGUF (transformers reads it from the file)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())


class LlamaCppScorer:
    """llama.cpp scoring a GGUF on given token ids."""

    def __init__(self, gguf: Path, tokenizer, window: int, threads: int, name: str | None = None):
        from gguf import GGUFReader
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=window, n_batch=window, n_ubatch=window,
                         logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.tokenizer = tokenizer  # edgec's, so llama.cpp sees the very same ids
        self.name = name or f"llama.cpp {gguf.name}"
        tensors = GGUFReader(str(gguf)).tensors
        self.size_bytes = gguf.stat().st_size
        self.weight_bytes = sum(int(t.n_bytes) for t in tensors)
        self.parameters = sum(int(t.n_elements) for t in tensors)

    def logits(self, ids):
        self.llm.reset()  # empty KV cache: every window starts from nothing, like edgec's
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)

    def same_tokens(self, text: str, ids: list[int]) -> str:
        """Whether llama.cpp's own tokenizer gives our ids (a note for the results)."""
        theirs = self.llm.tokenize(text.encode(), add_bos=False, special=False)
        if theirs == ids:
            return "llama.cpp's own tokenizer gives the same ids for the whole text"
        first = next((i for i, (a, b) in enumerate(zip(ids, theirs)) if a != b), min(len(ids), len(theirs)))
        return (f"llama.cpp's own tokenizer gives the same ids for the first {first:,} tokens "
                f"(of {len(ids):,}); it is fed edgec's ids in any case")


class OnnxDecoderScorer:
    """An ONNX causal LM with past-KV inputs, run by onnxruntime over a whole window from empty pasts.

    Inputs are filled by name: input_ids, attention_mask (ones), position_ids
    (0..n-1), and every past_* / past_key_values.* input as a zero-length
    sequence ([batch, heads, past, head dim]; symbolic head dims from `dims`);
    the first output is the logits. That covers the GenAI model builder's
    graph (GroupQueryAttention, positions from the mask, `kv_cache_dim` = the
    head size of its genai_config.json) and a plain torch.onnx.export alike.
    """

    def __init__(self, model_onnx: Path, tokenizer, threads: int, name: str, parameters: int | None = None,
                 dims: dict[str, int] | None = None):
        import onnxruntime as ort

        from decode_runners import onnx_weight_bytes

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self.sess = ort.InferenceSession(str(model_onnx), so, providers=["CPUExecutionProvider"])
        self.inputs = self.sess.get_inputs()
        self.output = self.sess.get_outputs()[0].name
        self.tokenizer, self.name, self.parameters = tokenizer, name, parameters
        self.dims = dict(dims or {})  # symbolic dims of the past inputs other than batch and past length
        self.size_bytes = _folder_bytes(model_onnx.parent)
        self.weight_bytes = onnx_weight_bytes(model_onnx)

    def _feed(self, i, ids: np.ndarray):
        n = ids.shape[1]
        if i.name == "input_ids":
            return ids
        if i.name == "attention_mask":
            return np.ones((1, n), np.int64)
        if i.name == "position_ids":
            return np.arange(n, dtype=np.int64)[None]
        if i.name.startswith("past"):
            shape = [1 if k == 0 else 0 if k == 2 else d if isinstance(d, int) else self.dims.get(d)
                     for k, d in enumerate(i.shape)]  # [batch, heads, past length, head dim]
            if None in shape:
                raise RuntimeError(f"{self.name}: the size of {i.name!r}'s dims {i.shape} is unknown; pass dims")
            dtype = np.float16 if "float16" in i.type else np.float32
            return np.zeros(shape, dtype)
        raise RuntimeError(f"{self.name}: do not know how to fill the input {i.name!r} ({i.type}, {i.shape})")

    def logits(self, ids):
        x = np.asarray([list(ids)], np.int64)
        feeds = {i.name: self._feed(i, x) for i in self.inputs}
        return np.asarray(self.sess.run([self.output], feeds)[0][0], np.float32)


def genai_dims(folder: Path) -> dict[str, int]:
    """The symbolic past-KV dims of an onnxruntime-genai model folder, from its genai_config.json."""
    import json

    dec = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    return {"kv_cache_dim": int(dec["head_size"])}
