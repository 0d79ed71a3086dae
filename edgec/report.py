"""HTML reports for `edgec profile --html` and `edgec compare --html` (issue 17).

A report is one self-contained .html file (CSS inline, every plot an embedded base64 PNG) so it can be
attached to an issue or mailed as a single file; each plot also lands beside it as a PNG for slides.
matplotlib is imported only when a report is written, so the CLI starts without it, and only through
`Figure` + the Agg canvas: no pyplot global state, safe next to other plotting code.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
import tempfile
from pathlib import Path

from edgec.errors import EdgecError

NOT_MEASURED = "not measured"
PHASE_COLORS = {"load": "#9e9e9e", "prefill": "#1f77b4", "decode": "#2ca02c", "idle": "#ffbf00"}
PHASE_MARKERS = {"decode": "o", "prefill": "^"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1280px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}.facts{color:#555;margin-top:0}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top;white-space:nowrap}
td:last-child{white-space:normal}
th{background:#f2f2f2}.caption{color:#555;margin:.2em 0 .5em}.missing{color:#a00;font-style:italic}
img{max-width:100%;border:1px solid #eee}.estimate{color:#8a5a00;font-weight:bold}ul{margin:0;padding-left:1.2em}
"""
# Marks <body data-images-loaded="N"> once every embedded image decoded: lets a headless browser (and the
# tests) confirm the report renders, not only that the file was written.
_IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var ok = 0;
  document.querySelectorAll("img").forEach(function (img) { if (img.complete && img.naturalWidth > 0) ok++; });
  document.body.setAttribute("data-images-loaded", String(ok));
});
</script>"""


class _Raw(str):
    """A table cell already rendered as HTML (not escaped again)."""


def _e(value) -> str:
    return html.escape(str(value))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _num(value, digits: int = 1, unit: str = "") -> str:
    """A number for a table, or 'not measured' when the profile has none."""
    if _missing(value):
        return NOT_MEASURED
    return f"{value:,.{digits}f}" + (f" {unit}" if unit else "")


def _pct(share) -> str:
    return NOT_MEASURED if _missing(share) else f"{100 * share:.0f}%"


def _table(headers: list[str], rows: list[list]) -> str:
    """One HTML table; every cell is escaped unless it is _Raw."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _e(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, content: str, caption: str = "") -> str:
    cap = f'<p class="caption">{_e(caption)}</p>' if caption else ""
    return f"<h2>{_e(title)}</h2>{cap}{content}"


def check_html_path(out) -> Path:
    """Refuse a bad OUT before any slow work (profiling, plotting), so a typo costs nothing and leaves nothing."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise EdgecError(f"the report {out} must end in .html or .htm")
    if not out.parent.is_dir():
        raise EdgecError(f"the folder {out.parent} for the report {out.name} does not exist: create it first")
    if out.is_dir():
        raise EdgecError(f"the report {out} is a folder: name an .html file")
    return out


def _figure(figsize=(10, 4.5)):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise EdgecError("HTML reports need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(names) -> dict:
    """One stable colour per name (op type, device), the same in every plot of a report."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _plot_section(out: Path, pngs: dict, name: str, title: str, plotted, missing_caption: str) -> str:
    """A plot's PNG (queued for writing beside OUT) and its HTML section with the same PNG inline."""
    if plotted is None:
        return _section(title, f'<p class="missing">{_e(missing_caption)}</p>')
    fig, caption = plotted
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    pngs[out.with_name(f"{out.stem}-{name}.png")] = png
    img = f'<img alt="{_e(title)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    return _section(title, img, caption)


def _write_all(files: dict[Path, bytes]) -> list[Path]:
    """Every file goes to a temp name in its folder first and is renamed only when all are written,
    so a failure (full disk, killed process) never leaves a partial report."""
    temps: list[str] = []
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
        for tmp, path in zip(temps, files):
            os.replace(tmp, path)
    except OSError as e:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        raise EdgecError(f"cannot write the report {list(files)[-1]}: {e.strerror or e}") from None
    return list(files)


