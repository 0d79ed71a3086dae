"""The `edgec` command line: build, run, eval, inspect, profile, compare, sweep, activations, devices, recipes.

Every command maps onto the Python API (edgec.build, edgec.load, edgec.evaluate). User errors
(EdgecError) print one line to stderr and exit 2; progress goes to stderr so
stdout carries only results (generated text, --json objects).
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import EdgecError


def _fail(msg: str, code: int = 2):
    click.echo(f"edgec: error: {msg}", err=True)
    sys.exit(code)


def user_errors(fn):
    """Turn EdgecError (and Ctrl-C) into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgecError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def _progress(quiet: bool):
    if quiet:
        return None
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        click.echo(f"[{time.perf_counter() - t0:6.1f}s] {msg}", err=True)

    return say


def _quiet_libraries(quiet: bool = True) -> None:
    """Silence library warnings and, when quiet, the progress bars libraries draw themselves
    (transformers' GGUF reader uses tqdm directly, outside its own progress-bar switch)."""
    import logging
    import os
    import warnings

    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgec")
def main():
    """edgec: compile a Hugging Face causal LM into an artifact that runs on a device."""


def trust_options(fn):
    """--trust KEY (repeatable) and --allow-unsigned, for every command that runs an artifact."""
    fn = click.option("--allow-unsigned", is_flag=True,
                      help="Run an artifact with native code (TVM, C) even if no trusted key signed it: "
                      "it is code, run it only if you trust where it came from.")(fn)
    return click.option("--trust", "trust", multiple=True, type=click.Path(path_type=Path), metavar="KEY",
                        help="Also trust artifacts signed by this public key (a .pub or PEM file; "
                        "repeatable). Your own key and those in the config folder's trusted/ always are.")(fn)


