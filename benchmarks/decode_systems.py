"""The systems benchmarks/decode.py measures: how each is made and run, what it needs, how it is labelled."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SMALL_PAGES = "DECODE_BENCH_SMALL_PAGES"  # env: the edgec worker opens its artifact with huge_pages off
BENCH_INSTALL = 'pip install -e ".[bench]"'

# name -> how it is made and run. kind: the worker that runs it; env: extra environment for its process.
SYSTEMS = {
    # the speed recipe: int4's layout, GPTQ (calibrated on WikiText-2 valid.txt, recipe's 32 windows)
    "edgec-int4-speed": {"kind": "edgec", "recipe": "int4-speed", "no_fuse": False},
    "edgec-int4": {"kind": "edgec", "recipe": "int4", "no_fuse": False},  # RTN g128, int8 head
    # the shipped Q4_1 blocks kept exactly (its default recipe)
    "edgec-source": {"kind": "edgec", "recipe": "source", "no_fuse": False},
    "edgec-int4-nofuse": {"kind": "edgec", "recipe": "int4", "no_fuse": True},
    # the same artifact as edgec-int4 with its weights left in 4 KiB pages (the [onnx] huge_pages option off)
    "edgec-int4-4k": {"kind": "edgec", "recipe": "int4", "no_fuse": False, "env": {SMALL_PAGES: "1"}},
    "edgec-int4-g32": {"kind": "edgec", "recipe": "int4-rtn-g32-asym", "no_fuse": False},
    "edgec-fp32": {"kind": "edgec", "recipe": "fp32", "no_fuse": False},
    # issue 5: the host TVM artifact beside the rest (int4-rtn: TVM dequantizes a quantized tied table whole)
    "edgec-tvm-fp32": {"kind": "edgec", "recipe": "fp32", "no_fuse": False, "backend": "tvm"},
    "edgec-tvm-int4": {"kind": "edgec", "recipe": "int4-rtn", "no_fuse": False, "backend": "tvm"},
    # issue 15: the embedded C runtime (int8 activations, the device profile's default) on the same recipes
    "edgec-c-int4-speed": {"kind": "edgec", "recipe": "int4-speed", "no_fuse": False, "backend": "c"},
    "edgec-c-int4": {"kind": "edgec", "recipe": "int4", "no_fuse": False, "backend": "c"},
    "edgec-c-source": {"kind": "edgec", "recipe": "source", "no_fuse": False, "backend": "c"},
    "edgec-c-int4-g32": {"kind": "edgec", "recipe": "int4-rtn-g32-asym", "no_fuse": False, "backend": "c"},
    # issue 14: the most accurate recipe at <= 6.2 bits per weight (GPTQ int5/int6 mix, fp16 scales)
    "edgec-c-accurate": {"kind": "edgec", "recipe": "accurate", "no_fuse": False, "backend": "c"},
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
PEER_LABELS = {"torch": "transformers (PyTorch eager, fp32, sdpa attention)",
               "ortgenai": "ONNX Runtime GenAI int4 (model builder `-p int4 -e cpu`)",
               "ortexport": "ONNX Runtime on torch.onnx.export (fp32, past KV in/out)"}


def in_huge_pages(spec: dict) -> bool:
    """Whether a system's weights sit in 2 MiB pages: edgec's runtime unless told not to, or glibc's tunable."""
    env = spec.get("env") or {}
    return (spec["kind"] == "edgec" and SMALL_PAGES not in env) or "hugetlb" in env.get("GLIBC_TUNABLES", "")


def installed(names: list[str], log) -> list[str]:
    """The systems whose optional libraries are installed; a note with the install command for the others."""
    out = []
    for n in names:
        missing = [what for mod, what in NEEDS.get(SYSTEMS[n]["kind"], []) if importlib.util.find_spec(mod) is None]
        if missing:
            log.note(f"`{n}` skipped: {', '.join(missing)} not installed (`{BENCH_INSTALL}`)")
        else:
            out.append(n)
    return out


def label(name: str, path: Path, gguf: Path) -> str:
    """The table's name for a prepared system (edgec's from its artifact's recipe)."""
    spec = SYSTEMS[name]
    if spec["kind"] == "edgec":
        rec = json.loads((path / "manifest.json").read_text()).get("recipe", {})
        opts = ", ".join(f"{k}={v}" for p in rec.get("passes", []) for k, v in p.items() if k != "name")
        return (f"edgec `{rec.get('name', spec['recipe'])}`" + (f" ({opts})" if opts else "")
                + (", --no-fuse" if spec["no_fuse"] else "")
                + {"tvm": ", TVM backend", "c": ", C backend"}.get(spec.get("backend", "onnx"), "")
                + ("" if in_huge_pages(spec) else ", weights in 4 KiB pages (huge_pages off)"))
    if spec["kind"] == "llama":
        return (f"llama.cpp, original GGUF ({gguf.name})" if spec["ftype"] is None else
                f"llama.cpp {spec['ftype']}, requantized from Q4_1 (allow_requantize)")
    text = PEER_LABELS[spec["kind"]]
    if "GLIBC_TUNABLES" in spec.get("env", {}):
        text += f", GLIBC_TUNABLES={spec['env']['GLIBC_TUNABLES']} (huge pages; not its default)"
    return text