def _page(out: Path, pngs: dict, title: str, facts: list[tuple[str, object]], body: list[str]) -> list[Path]:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    line = " &middot; ".join(f"{_e(k)}: <b>{_e(v)}</b>" for k, v in facts + [("date", when)])
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
           f"<style>{_CSS}</style>{_IMAGE_CHECK}</head><body><h1>{_e(title)}</h1>"
           f'<p class="facts">{line}</p>{"".join(body)}</body></html>\n')
    return _write_all({**pngs, out: doc.encode("utf-8")})  # the HTML last: it appears only with its PNGs


def _notes(notes) -> str:
    items = "".join(f"<li>{_e(n)}</li>" for n in notes or [])
    return _section("Notes", f"<ul>{items}</ul>") if items else ""


# --- profile -------------------------------------------------------------------------------------------

def _time_plot(profile: dict, colors: dict):
    layers = profile.get("layers") or []
    if layers:
        totals: dict[str, float] = {}
        for layer in layers:
            for op, ms in layer.get("ops", {}).items():
                totals[op] = totals.get(op, 0.0) + float(ms)
        ops = sorted(totals, key=totals.get, reverse=True)  # the largest at the bottom of each bar
        fig = _figure()
        ax = fig.add_subplot()
        positions, bottom = range(len(layers)), [0.0] * len(layers)
        for op in ops:
            heights = [float(layer.get("ops", {}).get(op, 0.0)) for layer in layers]
            ax.bar(positions, heights, bottom=bottom, color=colors[op], label=op)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_xticks(list(positions), [str(layer.get("layer")) for layer in layers], fontsize=7)
        ax.set(xlabel="layer", ylabel="ms per decoded token")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        return fig, "Decode time per layer, one stacked bar per layer split by op type (ms per decoded token)."
    ops = profile.get("decode_ops") or []
    if not ops:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.barh([o["op"] for o in reversed(ops)], [o["ms"] for o in reversed(ops)],
            color=[colors[o["op"]] for o in reversed(ops)])
    ax.set(xlabel="ms per decoded token")
    return fig, "Decode time per op type (ms per decoded token); the per-layer split was not measured."


