"""The C runtime under AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer), and its bad-input
contract: every bad input is an error code and a one-line message from the C API, a one-line
`edgec-run: error:` / `edgec: error:` from the command lines, never a crash.

A tiny artifact's own sources (model/src: its model.c and the runtime, its kernel flags and defines) are
compiled instrumented (-O1, warnings as errors) into tests/c/api_main.c, a driver of the whole C API, and
into edgec-run; the tokenizer driver runs on SmolLM2's tokenizer.json. Each must exit 0 with nothing from a
sanitizer on stderr, for an fp32 and an int4 artifact (int4-rtn: quantized linears on int8 activations), and
for int4 hot/cold artifacts (cold neurons read from cold.bin through the runtime's caches).
(The loaders' fuzzing: test_fuzz_c_loaders.py.)
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from c_sanitize import (DRIVERS, c_artifact, char_bpe_tokenizer, lsan_works, program, report_in,
                        require_sanitizers, san_env, smollm2_tokenizer, tokenizer_program, with_tokenizer)
from helpers import IDS

pytestmark = pytest.mark.timeout(600)

DATA = Path(os.environ.get("EDGEC_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
WIKI_TEST = DATA / "wikitext-2-raw" / "wiki.test.raw"
TEXT = ("The quick brown fox jumps over the lazy dog. It's 2024; isn't it?\n"
        "中文分词测试：我爱北京天安门。 日本語のテキスト。 Привет, мир! नमस्ते दुनिया\n"
        "emoji 😀😃 👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 Crème brûlée, naïve café\n"
        "def f(x):\n\tif x > 0:\n\t\treturn x ** 2  # comment\r\n   spaces   and\u00a0nbsp  \n\n")
SPECIAL = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"


def run_clean(cmd, timeout=300, env=None, **kw) -> subprocess.CompletedProcess:
    """Run an instrumented program; fail on any sanitizer report whatever its exit status."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env=env or san_env(), errors="replace", **kw)
    report = report_in(proc.stderr)
    assert report is None, f"{cmd[0]} {' '.join(map(str, cmd[1:4]))} ...: sanitizer report:\n{report}"
    return proc


@pytest.fixture(scope="module")
def san(tmp_path_factory):
    require_sanitizers(tmp_path_factory)


# hot/cold: int4 with its cold FFN neurons read from cold.bin (sparse: the resident gate selects them; stream:
# every one, through a cache smaller than a layer's cold part)
HOTCOLD = {"hotcold-sparse": {"memory_budget": "92%"}, "hotcold-stream": {"memory_budget": "90%", "offload": "stream"}}


@pytest.fixture(scope="module", params=["fp32", "int4", *HOTCOLD])
def art(request, san, tiny_llama, tmp_path_factory):
    recipe = {"fp32": "fp32"}.get(request.param, "int4-rtn")
    return c_artifact(tmp_path_factory, tiny_llama, recipe, **HOTCOLD.get(request.param, {}))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    text = TEXT + (WIKI_TEST.read_text(encoding="utf-8")[:20000] if WIKI_TEST.is_file() else TEXT * 20)
    path = tmp_path_factory.mktemp("san-text") / "text.txt"
    path.write_bytes(text.encode())
    return path


