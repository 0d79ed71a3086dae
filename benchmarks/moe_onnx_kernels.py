"""A GPT-OSS-shaped MoE layer on onnxruntime (CPU): the ONNX backend's two lowerings of `moe`.

targets/onnx/lower_moe.py lowers `moe` either to onnxruntime's `com.microsoft.MoE` contrib op (moe_kernel
auto, where its CPU kernel computes the layer exactly: softmax top-k routers, SwiGLU experts with gate and
up interleaved) or to standard ops (moe_kernel gather: each token's k experts' weights gathered, two
batched MatMuls). This measures one GPT-OSS-shaped layer (biased router, biased experts, clamped SwiGLU,
random weights, fp32) both ways, in one process, rounds interleaved: decode (1 token) and prefill (a
prompt), with each output's largest difference from edgec's numpy reference (the quality check: the same
layer, so the same numbers are expected).

    python benchmarks/moe_onnx_kernels.py [--experts 32 --top-k 4 --hidden 1024 --inter 1024]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_rev, machine, median, write_section  # noqa: E402


KINDS = {  # the moe op's attributes per layer kind and the biases it has
    "gpt_oss": ({"act": "clamped_swiglu", "alpha": 1.702, "limit": 7.0, "normalize": True}, ("logit", "gate_up", "down")),
    "mixtral": ({"act": "silu", "normalize": True}, ()),
}


def layer(args, rng):
    """The layer's weights in the moe op's layout (gate rows first)."""
    e, h, i = args.experts, args.hidden, args.inter
    return {"router": rng.normal(0, 1, (e, h)).astype("float32"), "logit": rng.normal(0, 1, e).astype("float32"),
            "gate_up": rng.normal(0, 1 / np.sqrt(h), (e, 2 * i, h)).astype("float32"),
            "gate_up_bias": rng.normal(0, 0.1, (e, 2 * i)).astype("float32"),
            "down": rng.normal(0, 1 / np.sqrt(i), (e, h, i)).astype("float32"),
            "down_bias": rng.normal(0, 0.1, (e, h)).astype("float32")}


def build(w, args, kind: str, out: Path, kernel: str) -> Path:
    """One moe node through the ONNX backend's compile (as a build runs it), with its moe_kernel option."""
    from edgec.ir import Graph
    from edgec.targets.onnx.compile import compile_graph

    attrs, biases = KINDS[kind]
    g = Graph()
    x = g.add_input("x", "float32", ("seq", args.hidden))
    ins = [g.add_weight(n, w[n]) for n in ("router", "gate_up", "down")]
    ins += [g.add_weight(b if b == "logit" else f"{b}_bias", w[b if b == "logit" else f"{b}_bias"]) for b in biases]
    g.outputs = [g.op("moe", x, *ins, top_k=args.top_k, biases=biases, **attrs)]
    g.outputs[0].name = "y"
    compile_graph(g, out, moe_kernel=kernel)
    return out / "model.onnx"


