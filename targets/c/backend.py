"""`--backend c`: the IR as generated C (targets/c/codegen.py) plus edgec's runtime, compiled by the
device's toolchain into model/libedgec.so, weights in model/weights.bin (targets/c/weights.py),
the sources it was built from in model/src/, and the I/O signature in model/c.json."""
from __future__ import annotations

import json
from pathlib import Path

from edgec.backends import Backend, Option
from edgec.errors import EdgecError


META_FILE = "c.json"
SOURCE_DIR = "src"


class CBackend(Backend):
    name = "c"
    description = "edgec's embedded C runtime (generated C + a small runtime; x86-64 AVX2, aarch64 NEON)"
    # a prompt's prefill projects only its last row onto the vocabulary (the head is ~20% of SmolLM2's prefill
    # FLOPs, and all 512 rows' logits are 100 MB that edgec_prefill would otherwise allocate)
    prelower = [("logits_rows", {}), ("dce", {})]
    options = {
        "int8_activations": Option(bool, False, "linear layers quantize activations to int8 per block of 32 "
                                   "(integer dot products, as llama.cpp; faster, not bit-exact)", stage="run"),
        "huge_pages": Option(bool, True, "copy the weights into anonymous memory in 2 MiB pages at load "
                             "(else they are mmap-ed from the file)", stage="run"),
        "profile": Option(bool, False, "compile per-op timers into the library", stage="build"),
        "kv_cache": Option(str, "fp32", "how the in-place KV cache stores a float cache: fp32, or fp16 (half "
                           "the memory; new rows rounded to fp16 once, attention widens them on the fly); "
                           "recipe int8-kv's cache is int8 either way", stage="build", choices=("fp32", "fp16")),
        "memory_budget": Option(str, "", "hot/cold offloading: hold the weights in this much memory (60MB, 1.5GiB, or "
                                "50% of the weights); cold FFN neurons (or, in a mixture-of-experts model, the least "
                                "often routed experts) go to cold.bin, read on demand (edgec/offload.py)",
                                stage="build"),
        "offload": Option(str, "sparse", "with memory_budget: sparse (read the cold neurons a token activates, the "
                          "gate resident; or the cold experts a token routes to, through a cache) or stream (read "
                          "every cold neuron, or every routed expert: the streaming baseline)",
                          stage="build", choices=("sparse", "stream")),
        "cold_io": Option(str, "direct", "how cold.bin is read: direct (O_DIRECT where the file system allows, so "
                          "the page cache does not hide the reads) or cached", stage="run",
                          choices=("direct", "cached")),
    }

    def check(self, device, recipe, options: dict) -> dict:
        from .build import toolchain_for

        toolchain_for(device)  # a missing cross compiler fails before any slow work
        if options.get("kv_cache") == "fp16" and (getattr(recipe, "kv_cache", None) or {}).get("bits") == 8:
            raise EdgecError(f"backend option kv_cache=fp16 and recipe {recipe.name}'s int8 KV cache exclude each "
                             "other; drop one")
        return options

    def compile(self, graph, out_dir, device, options, progress=None) -> dict:
        from edgec.interface import ModelInterface

        from .build import PUBLIC_HEADER, RUN_SOURCE, compile_library, copy_runtime, toolchain_for
        from .codegen import generate
        from .weights import FILE, write_weights

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tc = toolchain_for(device)
        if progress:
            progress("generating C")
        offload = None
        if options.get("memory_budget"):
            graph, offload = plan_and_lower(graph, out_dir, device, options["memory_budget"],
                                            options.get("offload") or "sparse", progress)
        gen = generate(graph, kv_cache=options.get("kv_cache") or "fp32")
        src = out_dir / SOURCE_DIR
        sources = copy_runtime(src)
        (src / "model.c").write_text(gen.source)
        weights = write_weights(out_dir, graph, gen.weights)
        if progress:
            progress(f"compiling with {tc.cc}")
        defines = (["EC_PROFILE"] if options.get("profile") else []) + \
            (["EC_ACT_INT8"] if options.get("int8_activations") else [])
        built = compile_library(tc, src, [s for s in sources if s.endswith(".c") and s != RUN_SOURCE] + ["model.c"],
                                out_dir, defines)
        (out_dir / PUBLIC_HEADER).write_bytes((src / PUBLIC_HEADER).read_bytes())
        iface = ModelInterface.of_graph(graph)
        logits = next((v for v in graph.outputs if v.name == iface.logits), None)
        meta = {
            "format": 1,
            "triple": tc.triple, "cc": tc.cc, "flags": list(tc.flags) + [f"-D{d}" for d in defines],
            "cross_compiled": tc.cross,
            "signature": {"inputs": [_spec(v) for v in graph.inputs], "outputs": [_spec(v) for v in graph.outputs]},
            "inputs": [v.name for v in gen.inputs], "outputs": [v.name for v in gen.outputs],
            "symbols": gen.symbols,
            # the in-place cache tensors in ec_graph_run's cache[] order, each in its storage dtype
            "caches": [{"past": e.past.name, "present": e.present.name, "dtype": e.dtype} for e in gen.caches],
            "row_symbols": {k: [r, str(d)] for k, (r, d) in gen.row_symbols.items()},
            "context_length": graph.facts.context_length,
            # mixture-of-experts layers in order, [experts, top_k] each (a routing trace must match them: moe.h)
            "moe_layers": [list(m) for m in gen.moe_layers],
            "vocab_size": logits.shape[-1] if logits is not None and isinstance(logits.shape[-1], int) else None,
        }
        if offload is not None:
            meta["offload"] = offload
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        files = [META_FILE, FILE, *built, PUBLIC_HEADER, *[f"{SOURCE_DIR}/{s}" for s in sources + ["model.c"]]]
        if offload is not None:
            files.append(offload["file"])
        return {"files": files, "weights": weights, "toolchain": {"cc": tc.cc, "flags": meta["flags"]}}

    traces_ops = True  # open(trace_dir=...) then executor.op_trace(): the runtime's own per-op timers

    def open(self, files, *, interface=None, options=None, threads=None, trace_dir=None):
        from .executor import CExecutor

        return CExecutor(files, interface=interface, threads=threads, trace_dir=trace_dir,
                         options=self.resolve(self.run_options(options or {})))