def _on_sigterm() -> None:
    """SIGTERM (a killed job, a CI timeout) unwinds like Ctrl-C, so a build removes its temp folder."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. an embedding application's worker)
        pass


def _recipe_help() -> str:
    from .recipes import list_recipes

    return "Recipe name or .toml/.yaml file. Named: " + ", ".join(list_recipes()) + \
        " (default: `source` for an already quantized GGUF, else the device's)."


@main.command()
@click.argument("model", required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Artifact directory (default: build/<model>-<recipe>).")
@click.option("--device", default="host", show_default=True, help="Device profile (see `edgec devices`).")
@click.option("--backend", default=None, help="Backend (default: the device's): onnx, tvm, c (the embedded "
              "C runtime), reference.")
@click.option("--recipe", default=None, help=_recipe_help())
@click.option("--calib", default=None, help="Calibration text: a file, a folder of .txt files, or "
              "hf:DATASET[:CONFIG]:SPLIT (needed by gptq, awq, smoothquant, wanda, sparsegpt, ...).")
@click.option("--calib-samples", type=int, default=None, help="Calibration windows (default 128).")
@click.option("--calib-seqlen", type=int, default=None, help="Tokens per calibration window (default 512).")
@click.option("--dump-ir", type=click.Path(path_type=Path), default=None,
              help="Write the IR after every pass into this folder.")
@click.option("--no-fuse", is_flag=True, help="Skip the fusion passes (merged linears, add+rms_norm, "
              "rotary tables), e.g. to measure what they gain.")
@click.option("--max-context", type=int, default=None,
              help="Cap the context length in tokens (default: the model's); bounds the KV cache.")
@click.option("--backend-opt", "backend_opts", multiple=True, metavar="KEY=VALUE",
              help="A backend option, over the device profile's and the recipe's [backend.<name>] "
              "tables (repeatable). onnx: accuracy_level, opset, providers, intra_op_threads, ...; "
              "tvm: tune_minutes=M (MetaSchedule on this machine, log kept in model/tune/), "
              "tune_log=ARTIFACT (reuse its tuning log); c: int8_activations, huge_pages, profile=1 (per-op "
              "timers). Unknown keys are refused with the valid ones listed.")
@click.option("--memory-budget", default=None, metavar="SIZE",
              help="Hot/cold neuron offloading (C backend): hold the weights in SIZE of memory (60MB, 1.5GiB, or "
              "50%% of the weights); cold FFN neurons are read from model/cold.bin on demand. With --calib the "
              "activation profile picks the hot neurons. Mixture-of-experts models: whole experts, the most often "
              "routed ones (the profile's) resident, the rest read through a cache of expert slots.")
@click.option("--offload", type=click.Choice(["sparse", "stream"]), default=None,
              help="With --memory-budget: sparse (default: read only the cold neurons a token activates) or "
              "stream (read every cold neuron each token: the dense-streaming baseline; for experts: no expert "
              "resident, every routed one read each call).")
@click.option("--sparsity-budget", default=None, metavar="PCT",
              help="CATS activation sparsity: per-layer thresholds chosen for this perplexity increase on the "
              "calibration text (e.g. 5%%); needs --calib.")
@click.option("--force", is_flag=True, help="Replace an existing edgec artifact at OUTPUT even if it holds "
              "files edgec did not put there (they are deleted). Never replaces anything that is not a "
              "verified edgec artifact.")
@click.option("--sign", "sign", type=click.Path(path_type=Path), default=None, metavar="KEY",
              help="Sign with this Ed25519 private key (PEM or OpenSSH) instead of your own key, which is "
              "created on first use in the config folder ($EDGEC_CONFIG_DIR or ~/.config/edgec).")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@user_errors
def build(model, output, device, backend, recipe, calib, calib_samples, calib_seqlen, dump_ir, no_fuse,
          max_context, backend_opts, memory_budget, offload, sparsity_budget, force, sign, quiet, as_json):
    """Compile MODEL (a Hugging Face folder, a .gguf file, or nothing for the
    embedded SmolLM2-135M-Instruct) into an artifact."""
    _quiet_libraries(quiet or as_json)
    _on_sigterm()
    from .artifact import load_manifest
    from .pipeline import build as do_build

    out = do_build(model, output, device=device, backend=backend, recipe=recipe,
                   progress=_progress(quiet or as_json), dump_ir=dump_ir, calib=calib,
                   calib_samples=calib_samples, calib_seqlen=calib_seqlen, fuse=not no_fuse,
                   max_context=max_context, backend_options=list(backend_opts), force=force, sign=sign,
                   memory_budget=memory_budget, offload=offload, sparsity_budget=sparsity_budget)
    m = load_manifest(out, verify=False)
    if as_json:
        click.echo(json.dumps({"artifact": str(out), "total_size": m["total_size"],
                               "build_seconds": m["build"]["seconds"], "backend": m["backend"]["name"],
                               "device": m["device"]["name"], "recipe": m["recipe"]["name"]}))
    else:
        click.echo(str(out))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-p", "--prompt", required=True, help="Prompt text.")
@click.option("-n", "--max-new-tokens", default=128, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, type=int, help="0 = off.")
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--seed", default=None, type=int, help="Sampling seed.")
@click.option("--chat", is_flag=True, help="Apply the model's chat template to the prompt.")
@click.option("--threads", default=None, type=int, help="Threads for the backend.")
@click.option("--stats", is_flag=True, help="Print prefill/decode speed to stderr.")
@trust_options
@user_errors
def run(artifact, prompt, max_new_tokens, temperature, top_k, top_p, seed, chat, threads, stats, trust,
        allow_unsigned):
    """Generate a continuation of PROMPT with ARTIFACT, streamed to stdout."""
    _quiet_libraries()
    from .runtime import Detokenizer, load
    from .sampling import check_options

    if max_new_tokens <= 0:
        raise EdgecError(f"--max-new-tokens must be > 0, got {max_new_tokens}")
    check_options(temperature, top_k, top_p)
    model = load(artifact, threads=threads, trusted_keys=trust, allow_unsigned=allow_unsigned)
    ids = model.encode(prompt, chat=chat)
    detok = Detokenizer(model.tokenizer)  # per-token work independent of the text so far
    out: list[int] = []
    t0 = time.perf_counter()
    t_first = None
    for t in model.stream(ids, max_new_tokens, temperature, top_k, top_p, seed):
        if t_first is None:
            t_first = time.perf_counter()
        out.append(t)
        if t in model.eos_token_ids:
            break
        piece = detok.add(t)
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    t1 = time.perf_counter()
    sys.stdout.write("\n")
    if stats and t_first is not None:
        decode = (len(out) - 1) / (t1 - t_first) if len(out) > 1 else 0.0
        click.echo(f"prompt {len(ids)} tokens in {t_first - t0:.3f}s; "
                   f"{len(out)} new tokens, decode {decode:.1f} tokens/s", err=True)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--trust", "trust", multiple=True, type=click.Path(path_type=Path), metavar="KEY",
              help="Also count this public key as trusted when showing the signer.")
@user_errors
def inspect(artifact, as_json, trust):
    """Show an artifact's manifest, signer, sizes and graph summary (verifies every file; runs nothing)."""
    from .artifact import open_artifact, trust_of

    art = open_artifact(artifact)
    m, status = art.manifest, trust_of(art, trust)
    art.close()
    signer = f"{art.signer} ({status})" if art.signer else "none (unsigned)"
    if as_json:
        click.echo(json.dumps({**m, "signature": {"signer": art.signer, "trust": status,
                                                  "manifest_digest": art.digest}}, indent=2))
        return
    g, src = m["graph"], m["source"]
    click.echo(f"artifact     {artifact}  (format {m['format_version']}, edgec {m.get('edgec_version')})")
    click.echo(f"signer       {signer}{'  native code: runs only if trusted' if art.native else ''}")
    click.echo(f"manifest     {art.digest}")
    click.echo(f"source       {src['name']} ({src['architecture']}, {src['kind']}) sha256 {src['sha256'][:16]}...")
    click.echo(f"recipe       {m['recipe']['name']}: {m['recipe']['description']}")
    click.echo(f"device       {m['device']['name']}: {m['device']['description']}")
    click.echo(f"backend      {m['backend']['name']}")
    click.echo(f"parameters   {g['parameters']:,} ({g['weight_bytes'] / 1e6:.1f} MB of weights)")
    click.echo(f"context      {g['context_length']} tokens, {g['kv_layers']} KV-cached layers")
    click.echo(f"size         {m['total_size'] / 1e6:.1f} MB in {len(m['files'])} files")
    for rel, e in sorted(m["files"].items(), key=lambda kv: -kv[1]["size"])[:8]:
        click.echo(f"  {e['size'] / 1e6:10.2f} MB  {rel}")
    ops = ", ".join(f"{k} {v}" for k, v in g["op_counts"].items())
    click.echo(f"ops          {ops}")
    for v in g["inputs"][:3] + g["outputs"][:1]:
        click.echo(f"  {v['name']}: {v['dtype']}{v['shape']}")


