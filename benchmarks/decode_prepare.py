"""Building or reusing every model benchmarks/decode.py measures, cached in --work.

edgec artifacts are rebuilt when their recipe, flags or edgec's source
(edgec/, passes/, targets/) change; peers when their library version changes.
The slow steps run in subprocesses (`decode.py --prepare ...`, see `prepare`),
--build-jobs at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import perf_counter as now

from common import version
from decode_systems import SYSTEMS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DECODE = HERE / "decode.py"  # the command line; --prepare runs the steps below in a child process
CALIB = Path(os.environ.get("EDGEC_DATA_DIR", REPO.parent / "shared" / "data")) / "wikitext-2" / "valid.txt"


# ---------------------------------------------------------------------------------------------
# the steps that run in a child process (decode.py --prepare WHAT ARGS...)
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


def prepare(what: str, *args: str) -> None:
    """The --prepare entry point."""
    if what == "hf":
        return prepare_hf(*args)
    if what == "ort-export":
        return prepare_ort_export(*args)
    if what == "llama-quant":
        return prepare_llama_quant(args[0], args[1], args[2], int(args[3]))
    sys.exit(f"unknown --prepare {what}")


# ---------------------------------------------------------------------------------------------
# the parent: the cache and the build jobs
# ---------------------------------------------------------------------------------------------
def source_hash(*folders: str) -> str:
    """SHA-256 over the source files (names and contents) of edgec's packages: the build cache key."""
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted((REPO / folder).rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc",):
                h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class Prep:
    """Builds or reuses the models in --work."""

    def __init__(self, work: Path, threads: int, say):
        self.work, self.threads, self.say = work, threads, say
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.cache_file = work / "cache.json"
        self.cache = json.loads(self.cache_file.read_text()) if self.cache_file.exists() else {}
        self.lock = threading.Lock()  # builds run in a thread pool
        self.edgec_src = source_hash("edgec", "passes", "targets")

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
        return [sys.executable, str(DECODE), "--prepare", *map(str, args)]

    def edgec(self, name: str, recipe: str, no_fuse: bool, backend: str = "onnx") -> tuple[Path, float | None]:
        from edgec.recipes import load_recipe

        # a calibrated recipe (int4-speed) calibrates on WikiText-2's validation text, never the test split
        calib = CALIB if load_recipe(recipe).needs_calibration else None
        key = {"recipe": recipe, "no_fuse": no_fuse, "backend": backend, "edgec_source": self.edgec_src,
               "calib": str(calib) if calib else None}
        out = self.work / ("edgec-" + recipe.replace(":", "_").replace("+", "_") + ("-nofuse" if no_fuse else "")
                           + ("" if backend == "onnx" else f"-{backend}"))

        def make(o):
            shutil.rmtree(o, ignore_errors=True)
            self.run(name, [sys.executable, "-m", "edgec.cli", "build", "-o", str(o), "--recipe", recipe, "-q",
                            "--backend", backend] + (["--no-fuse"] if no_fuse else [])
                     + (["--calib", str(calib)] if calib else []))

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
        key = {"hf": str(hf), "onnxruntime_genai": version("onnxruntime-genai"), "precision": "int4"}

        def make(o):
            shutil.rmtree(o, ignore_errors=True)
            tmp = self.work / "ortgenai-cache"
            self.run(name, [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(o),
                            "-p", "int4", "-e", "cpu", "-c", str(tmp)])
            shutil.rmtree(tmp, ignore_errors=True)

        return self.cached("ortgenai-int4", key, self.work / "ortgenai-int4", make)

    def ort_export(self, name: str, hf: Path) -> tuple[Path, float | None]:
        key = {"hf": str(hf), "torch": version("torch"), "transformers": version("transformers"),
               "onnxscript": version("onnxscript"), "script": hashlib.sha256(
                   Path(__file__).read_bytes().split(b"def prepare_ort_export")[1].split(b"\ndef ")[0]).hexdigest()[:12]}

        def make(o):
            shutil.rmtree(o, ignore_errors=True)
            self.run(name, self.self_cmd("ort-export", hf, o))

        return self.cached(name, key, self.work / "ort-export-fp32", make)


def prepare_all(selected: list[str], gguf: Path, work: Path, threads: int, jobs: int, log, ready):
    """Build or reuse every selected system's model; ready(name, path) is called for each in turn,
    a system that cannot be prepared leaves `selected` with a note. Returns (prep, {name: build seconds})."""
    prep = Prep(work, threads, log.say)
    pool = ThreadPoolExecutor(max(1, jobs))
    uses_hf = [n for n in selected if SYSTEMS[n]["kind"] in ("torch", "ortgenai", "ortexport")]
    hf_job = pool.submit(prep.hf, gguf) if uses_hf else None  # first: the longest chain starts from it
    # submission order: one edgec build, the long ONNX export (its chain starts with hf above), the rest
    edgecs = [n for n in selected if SYSTEMS[n]["kind"] == "edgec"]
    exports = [n for n in selected if SYSTEMS[n]["kind"] == "ortexport"]
    futures, builds = {}, {}  # builds: one job per distinct model (systems may differ only in how they run it)

    def once(key, fn, *a):
        if key not in builds:
            builds[key] = pool.submit(fn, *a)
        return builds[key]

    for n in edgecs[:1] + exports + [n for n in selected if n not in edgecs[:1] + exports]:
        spec = SYSTEMS[n]
        if spec["kind"] == "edgec":
            build = (spec["recipe"], spec["no_fuse"], spec.get("backend", "onnx"))
            futures[n] = once(("edgec",) + build, prep.edgec, n, *build)
        elif spec["kind"] == "llama":
            futures[n] = (pool.submit(prep.llama_quant, n, gguf, spec["ftype"]) if spec["ftype"] else
                          pool.submit(lambda: (gguf, None)))
        elif spec["kind"] == "torch":
            futures[n] = pool.submit(lambda: (hf_job.result(), None))
        elif spec["kind"] == "ortgenai":
            futures[n] = once("ortgenai", lambda n=n: prep.ortgenai(n, hf_job.result()))
        elif spec["kind"] == "ortexport":
            futures[n] = pool.submit(lambda n=n: prep.ort_export(n, hf_job.result()))
    build_s = {}
    for n in list(selected):
        try:
            path, build_s[n] = futures[n].result()
        except Exception as e:  # noqa: BLE001
            selected.remove(n)
            log.note(f"`{n}` skipped: could not be prepared: {str(e)[:300]}")
            continue
        ready(n, path)
    pool.shutdown()
    return prep, build_s
