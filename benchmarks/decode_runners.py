"""One runner per kind of system: loads a model once, then times a greedy decode or a prefill.

decode(ids, n) -> (tokens, seconds to the first new token, seconds from the first to the last);
prefill(ids) -> seconds to the first new token. weight_bytes: the bytes of weights one decode
token reads (every weight tensor but tables that are only gathered from, i.e. an untied
embedding), for the bandwidth limit.

edgec artifacts of every backend run through the shared runtime (edgec.runtime.CompiledModel);
the peers (llama.cpp, ONNX Runtime GenAI, transformers, a plain onnxruntime session) through
their own libraries.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from time import perf_counter as now

from decode_systems import SMALL_PAGES


def onnx_weight_bytes(graph: Path | bytes) -> int:
    """Bytes of the initializers one token reads: all but those only gathered from (embedding tables).
    graph: the .onnx file, or its bytes (external data is not read: its lengths are in the graph)."""
    from collections import defaultdict

    import numpy as np
    import onnx
    from onnx import helper

    model = (onnx.load_model_from_string(graph) if isinstance(graph, bytes) else
             onnx.load(str(graph), load_external_data=False))
    sizes: dict[str, int] = {}
    users = defaultdict(list)

    def visit(g):
        for t in g.initializer:
            ext = {e.key: e.value for e in t.external_data}
            if "length" in ext:
                n = int(ext["length"])
            elif t.raw_data:
                n = len(t.raw_data)
            elif t.data_type == onnx.TensorProto.STRING:
                n = 0
            else:
                n = int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            sizes[t.name] = n
        for node in g.node:
            for i, x in enumerate(node.input):
                users[x].append((node.op_type, i))
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                for sg in a.graphs:
                    visit(sg)

    visit(model.graph)
    gathered = {n for n in sizes if users[n] and all(op.startswith("Gather") and i == 0 for op, i in users[n])}
    return sum(n for name, n in sizes.items() if name not in gathered)


def edgec_weight_bytes(model) -> int:
    """Bytes of weights one token reads from an edgec artifact (a CompiledModel's verified files).

    An ONNX graph: its initializers as onnxruntime streams them (onnx_weight_bytes). Otherwise the
    weight files the manifest lists (edgec.eval.artifact_weight_bytes; TVM: weights.safetensors).
    Not the manifest's graph.weight_bytes: that counts the IR's quantized forms before lowering
    (zero points a symmetric MatMulNBits drops, per-channel scales it re-blocks), e.g. 92.8 MB for
    SmolLM2 `int4` where onnxruntime reads 91.8 MB (the same 540.2 MB for `fp32`).
    """
    from edgec.eval import artifact_weight_bytes

    files = model.artifact.files("model")
    if files.exists("model.onnx"):
        return onnx_weight_bytes(files.read_bytes("model.onnx"))
    return artifact_weight_bytes(model.manifest)


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of the GGUF tensors one token reads: token_embd is only gathered when output.weight exists."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total


class EdgecRunner:
    """An edgec artifact, whatever its backend, through the shared runtime."""

    def __init__(self, path: str, threads: int, ctx: int):
        from edgec.runtime import CompiledModel

        options = {"huge_pages": False} if os.environ.get(SMALL_PAGES) else None
        self.m = CompiledModel(path, threads=threads, backend_options=options)
        hp = getattr(self.m.executor, "huge_pages", None)
        self.huge_page_bytes = hp.collapsed_bytes if hp else None
        self.weight_bytes = edgec_weight_bytes(self.m)

    def decode(self, ids, n):
        it = self.m.stream(ids, n, stop_at_eos=False)
        t0 = now()
        toks = [next(it)]
        t1 = now()
        toks += list(it)
        return toks, t1 - t0, now() - t1

    def prefill(self, ids):
        t0 = now()
        next(self.m.stream(ids, 1, stop_at_eos=False))
        return now() - t0


class LlamaRunner:
    def __init__(self, path: str, threads: int, ctx: int):
        import llama_cpp
        import numpy as np

        self.np, self.lc = np, llama_cpp
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self.weight_bytes = gguf_weight_bytes(Path(path))

    def _next(self) -> int:
        ptr = self.lc.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return int(self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def decode(self, ids, n):
        self.llm.reset()
        t0 = now()
        self.llm.eval(ids)
        toks = [self._next()]
        t1 = now()
        for _ in range(n - 1):
            self.llm.eval([toks[-1]])
            toks.append(self._next())
        return toks, t1 - t0, now() - t1

    def prefill(self, ids):
        self.llm.reset()
        t0 = now()
        self.llm.eval(ids)
        self._next()
        return now() - t0


class OrtGenaiRunner:
    def __init__(self, path: str, threads: int, ctx: int):
        import onnxruntime_genai as og

        self.og, self.ctx = og, ctx
        cfg = og.Config(path)
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(cfg)
        self.weight_bytes = onnx_weight_bytes(Path(path) / "model.onnx")

    def _generator(self, min_length):
        p = self.og.GeneratorParams(self.model)
        # min_length keeps EOS from ending the run early (its logit is masked until then)
        p.set_search_options(max_length=self.ctx, min_length=min(min_length, self.ctx), do_sample=False)
        return self.og.Generator(self.model, p)

    def decode(self, ids, n):
        g = self._generator(len(ids) + n)  # allocating the KV buffer is not timed
        t0 = now()
        g.append_tokens(ids)
        g.generate_next_token()
        toks = [int(g.get_next_tokens()[0])]
        t1 = now()
        for _ in range(n - 1):
            g.generate_next_token()
            toks.append(int(g.get_next_tokens()[0]))
        return toks, t1 - t0, now() - t1

    def prefill(self, ids):
        g = self._generator(len(ids) + 1)
        t0 = now()
        g.append_tokens(ids)
        g.generate_next_token()
        g.get_next_tokens()
        return now() - t0


class TorchRunner:
    def __init__(self, path: str, threads: int, ctx: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        params = {id(p): p for p in self.model.parameters()}
        total = sum(p.numel() * p.element_size() for p in params.values())
        emb, out = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        if out is None or emb.weight is not out.weight:  # untied: the input table is only gathered
            total -= emb.weight.numel() * emb.weight.element_size()
        self.weight_bytes = total

    def _step(self, ids, cache):
        out = self.model(input_ids=self.torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax()), out.past_key_values

    def decode(self, ids, n):
        from transformers import DynamicCache

        with self.torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            t0 = now()
            tok, cache = self._step(ids, cache)
            toks = [tok]
            t1 = now()
            for _ in range(n - 1):
                tok, cache = self._step([tok], cache)
                toks.append(tok)
            return toks, t1 - t0, now() - t1

    def prefill(self, ids):
        from transformers import DynamicCache

        with self.torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            t0 = now()
            self._step(ids, cache)
            return now() - t0


class OrtExportRunner:
    """A plain torch.onnx.export of the transformers model (fp32): past KV in, present KV out, numpy glue."""

    def __init__(self, path: str, threads: int, ctx: int):
        import numpy as np
        import onnxruntime as ort

        self.np = np
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        f = Path(path) / "model.onnx"
        self.sess = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        self.past = [(i.name, [d if isinstance(d, int) else 0 for d in i.shape]) for i in self.sess.get_inputs()
                     if i.name.startswith("past_")]
        self.weight_bytes = onnx_weight_bytes(f)

    def _run(self, ids, start, past):
        np = self.np
        out = self.sess.run(None, {"input_ids": np.asarray([ids], np.int64),
                                   "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None],
                                   **past})
        return int(out[0][0, -1].argmax()), dict(zip((n for n, _ in self.past), out[1:]))

    def _empty(self):
        return {n: self.np.zeros(s, self.np.float32) for n, s in self.past}

    def decode(self, ids, n):
        t0 = now()
        tok, past = self._run(ids, 0, self._empty())
        toks = [tok]
        t1 = now()
        pos = len(ids)
        for _ in range(n - 1):
            tok, past = self._run([tok], pos, past)
            toks.append(tok)
            pos += 1
        return toks, t1 - t0, now() - t1

    def prefill(self, ids):
        t0 = now()
        self._run(ids, 0, self._empty())
        return now() - t0


RUNNERS = {"edgec": EdgecRunner, "llama": LlamaRunner, "ortgenai": OrtGenaiRunner, "torch": TorchRunner,
           "ortexport": OrtExportRunner}