@main.command("eval")
@click.argument("target", required=False)
@click.option("--reference", default=None, metavar="MODEL",
              help="Model for KL and top-1 agreement (default: the artifact's source model).")
@click.option("--no-reference", is_flag=True, help="Perplexity only (no reference model: faster).")
@click.option("--text", type=click.Path(path_type=Path), default=None,
              help="Evaluation text (default: WikiText-2 raw test split from $EDGEC_DATA_DIR "
              "or ../shared/data).")
@click.option("--max-tokens", type=int, default=None,
              help="Evaluate only this token prefix, rounded down to whole windows (default: all).")
@click.option("--window", type=int, default=512, show_default=True, help="Tokens per window.")
@click.option("--threads", default=None, type=int, help="Threads for the backend and torch.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@trust_options
@user_errors
def eval_(target, reference, no_reference, text, max_tokens, window, threads, quiet, as_json, trust,
          allow_unsigned):
    """Perplexity of TARGET (an artifact, a model folder, a .gguf, or nothing for
    the default model) on WikiText-2, with KL divergence and top-1 agreement
    against the source model."""
    _quiet_libraries(quiet or as_json)
    from .eval import evaluate

    if reference is not None and no_reference:
        raise EdgecError("pass either --reference or --no-reference, not both")
    r = evaluate(target, reference=False if no_reference else reference, text=text, max_tokens=max_tokens,
                 window=window, progress=_progress(quiet or as_json), threads=threads,
                 trusted_keys=trust, allow_unsigned=allow_unsigned)
    if as_json:
        click.echo(json.dumps(r.to_dict()))
        return
    wins = f"{r.windows} window{'s' * (r.windows != 1)} x {r.window} tokens"
    click.echo(f"perplexity   {r.perplexity:.4f}  ({wins}: {r.tokens:,} predicted of {r.text_tokens:,} "
               f"in {Path(r.text).name})")
    if r.reference is None:
        click.echo("KL, top-1    n/a (no reference; pass --reference MODEL)")
    else:
        click.echo(f"KL           {r.kl:.6f} nats/token vs {r.reference}")
        click.echo(f"top-1        {100 * r.top1_agreement:.2f}% agreement")
    if r.size_bytes is not None:
        bpw = f", {r.bits_per_weight:.2f} bits/weight ({r.weight_bytes / 1e6:.1f} MB of weights / " \
              f"{r.parameters / 1e6:.1f}M source parameters)" if r.bits_per_weight else ""
        click.echo(f"size         {r.size_bytes / 1e6:.1f} MB{bpw}")
    click.echo(f"time         {r.seconds:.1f} s")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt-tokens", default=64, show_default=True, type=click.IntRange(1),
              help="Prompt length of the prefill run.")