def plan_and_lower(graph, out_dir, device, budget: str, mode: str, progress=None):
    """Plan hot/cold offloading under `budget` (edgec/offload.py) and lower it (targets/c/offload.py): the graph
    to generate and c.json's "offload" entry. A budget below the resident minimum fails here, naming it."""
    from edgec.activations import PROFILE_FILE, ActivationProfile
    from edgec.offload import gpu_split, parse_budget, plan_offload

    from .offload import COLD_FILE, costs, find_gated, lower, transposed_down

    parse_budget(budget)  # a malformed size fails before any work
    say = progress or (lambda msg: None)
    if any(n.op == "moe" for n in graph.nodes):
        return plan_and_lower_experts(graph, out_dir, device, budget, mode, say)
    gated, why = find_gated(graph)
    if not gated:
        raise EdgecError("memory_budget: no FFN of this model can be offloaded (" + ("; ".join(why[:2]) or "none found")
                         + "); build without --memory-budget")
    say(f"planning hot/cold offloading of {len(gated)} FFNs under {budget}")
    downs = [transposed_down(f.down_w) for f in gated]
    cost, other = costs(graph, gated, downs, mode)
    layers = [None] * len(gated)
    if PROFILE_FILE in graph.attachments:
        prof = ActivationProfile.from_json(graph.attachments[PROFILE_FILE])
        if len(prof.layers) > max(f.index for f in gated):
            layers = [prof.layers[f.index] if prof.layers[f.index].neurons == f.neurons else None for f in gated]
    share = [f.predictor["candidates"] if f.predictor else None for f in gated]
    plan = plan_offload(cost, other, budget, mode, profiles=layers, read_share=share)
    say(f"writing {COLD_FILE}: {sum(len(p.cold) for p in plan.ffns)} cold neurons")
    lowered, size = lower(graph, plan, [f.index for f in gated], downs, out_dir)
    meta = {"file": COLD_FILE, "bytes": size, "plan": plan.report(), "not_offloaded": why,
            "down_requantized": any(not d.f16 for d in downs),
            "predictors": [{k: f.predictor[k] for k in ("rank", "tau", "recall", "candidates", "active")}
                           for f in gated if f.predictor]}
    if getattr(device, "kind", "") == "gpu":
        meta["gpu_split"] = gpu_split(plan, device)
    return lowered, meta


def plan_and_lower_experts(graph, out_dir, device, budget: str, mode: str, say):
    """A mixture-of-experts model under `budget`: whole experts are the bundles (edgec.offload.plan_experts ranks them
    by the activation profile's routing frequency; targets/c/offload_moe.py lowers the plan). Its dense FFNs (a
    shared expert) stay resident. Returns the graph to generate and c.json's "offload" entry."""
    from edgec.activations import PROFILE_FILE, ActivationProfile
    from edgec.offload import expert_gpu_split, plan_experts

    from .offload import COLD_FILE
    from .offload_moe import costs, find_experts, lower

    found, why = find_experts(graph)
    if not found:
        raise EdgecError("memory_budget: no mixture-of-experts layer of this model can be offloaded ("
                         + "; ".join(why[:2]) + "); build without --memory-budget")
    say(f"planning {len(found)} MoE layers' experts under {budget}")
    cost, other = costs(graph, found)
    profiles = [None] * len(found)
    if PROFILE_FILE in graph.attachments:
        prof = ActivationProfile.from_json(graph.attachments[PROFILE_FILE])
        by_name = {e.name: e for e in prof.experts}
        moes = [n for n in graph.nodes if n.op == "moe"]
        for i, f in enumerate(found):  # by the moe's input name, else by position among the moe layers
            e = by_name.get(f.node.inputs[0].name) or (prof.experts[f.index] if f.index < len(prof.experts) and
                                                        len(prof.experts) == len(moes) else None)
            profiles[i] = e if e is not None and e.experts == f.experts else None
    plan = plan_experts(cost, other, budget, mode, profiles=profiles)
    say(f"writing {COLD_FILE}: {sum(len(p.cold) for p in plan.layers)} cold experts")
    lowered, size = lower(graph, plan, out_dir)
    meta = {"file": COLD_FILE, "bytes": size, "plan": plan.report(), "not_offloaded": why}
    for note in plan.notes:
        say(note)
    if getattr(device, "kind", "") == "gpu":
        meta["gpu_split"] = expert_gpu_split(plan, device)
    return lowered, meta


def _spec(v) -> dict:
    return {"name": v.name, "dtype": v.dtype, "shape": list(v.shape)}


BACKEND = CBackend()