def bad_weights(art: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Folders whose weights.bin must not load: name -> (folder, what the message says)."""
    raw = (art / "model" / "weights.bin").read_bytes()
    header_bytes = struct.unpack_from("<Q", raw, 16)[0]
    flipped = bytearray(raw)
    flipped[header_bytes + (len(raw) - header_bytes) // 2] ^= 0x10
    version = bytearray(raw)
    version[8:12] = struct.pack("<I", 2)
    swapped = bytearray(raw)  # the first two tensors' table entries trade offsets: the checksum cannot see it
    first, second = 40, 40 + 24 + (struct.unpack_from("<I", raw, 40 + 20)[0] + 7) // 8 * 8
    swapped[first:first + 8], swapped[second:second + 8] = raw[second:second + 8], raw[first:first + 8]
    cases = {"truncated": (raw[:len(raw) // 2], "truncated"), "short": (raw[:20], "shorter than its header"),
             "magic": (b"NOTEDGEC" + raw[8:], "bad magic"), "version": (bytes(version), "version 2"),
             "checksum": (bytes(flipped), "checksum mismatch"),
             "table": (raw[:48] + b"\xff" * 64 + raw[112:], "tensor"),
             "swapped": (bytes(swapped), "overlaps"), "empty": (b"", "cannot read")}
    out = {}
    for name, (data, needle) in cases.items():
        d = root / name / "model"
        d.mkdir(parents=True)
        (d / "weights.bin").write_bytes(data)
        out[name] = (d.parent, needle)
    out["missing"] = (root / "no-such-artifact", "cannot open")
    (root / "folder" / "model" / "weights.bin").mkdir(parents=True)
    out["folder"] = (root / "folder", "not a regular")
    return out


def test_c_api_under_sanitizers(art, tmp_path_factory, tmp_path, text_file):
    exe = program(tmp_path_factory, art, "api_main", DRIVERS / "api_main.c")
    good = with_tokenizer(art, tmp_path / "art", char_bpe_tokenizer(art))
    smol = with_tokenizer(art, tmp_path / "smol", smollm2_tokenizer(tmp_path_factory))
    notok = with_tokenizer(art, tmp_path / "notok", None)
    bad = bad_weights(art, tmp_path / "bad")
    proc = run_clean([exe, f"art={good}", f"smol={smol}", f"notok={notok}", f"text={text_file}",
                      *(f"bad={d}" for d, _ in bad.values())], env=san_env(leaks=lsan_works(tmp_path_factory)))
    assert proc.returncode == 0 and "PASSED: 0 failed checks" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    for group in ("prefill-decode-sample", "two-contexts-two-threads", "errors", "text", "context-full", "options",
                  "smollm2-tokenizer", "no-tokenizer"):
        assert f"ok {group}\n" in proc.stdout, group
    said = {ln.split(":", 1)[0][4:]: ln.split(": ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("bad ")}
    for name, (d, needle) in bad.items():
        assert needle in said[str(d)], (name, said[str(d)])
    # the driver's SmolLM2 ids are what Hugging Face tokenizers gives
    from tokenizers import Tokenizer

    want = Tokenizer.from_file(str(smollm2_tokenizer(tmp_path_factory))).encode(
        text_file.read_bytes().decode(), add_special_tokens=False).ids
    assert f"smol-ids {len(want)}\n" in proc.stdout


def test_edgec_run_under_sanitizers(art, tmp_path_factory, tmp_path):
    exe = program(tmp_path_factory, art, "edgec-run", None)
    env = san_env(leaks=lsan_works(tmp_path_factory))
    ids = ",".join(map(str, IDS))
    proc = run_clean([exe, art, "--ids", ids, "-n", "12", "--threads", "2"], env=env)
    assert proc.returncode == 0, proc.stderr
    got = [int(t) for t in proc.stdout.split()]
    # the artifact's own (optimized, uninstrumented) program: the same greedy tokens
    plain = subprocess.run([art / "model" / "edgec-run", art, "--ids", ids, "-n", "12", "--threads", "2"],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and got == [int(t) for t in plain.stdout.split()] and len(got) == 12
    text_art = with_tokenizer(art, tmp_path / "art", char_bpe_tokenizer(art))
    for extra in (["--temperature", "0.8", "--top-k", "10", "--top-p", "0.9", "--seed", "18446744073709551615"],
                  ["--exact", "--stats"], ["--context", "16", "-n", "3"]):
        proc = run_clean([exe, text_art, "-p", "Hello there", "-n", "8", *extra], env=env)
        assert proc.returncode == 0, (extra, proc.stderr)
    # bad input: one line "edgec-run: error: ..." (usage errors add the usage line) and the documented status
    for args, code, needle in (
            ([tmp_path / "nope", "-p", "x"], 1, "cannot open"),
            ([art, "-p", "x", "--top-p", "2"], 2, "--top-p"),
            ([art, "-p", "x", "--temperature", "nan"], 2, "--temperature"),
            ([art, "-p", "x", "--seed", "-1"], 2, "--seed"),
            ([art, "--ids", "4294967301"], 2, "token ids from 0"),
            ([art, "--ids", "5,x"], 2, "comma-separated"),
            ([art, "--ids", ""], 2, "at least one"),
            ([art, "--ids", "5,100000"], 1, "outside the vocabulary"),
            ([art, "--ids", ",".join(["5"] * 20), "--context", "16"], 1, "do not fit the KV cache"),
            ([text_art, "-p", "a" * 40, "--context", "16"], 1, "do not fit the KV cache"),
            ([art, "-p", "hi"], 1, "no tokenizer"),
            ([text_art, "-p", "hi", "--chat"], 1, "")):
        proc = run_clean([exe, *args], env=env)
        first = proc.stderr.splitlines()[0] if proc.stderr else ""
        assert proc.returncode == code and first.startswith("edgec-run: error: ") and needle in first, \
            (args[1:], proc.returncode, proc.stderr)
        assert len(proc.stderr.splitlines()) == (2 if code == 2 else 1), proc.stderr


# mixture of experts (runtime/moe.c): every expert resident, and cold experts read from cold.bin through the
# context's expert slots (sparse: an LRU reused between calls; stream: every routed expert read each call)
# (DeepSeek-V3: sigmoid scores, a score bias, grouped top-k; 8 experts, 3 routed, 2 MoE layers)
MOE = {"moe": ("mixtral", {}), "moe-sparse": ("mixtral", {"memory_budget": "70%"}),
       "moe-stream": ("mixtral", {"memory_budget": "70%", "offload": "stream"}),
       "moe-deepseek-sparse": ("deepseek_v3", {"memory_budget": "70%"})}
ROUTING = {"mixtral": (4, 2), "deepseek_v3": (8, 3)}  # tiny_moe.py: experts, top_k


@pytest.mark.parametrize("kind", list(MOE))
def test_moe_under_sanitizers(kind, san, tmp_path_factory, tmp_path):
    """A tiny MoE's edgec-run instrumented: its greedy tokens equal the optimized program's, with the routers'
    experts and with a routing trace (EDGEC_MOE_TRACE, which also runs a prompt longer than the slots)."""
    import numpy as np

    from edgec.offload import write_routing_trace
    from tiny_moe import save_tiny_moe

    arch, options = MOE[kind]
    key = tmp_path_factory.getbasetemp() / f"san-{arch}"
    hf = key if (key / "config.json").exists() else save_tiny_moe(arch, key)
    art = c_artifact(tmp_path_factory, hf, "fp16", **options)
    exe = program(tmp_path_factory, art, "edgec-run", None)
    rng = np.random.default_rng(0)
    experts, k = ROUTING[arch]
    trace = write_routing_trace(tmp_path / "t.bin", np.stack([[rng.permutation(experts)[:k] for _ in range(2)]
                                                              for _ in range(40)]), experts)
    ids = ",".join(map(str, IDS * 3))
    for extra in ({}, {"EDGEC_MOE_TRACE": str(trace)}):
        env = {**san_env(leaks=lsan_works(tmp_path_factory)), **extra}
        proc = run_clean([exe, art, "--ids", ids, "-n", "10", "--threads", "2", "--stats"], env=env)
        assert proc.returncode == 0, proc.stderr
        plain = subprocess.run([art / "model" / "edgec-run", art, "--ids", ids, "-n", "10", "--threads", "2"],
                               capture_output=True, text=True, timeout=120, env={**os.environ, **extra})
        assert plain.returncode == 0 and proc.stdout.split() == plain.stdout.split() and len(plain.stdout.split()) == 10
        assert ("experts: " in proc.stderr) == (kind != "moe")


def test_tokenizer_under_sanitizers(san, tmp_path_factory, tmp_path, text_file):
    """tests/c/tokenizer_main.c on SmolLM2's tokenizer: Hugging Face's ids, every byte back."""
    from tokenizers import Tokenizer

    exe = tokenizer_program(tmp_path_factory, DRIVERS / "tokenizer_main.c", "tokenizer_main")
    smol = smollm2_tokenizer(tmp_path_factory)
    text = SPECIAL + text_file.read_bytes().decode() + SPECIAL
    f = tmp_path / "text.txt"
    f.write_bytes(text.encode())
    proc = run_clean([exe, smol, f, "1"], env=san_env(leaks=lsan_works(tmp_path_factory)))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    want = Tokenizer.from_file(str(smol)).encode(text, add_special_tokens=True).ids
    assert [int(t) for t in lines[0].split()] == want
    assert lines[1] == f"decode-bytes {len(text.encode())}"
    # arbitrary bytes and a tokenizer path that is a folder: answers, not crashes
    f.write_bytes(bytes(range(256)) * 4 + b"\xe4\xb8" + "😀".encode()[:3])
    proc = run_clean([exe, smol, f], env=san_env(leaks=lsan_works(tmp_path_factory)))
    assert proc.returncode == 0 and proc.stdout.split()[0].isdigit(), proc.stderr
    proc = run_clean([exe, tmp_path, f], env=san_env(leaks=lsan_works(tmp_path_factory)))
    assert proc.returncode == 1 and "not a regular file" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------------ the command lines


@pytest.fixture(scope="module")
def ctx16(tiny_llama, tmp_path_factory):
    """A C artifact with --max-context 16, built from the command line."""
    from edgec.cli import main

    out = tmp_path_factory.mktemp("ctx16") / "art"
    r = CliRunner().invoke(main, ["build", str(tiny_llama), "--backend", "c", "--recipe", "fp32",
                                  "--max-context", "16", "-q", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "model" / "c.json").read_text())["context_length"] == 16
    return out


def one_line_error(args) -> str:
    from edgec.cli import main

    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgec: error: "), r.stderr
    return lines[0]


def test_edgec_run_prompt_over_the_context(ctx16):
    msg = one_line_error(["run", str(ctx16), "-p", "a" * 40])
    assert "40 tokens" in msg and "context is 16" in msg
    one_line_error(["run", str(ctx16), "-p", "a" * 16])  # the prompt must leave a row to generate into


@pytest.mark.parametrize("args,needle", [
    (["--temperature", "nan"], "temperature"), (["--temperature", "-1"], "temperature"),
    (["--seed", "-5"], "seed"), (["--top-p", "0"], "top-p"), (["--top-k", "-2"], "top-k"),
    (["-n", "0"], "max-new-tokens"), (["--threads", "0"], "threads")])
def test_edgec_run_bad_options(ctx16, args, needle):
    assert needle in one_line_error(["run", str(ctx16), "-p", "hi", *args])


def test_edgec_run_stops_at_the_context(ctx16):
    """More new tokens than the context holds: the generation ends at the context, exit 0 (edgec run's
    documented behaviour)."""
    from edgec.cli import main

    r = CliRunner().invoke(main, ["run", str(ctx16), "-p", "hello", "-n", "40"])
    assert r.exit_code == 0, r.output
    assert 1 <= len(r.stdout.strip()) <= 16 - 5


def test_c_edgec_run_prompt_over_the_context(ctx16, tmp_path):
    """The artifact's own edgec-run (no Python): a prompt over the compiled context is one line, status 1."""
    binary = ctx16 / "model" / "edgec-run"
    text_art = with_tokenizer(ctx16, tmp_path / "art", char_bpe_tokenizer(ctx16))
    for args in (["-p", "a" * 40], ["--ids", ",".join(["5"] * 17)], ["--ids", ",".join(["5"] * 17), "--context", "99"]):
        proc = subprocess.run([str(binary), str(text_art), *args], capture_output=True, text=True, timeout=60)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith("edgec-run: error: ") and "do not fit the KV cache" in lines[0], lines
        assert "of 16 used" in lines[0]