@click.option("--new-tokens", default=32, show_default=True, type=click.IntRange(2),
              help="Greedy tokens generated (decode steps = this - 1).")
@click.option("--threads", default=None, type=int, help="Threads for the backend.")
@click.option("--device", "devices", multiple=True, metavar="NAME",
              help="Also estimate for this device profile (repeatable; see `edgec devices`). This machine is "
              "always estimated beside its measurement.")
@click.option("--lengths", default="16,64,256", show_default=True, metavar="N,N,...",
              help="Prompt lengths for prefill and decode speed against the context ('' for none).")
@click.option("--html", "html", type=click.Path(path_type=Path), default=None, metavar="OUT.html",
              help="Also write a self-contained HTML report with plots (each plot also saved as a PNG beside it).")
@click.option("--instructions/--no-instructions", default=None,
              help="Count instructions per decoded token under qemu (aarch64 C builds; default: when the "
              "artifact cannot run here).")
@click.option("--top", default=12, show_default=True, type=click.IntRange(1), help="Op types listed per phase.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@trust_options
@user_errors
def profile(artifact, prompt_tokens, new_tokens, threads, devices, lengths, html, instructions, top, as_json, quiet,
            trust, allow_unsigned):
    """Prefill and decode speed of ARTIFACT on this machine, which operators and layers the time goes to
    (onnxruntime's profiler, the C runtime's timers, the Relax VM's hook), peak memory, and its place on
    this machine's measured roofline; with roofline estimates for this machine and each --device."""
    _quiet_libraries()
    from .profile import format_profile
    from .profile import profile as run_profile

    if html is not None:
        from .report import check_html_path

        check_html_path(html)
    try:
        lens = [int(x) for x in lengths.split(",") if x.strip()]
    except ValueError:
        raise EdgecError(f"--lengths must be whole numbers separated by commas, got {lengths!r}") from None
    if any(n < 1 for n in lens):
        raise EdgecError(f"--lengths must be positive, got {lengths!r}")
    p = run_profile(artifact, prompt_tokens=prompt_tokens, new_tokens=new_tokens, threads=threads,
                    trusted_keys=trust, allow_unsigned=allow_unsigned, lengths=lens, devices=devices,
                    instructions=instructions, progress=_progress(quiet or as_json))
    if html is not None:
        from .report import write_profile_html

        write_profile_html(p.to_dict(), html)
    click.echo(json.dumps(p.to_dict()) if as_json else format_profile(p, top))


@main.command()
@click.argument("target", required=False)
@click.option("--calib", default=None, help="Calibration text: a file or a folder of .txt files (default: "
              "WikiText-2's validation split from $EDGEC_DATA_DIR or ../shared/data).")
@click.option("--samples", type=int, default=None, help="Calibration windows (default 16).")
@click.option("--seqlen", type=int, default=None, help="Tokens per calibration window (default 256).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None, metavar="OUT.png",
              help="Also draw the mass-share and sparsity curves of every layer into this PNG.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-layer figures and the verdict as JSON.")
@user_errors
def activations(target, calib, samples, seqlen, plot_path, quiet, as_json):
    """How skewed the FFN neurons' activations of TARGET are (a model folder, a .gguf, nothing for the
    default model, or an artifact: its stored profile, else its source model's): per layer the share
    of activation mass of the top 10/20/50% of neurons, the thresholds giving 25-70% sparsity, and
    whether a static hot set of neurons (hot/cold offloading) pays."""
    _quiet_libraries(quiet or as_json)
    from . import activations as act
    from .calibration import MAX_SAMPLES, MAX_SEQLEN, read_text
    from .limits import check_int

    say = _progress(quiet or as_json) or (lambda msg: None)
    measure = calib is not None or samples is not None or seqlen is not None
    samples = check_int(act.DEFAULT_SAMPLES if samples is None else samples, "--samples", 1, MAX_SAMPLES)
    seqlen = check_int(act.DEFAULT_SEQLEN if seqlen is None else seqlen, "--seqlen", 2, MAX_SEQLEN)
    if plot_path is not None:
        if not plot_path.parent.is_dir():
            raise EdgecError(f"cannot write the plot {plot_path}: folder {plot_path.parent} does not exist")
        if plot_path.is_dir():
            raise EdgecError(f"cannot write the plot {plot_path}: it is a folder")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise EdgecError("--plot needs matplotlib: pip install matplotlib") from None

    model, profile = target, None
    if target is not None and (Path(target) / "manifest.json").is_file():
        from .artifact import open_artifact
        from .eval import artifact_source

        art = open_artifact(target)
        try:
            files = art.files()
            src = art.manifest["source"]
            if files.exists(act.PROFILE_FILE) and not measure:
                say(f"reading the activation profile stored in {target}")
                profile = act.ActivationProfile.from_json(files.read_bytes(act.PROFILE_FILE),
                                                          f"{target}/{act.PROFILE_FILE}")
                if profile.model.get("sha256") and src.get("sha256") and profile.model["sha256"] != src["sha256"]:
                    raise EdgecError(f"{target}/{act.PROFILE_FILE} is the profile of another model than the "
                                     "artifact's source (SHA-256 differs)")
            else:
                try:
                    source = artifact_source(art.manifest)
                except EdgecError:
                    raise EdgecError(f"{target} holds no activation profile and its source model "
                                     f"{src.get('path')} is not here (or not the one it was built from); "
                                     "pass the model folder or .gguf itself") from None
                model = None if source.kind == "default" else str(source.path)
        finally:
            art.close()
    elif target is not None and not Path(target).exists():
        raise EdgecError(f"{target!r} does not exist; pass a model folder, a .gguf file or an artifact directory")
    if profile is None:
        source = calib if calib is not None else str(act.default_calib_path())
        text = read_text(source)
        profile = act.profile_model(model, text, samples, seqlen, say, calib_name=Path(source).name)
    if plot_path is not None:
        act.plot(profile, plot_path, title=f"{profile.model.get('architecture')} FFN activations")
        say(f"wrote {plot_path}")
    click.echo(json.dumps(profile.summary()) if as_json else act.format_table(profile))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--measure", is_flag=True, help="Measure this machine's memory bandwidth and peak compute now "
              "(a few seconds; cached, and used by `host` from then on).")