def reference(w, args, kind: str, x):
    from edgec.ir.ops_moe import route, run_experts

    attrs, biases = KINDS[kind]
    b = {k: w[k if k == "logit" else f"{k}_bias"] for k in biases}
    wt, idx = route(x, w["router"], args.top_k, "softmax", attrs["normalize"], logit_bias=b.get("logit"))
    return run_experts(x, idx, wt, w["gate_up"], w["down"], attrs["act"], b.get("gate_up"), b.get("down"),
                       attrs.get("alpha", 1.0), attrs.get("limit", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=1024)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20, help="calls per timed decode sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = layer(args, rng)
    work = Path(tempfile.mkdtemp(prefix="edgec-moe-onnx-"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sessions = {(kind, kernel): ort.InferenceSession(str(build(w, args, kind, work / f"{kind}-{kernel}", kernel)), opts,
                                                     providers=["CPUExecutionProvider"])
                for kind in KINDS for kernel in ("gather", "auto")}
    feeds = {"decode": rng.normal(0, 1, (1, args.hidden)).astype("float32"),
             "prefill": rng.normal(0, 1, (args.prompt, args.hidden)).astype("float32")}
    err = {}
    for phase, x in feeds.items():
        for (kind, kernel), s in sessions.items():
            ref = reference(w, args, kind, x)
            err[kind, kernel, phase] = float(np.abs(s.run(None, {"x": x})[0] - ref).max() / np.abs(ref).max())
    times = {(*k, p): [] for k in sessions for p in feeds}
    for _ in range(args.rounds):  # interleaved: each round times every build on every phase
        for phase, x in feeds.items():
            reps = args.reps if phase == "decode" else max(1, args.reps // 10)
            for k, s in sessions.items():
                t = time.perf_counter()
                for _ in range(reps):
                    s.run(None, {"x": x})
                times[(*k, phase)].append((time.perf_counter() - t) / reps)
    med = {k: median(v) for k, v in times.items()}
    rows = ["| layer | moe_kernel (lowering) | decode ms/token | prefill ms/prompt | prefill tokens/s | "
            "max rel. diff vs reference (decode, prefill) |", "|---|---|---|---|---|---|"]
    ratios = []
    for kind, kernel in sessions:
        d, p = med[kind, kernel, "decode"] * 1e3, med[kind, kernel, "prefill"] * 1e3
        how = "onnxruntime MoE op" if kernel == "auto" else "gathered experts"
        rows.append(f"| {kind} | {kernel} ({how}) | {d:.3f} | {p:.2f} | {args.prompt / p * 1e3:.0f} | "
                    f"{err[kind, kernel, 'decode']:.1e}, {err[kind, kernel, 'prefill']:.1e} |")
        if kernel == "auto":
            ratios.append(f"{kind}: decode {med[kind, 'gather', 'decode'] / med[kind, 'auto', 'decode']:.2f}x, "
                          f"prefill {med[kind, 'gather', 'prefill'] / med[kind, 'auto', 'prefill']:.2f}x")
    table = "\n".join(rows)
    print(table)
    print("speed-up of auto over gather: " + "; ".join(ratios))
    if args.no_write:
        return
    import onnxruntime

    size = 3 * args.experts * args.hidden * args.inter * 4 / 1e6
    cmd = "python benchmarks/moe_onnx_kernels.py " + " ".join(sys.argv[1:])
    body = (f"Command: `{cmd.strip()}` (commit {git_rev()}, {time.strftime('%Y-%m-%d')}). Machine: {machine()}; "
            f"onnxruntime {onnxruntime.__version__}, {args.threads} intra-op threads, CPU.\n\n"
            f"One MoE layer, random weights, fp32: {args.experts} experts, top-{args.top_k}, hidden {args.hidden}, "
            f"expert FFN {args.inter} ({size:.0f} MB of experts); gpt_oss: biased router and experts, clamped "
            f"SwiGLU (alpha 1.702, limit 7); mixtral: silu(gate) * up, no biases. Decode: one token; prefill: a "
            f"{args.prompt}-token prompt. Medians of {args.rounds} interleaved rounds. Quality: each output's "
            f"largest difference from edgec's numpy reference, relative to the output's largest magnitude.\n\n"
            f"{table}\n\nSpeed-up of moe_kernel=auto (onnxruntime's MoE op) over gathering: {'; '.join(ratios)}. "
            f"The backend uses onnxruntime's op wherever it is exact (softmax top-k routers with SwiGLU experts, "
            f"fp32: Mixtral, Qwen-MoE, GPT-OSS, DeepSeek-V2; its CPU kernel takes gate/up interleaved only, "
            f"written as a reordered copy at build) and gathers otherwise (sigmoid/grouped/sparsemixer routers, "
            f"a routed scaling, GELU experts, quantized or fp16 experts).")
    write_section("Mixture-of-experts on onnxruntime: onnxruntime's MoE op vs gathered experts", body)


if __name__ == "__main__":
    main()