def _roofline_plot(profile: dict, colors: dict):
    from matplotlib.lines import Line2D

    roof = profile.get("roofline") or {}
    peak, bandwidth = roof.get("peak_gflops") or 0, roof.get("bandwidth_gbs") or 0
    points = [p for p in profile.get("roofline_ops") or []
              if (p.get("intensity") or 0) > 0 and (p.get("gflops") or 0) > 0]  # log axes: zeros cannot show
    if not points and not (peak > 0 and bandwidth > 0):
        return None
    fig = _figure((10, 5.5))
    ax = fig.add_subplot()
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)", ylabel="GFLOP/s")
    handles = []
    if peak > 0 and bandwidth > 0:
        ridge = peak / bandwidth
        xs = [p["intensity"] for p in points] + [ridge]
        lo, hi = min(xs) / 4, max(xs) * 4
        grid = [lo * (hi / lo) ** (i / 199) for i in range(200)]
        handles += ax.plot(grid, [min(peak, bandwidth * x) for x in grid], color="black", lw=1.5,
                           label=f"roof: {bandwidth:.1f} GB/s, {peak:.0f} GFLOP/s")
        ax.plot([ridge], [peak], "kD")
        ax.annotate(f"ridge {ridge:.2g} FLOP/B", (ridge, peak), xytext=(6, -14), textcoords="offset points",
                    fontsize=8)
    for p in points:
        ax.scatter(p["intensity"], p["gflops"], color=colors[p["op"]], s=36, alpha=0.8, edgecolors="black",
                   linewidths=0.3, marker=PHASE_MARKERS.get(p.get("phase"), "s"))
    flops, nbytes, achieved = (profile.get(k) or 0
                               for k in ("flops_per_token", "weight_bytes_per_token", "achieved_gflops"))
    if flops > 0 and nbytes > 0 and achieved > 0:
        handles += ax.plot([flops / nbytes], [achieved], "*", color="crimson", ms=14, label="whole decode step")
    handles += [Line2D([], [], ls="", marker=m, color="grey", label=phase) for phase, m in PHASE_MARKERS.items()]
    handles += [Line2D([], [], ls="", marker="s", color=colors[op], label=op)
                for op in _unique(p["op"] for p in points)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    source = roof.get("source") or "roof not measured"
    return fig, f"Roofline: achieved GFLOP/s of each op against its FLOP/byte, under the machine's roof ({source})."


def _memory_plot(profile: dict):
    from matplotlib.patches import Patch

    timeline = [e for e in profile.get("memory_timeline") or [] if len(e) >= 2]
    if not timeline:
        return None
    times, rss = [float(e[0]) for e in timeline], [float(e[1]) for e in timeline]
    phases = [e[2] if len(e) > 2 else "idle" for e in timeline]
    fig = _figure((10, 4))
    ax = fig.add_subplot()
    starts = [i for i in range(len(phases)) if i == 0 or phases[i] != phases[i - 1]]
    for i, start in enumerate(starts):
        end = times[starts[i + 1]] if i + 1 < len(starts) else times[-1]
        ax.axvspan(times[start], end, color=PHASE_COLORS.get(phases[start], "#dddddd"), alpha=0.25, lw=0)
    ax.plot(times, rss, color="black", lw=1.2)
    top = max(range(len(rss)), key=rss.__getitem__)
    ax.plot([times[top]], [rss[top]], "v", color="crimson", ms=10)
    ax.annotate(f"peak {rss[top]:.0f} MB", (times[top], rss[top]), xytext=(6, 6), textcoords="offset points")
    handles = [Patch(color=PHASE_COLORS.get(p, "#dddddd"), alpha=0.4, label=p) for p in _unique(phases)]
    if not _missing(profile.get("weights_mb")):
        handles.append(ax.axhline(profile["weights_mb"], color="grey", ls="--", lw=1, label="weights"))
    ax.set(xlabel="seconds since start", ylabel="RSS (MB)", ylim=(0, max(rss) * 1.15))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    return fig, "Resident memory (RSS) over the run, shaded by phase, with the peak marked."


def _prompt_plot(profile: dict):
    rows = sorted(profile.get("by_prompt_length") or [], key=lambda r: r["prompt_tokens"])
    if not rows:
        return None
    fig = _figure((10, 4))
    axes = fig.subplots(1, 2, sharex=True)
    lengths = [r["prompt_tokens"] for r in rows]
    for ax, key in zip(axes, ("prefill_tok_s", "decode_tok_s")):
        for source, style in ((key, "o-"), (f"estimated_{key}", "x--")):
            pts = [(r["prompt_tokens"], r[source]) for r in rows if not _missing(r.get(source))]
            if pts:
                ax.plot(*zip(*pts), style, label="estimate" if source != key else "measured")
        if max(lengths) >= 8 * max(min(lengths), 1):
            ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set(title=key.split("_")[0], xlabel="prompt tokens", ylabel="tokens/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    return fig, "Prefill and decode speed against prompt length: measured solid, estimated dashed."


def _scaled(value, factor: float):
    return None if _missing(value) else value / factor


def _summary_rows(p: dict) -> list[list]:
    roof = p.get("roofline") or {}
    rows = [
        ["prompt / new tokens", f"{p.get('prompt_tokens', NOT_MEASURED)} / {p.get('new_tokens', NOT_MEASURED)}"],
        ["prefill", f"{_num(p.get('prefill_tok_s'), 1, 'tok/s')} ({_num(p.get('prefill_ms'), 1, 'ms')})"],
        ["decode", f"{_num(p.get('decode_tok_s'), 1, 'tok/s')} ({_num(p.get('decode_ms_per_token'), 2, 'ms/token')})"],
        ["decode kernels / overhead per token",
         f"{_num(p.get('decode_kernel_ms'), 2, 'ms')} / {_num(p.get('decode_overhead_ms'), 2, 'ms')}"],
        ["peak memory", _num(p.get("peak_memory_mb"), 1, "MB")],
        ["weights", _num(p.get("weights_mb"), 1, "MB")],
        ["weight bytes per token", _num(_scaled(p.get("weight_bytes_per_token"), 1e6), 1, "MB")],
        ["FLOPs per token", _num(_scaled(p.get("flops_per_token"), 1e9), 3, "GFLOP")],
        ["achieved bandwidth", _num(p.get("achieved_gbs"), 2, "GB/s")],
        ["achieved compute", _num(p.get("achieved_gflops"), 2, "GFLOP/s")],
        ["share of the memory roof",
         f"{_pct(roof.get('bandwidth_share'))} of {_num(roof.get('bandwidth_gbs'), 1, 'GB/s')}"],
        ["share of the compute roof",
         f"{_pct(roof.get('compute_share'))} of {_num(roof.get('peak_gflops'), 1, 'GFLOP/s')}"],
        ["roof measured by", roof.get("source") or NOT_MEASURED],
    ]
    if not _missing(p.get("instructions_per_token")):
        note = f" ({p['instructions_note']})" if p.get("instructions_note") else ""
        rows.append(["instructions per token", f"{p['instructions_per_token']:,}{note}"])
    return rows


def _ops_table(ops, unit: str) -> str:
    if not ops:
        return f'<p class="missing">{NOT_MEASURED}</p>'
    return _table(["op type", "calls", unit, "share"],
                  [[o["op"], _num(o.get("calls"), 0), _num(o.get("ms"), 3), _pct(o.get("share"))] for o in ops])


def _estimates_table(estimates) -> str:
    if not estimates:
        return f'<p class="missing">{NOT_MEASURED}</p>'
    rows = []
    for est in estimates:
        bound = ", ".join(f"{k} {_pct(v)}" for k, v in (est.get("bound") or {}).items())
        sources = (est.get("sources") or {}).items()
        sources = _Raw("<ul>" + "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in sources) + "</ul>")
        label = _Raw(f'<span class="estimate">{_e(est.get("label") or "estimate")}</span>')
        rows.append([est.get("device", ""), est.get("description", ""), label,
                     _num(est.get("decode_tok_s")), _num(est.get("prefill_tok_s")), _num(est.get("memory_mb")),
                     _num(est.get("bandwidth_gbs")), _num(est.get("peak_gflops")), bound or NOT_MEASURED, sources])
    return _table(["device", "description", "label", "decode tok/s", "prefill tok/s", "memory MB", "bandwidth GB/s",
                   "peak GFLOP/s", "bound by", "sources"], rows)


def write_profile_html(profile: dict, out: str | Path) -> list[Path]:
    """Writes OUT (one self-contained .html: CSS inline, every plot embedded as a base64 PNG) and
    each plot also as a PNG beside it (OUT's stem + '-<plot>.png'). Returns the paths written.
    A plot with no data is left out (no PNG) and its section says 'not measured'."""
    out = check_html_path(out)
    ops = [o["op"] for key in ("decode_ops", "prefill_ops", "roofline_ops") for o in profile.get(key) or []]
    colors = _colors(_unique(ops + [op for layer in profile.get("layers") or [] for op in layer.get("ops", {})]))
    pngs: dict[Path, bytes] = {}
    body = [_section("Summary", _table(["figure", "value"], _summary_rows(profile)))]
    for name, title, plotted in (
        ("time", "Decode time per layer and op type", _time_plot(profile, colors)),
        ("roofline", "Roofline", _roofline_plot(profile, colors)),
        ("memory", "Memory over time", _memory_plot(profile)),
        ("prompt", "Speed against prompt length", _prompt_plot(profile)),
    ):
        body.append(_plot_section(out, pngs, name, title, plotted, f"{title}: {NOT_MEASURED}"))
    body += [_section("Decode time per op type", _ops_table(profile.get("decode_ops"), "ms/token")),
             _section("Prefill time per op type", _ops_table(profile.get("prefill_ops"), "ms")),
             _section("Estimates for other devices (estimate, not measured)",
                      _estimates_table(profile.get("estimates")),
                      "Computed from this profile and each device's figures, not run on the device; "
                      "each figure's source is listed."),
             _notes(profile.get("notes"))]
    facts = [("artifact", profile.get("artifact", "")), ("backend", profile.get("backend", "")),
             ("device", profile.get("device", "")), ("threads", profile.get("threads") or "default")]
    return _page(out, pngs, "edgec profile", facts, body)


# --- compare -------------------------------------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (maximise x = tokens/s, minimise y = perplexity or KL).
    Equal points do not dominate each other, so ties all stay on the front."""
    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def _quality_plot(compare: dict, metric: str):
    from matplotlib.lines import Line2D

    rows = [r for r in compare.get("rows") or []
            if not r.get("error") and not _missing(r.get("decode_tok_s")) and not _missing(r.get(metric))]
    if not rows:
        return None
    devices = _unique(r.get("device", "") for r in rows)
    colors = _colors(devices)
    area_per_mb = 800 / max(max(r.get("size_mb") or 0 for r in rows), 1e-9)
    fig = _figure((10, 6))
    ax = fig.add_subplot()
    for device in devices:
        sel = [r for r in rows if r.get("device", "") == device]
        xs, ys = [r["decode_tok_s"] for r in sel], [r[metric] for r in sel]
        sizes = [max(area_per_mb * (r.get("size_mb") or 0), 10) for r in sel]
        ax.scatter(xs, ys, s=sizes, color=colors[device], alpha=0.5, edgecolors="none")
        front = sorted(pareto_front(list(zip(xs, ys))), key=lambda i: xs[i])
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="pre", color=colors[device], lw=1.5)
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=[sizes[i] for i in front],
                   facecolors="none", edgecolors=colors[device], linewidths=2)
        for r, x, y, size in zip(sel, xs, ys, sizes):
            clear = math.sqrt(size) / 2 * 0.75 + 3  # points: just off the marker's edge
            ax.annotate(r.get("name", ""), (x, y), xytext=(clear, clear), textcoords="offset points", fontsize=8)
    label = "perplexity" if metric == "perplexity" else "KL divergence vs the source model"
    ax.set(xlabel="decode tokens/s (higher is better)", ylabel=f"{label} (lower is better)")
    handles = [Line2D([], [], ls="", marker="o", ms=9, color=colors[d], alpha=0.6, label=d) for d in devices]
    handles.append(Line2D([], [], color="black", lw=1.5, marker="o", mfc="none", label="Pareto front"))
    ax.legend(handles=handles, fontsize=8, title="device")
    return fig, (f"{label.capitalize()} against decode speed; marker area is proportional to size; the step line "
                 "and outlined markers are each device's Pareto front. Rows without speed or quality are in the "
                 "table only.")


def write_compare_html(compare: dict, out: str | Path) -> list[Path]:
    """Same for `edgec compare`: the table and a quality-vs-speed-vs-size chart with the Pareto front marked."""
    out = check_html_path(out)
    metric = compare.get("quality_metric") or "perplexity"
    rows = compare.get("rows") or []
    headers = ["name", "recipe", "backend", "device", "size MB", "bits/weight", "perplexity", "KL",
               "decode tok/s", "prefill tok/s", "speed"]
    errors = any(r.get("error") for r in rows)
    table = [[r.get("name", ""), r.get("recipe", ""), r.get("backend", ""), r.get("device", ""),
              _num(r.get("size_mb")), _num(r.get("bits_per_weight"), 2), _num(r.get("perplexity"), 2),
              _num(r.get("kl"), 4), _num(r.get("decode_tok_s")), _num(r.get("prefill_tok_s")),
              r.get("speed_source") or NOT_MEASURED] + ([r.get("error") or ""] if errors else []) for r in rows]
    pngs: dict[Path, bytes] = {}
    body = [_section("Results", _table(headers + (["error"] if errors else []), table)),
            _plot_section(out, pngs, "quality", "Quality against speed and size", _quality_plot(compare, metric),
                          f"no row has both decode speed and {metric}: chart {NOT_MEASURED}"),
            _notes(compare.get("notes"))]
    facts = [("quality metric", metric), ("devices", ", ".join(compare.get("devices") or []) or NOT_MEASURED)]
    return _page(out, pngs, "edgec compare", facts, body)