@click.option("--threads", default=None, type=int, help="Threads for --measure (default: every CPU).")
@user_errors
def devices(as_json, measure, threads):
    """List the device profiles (`host`: this machine, its bandwidth and int8 peak as measured)."""
    from .devices import get_device, list_devices

    if measure:
        from .hostperf import host_figures

        h = host_figures(threads, refresh=True, progress=_progress(as_json))
        if not as_json:
            click.echo(f"host: {h.bandwidth_gbs:.1f} GB/s, {h.peak_fp32_gflops:.0f} fp32 GFLOP/s, "
                       f"{h.peak_int8_gops:.0f} int8 GOP/s on {h.threads} threads ({h.cpu})")
    devs = [get_device(n) for n in list_devices()]
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in devs], indent=2))
        return
    for d in devs:
        gpu = f", GPU {d.gpu_arch}" if d.gpu_arch else ""
        click.echo(f"{d.name:18s} {d.cores:3d} cores {d.memory_gb:6.1f} GiB "
                   f"{d.memory_bandwidth_gbs:7.1f} GB/s{gpu}  backend={d.default_backend} "
                   f"recipe={d.default_recipe}  {d.description}")


@main.command()
@user_errors
def recipes():
    """List the named recipes."""
    from .recipes import list_recipes

    for name, desc in list_recipes().items():
        click.echo(f"{name:20s} {desc}")


def _compare_options(fn):
    """Quality and speed options `compare` and `sweep` share (their rows are the same table)."""
    from .compare import SPEED_NEW, SPEED_PROMPT

    for option in reversed([
        click.option("--eval", "do_eval", is_flag=True, help="Evaluate now (perplexity, and KL against the source "
                     "model when it is here); the result is recorded for later runs."),
        click.option("--text", type=click.Path(path_type=Path), default=None, help="Evaluation text (default: "
                     "WikiText-2's test split from $EDGEC_DATA_DIR or ../shared/data); for compare without --eval: "
                     "show only evaluations recorded on this text."),
        click.option("--window", type=click.IntRange(2), default=512, show_default=True, help="Tokens per window."),
        click.option("--max-tokens", type=int, default=None, help="Evaluate only this token prefix, in whole windows."),
        click.option("--prompt-tokens", type=click.IntRange(1), default=SPEED_PROMPT, show_default=True,
                     help="Prompt length of the speed run (measured or estimated)."),
        click.option("--new-tokens", type=click.IntRange(2), default=SPEED_NEW, show_default=True,
                     help="Greedy tokens of the speed run."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object."),
        click.option("-q", "--quiet", is_flag=True, help="No progress on stderr."),
    ]):
        fn = option(fn)
    return fn


@main.command()
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--device", "devices", multiple=True, metavar="NAME",
              help="A row per artifact for this device (repeatable): host is measured here, others estimated. "
              "Default: measured here when the artifact runs here, else estimated for the device it was built for.")
@_compare_options
@click.option("--html", type=click.Path(path_type=Path), default=None, metavar="OUT.html",
              help="Also write a self-contained HTML report with the quality-vs-speed chart (and its PNG beside it).")
@click.option("--threads", default=None, type=int, help="Threads for the backend.")
@trust_options
@user_errors
def compare(artifacts, devices, do_eval, text, window, max_tokens, prompt_tokens, new_tokens, as_json, quiet, html,
            threads, trust, allow_unsigned):
    """ARTIFACTS side by side: size, bits per weight, perplexity and KL (with --eval, or as recorded by an
    earlier `edgec eval`/--eval), decode and prefill speed (measured or estimated), and the Pareto front of
    speed against quality per device. An artifact that fails gets a row with its error (exit status 1)."""
    _quiet_libraries(quiet or as_json)
    from .compare import compare as run_compare
    from .compare import format_compare
    from .limits import useful_threads

    if html is not None:
        from .report import check_html_path

        check_html_path(html)
    result = run_compare(artifacts, devices, evaluate=do_eval, text=text, window=window, max_tokens=max_tokens,
                         prompt_tokens=prompt_tokens, new_tokens=new_tokens, threads=useful_threads(threads),
                         trusted_keys=trust, allow_unsigned=allow_unsigned, progress=_progress(quiet or as_json))
    if html is not None:
        from .report import write_compare_html

        write_compare_html(result, html)
    click.echo(json.dumps(result) if as_json else format_compare(result))
    if any(r["error"] for r in result["rows"]):
        sys.exit(1)


@main.command()
@click.option("--model", default=None, help="A Hugging Face folder or .gguf (default: the embedded SmolLM2-135M).")
@click.option("--recipes", required=True, metavar="A,B,...", help="Recipes (names or files), comma-separated.")
@click.option("--devices", default="host", show_default=True, metavar="X,Y,...",
              help="Device profiles, comma-separated; host is measured here, others estimated.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Sweep folder: cells/<recipe>@<device>/{artifact,result.json}, sweep.json, sweep.html "
              "(default: build/sweep-<model>). Cells already done there for the same inputs are reused.")
@click.option("--profile", "do_profile", is_flag=True, help="Speed of every cell (host: measured; else estimated).")
@_compare_options
@click.option("--html", type=click.Path(path_type=Path), default=None, metavar="OUT.html",
              help="The HTML report (default: DIR/sweep.html).")
@click.option("--calib", default=None, help="Calibration text for calibrated recipes (gptq, awq, ...).")
@click.option("--calib-samples", type=int, default=None, help="Calibration windows (default 128).")
@click.option("--calib-seqlen", type=int, default=None, help="Tokens per calibration window (default 512).")
@click.option("--address", default=None, metavar="HOST:PORT",
              help="Run on the Ray cluster at this address (`ray start --head` prints it; the model, calibration "
              "text and DIR must be at the same paths on every node). Default: a local Ray on this machine.")
@click.option("--cpus-per-cell", type=click.IntRange(1), default=1, show_default=True,
              help="Ray CPUs per cell; its build, eval and speed run use that many threads.")
@click.option("--memory-per-cell", type=float, default=None, metavar="GB",
              help="Ray memory per cell, so a node runs only as many builds as its RAM holds (docs/sweep.md).")
@user_errors
def sweep(model, recipes, devices, output, do_profile, do_eval, text, window, max_tokens, prompt_tokens, new_tokens,
          as_json, quiet, html, calib, calib_samples, calib_seqlen, address, cpus_per_cell, memory_per_cell):
    """Build (and with --eval/--profile evaluate and time) every recipe for every device as Ray tasks, then
    print the compare table of all cells. A failed cell does not stop the others (exit status 1); run the
    same command again to retry the failed cells and reuse the others."""
    _quiet_libraries(quiet or as_json)
    _on_sigterm()
    from .compare import format_compare
    from .sweep import sweep as run_sweep

    data = run_sweep(model, recipes, devices, output, evaluate=do_eval, text=text, window=window,
                     max_tokens=max_tokens, profile=do_profile, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                     calib=calib, calib_samples=calib_samples, calib_seqlen=calib_seqlen, address=address,
                     cpus_per_cell=cpus_per_cell, memory_per_cell_gb=memory_per_cell, html=html,
                     progress=_progress(quiet or as_json))
    counts = {s: sum(c["status"] == s for c in data["cells"]) for s in ("ok", "cached", "failed")}
    if not (quiet or as_json):
        click.echo(f"{len(data['cells'])} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()) +
                   f"; {Path(data['output']) / 'sweep.json'}", err=True)
    click.echo(json.dumps(data) if as_json else format_compare(data["compare"]))
    if counts["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
