"""examples/ as a user runs them: examples/c built by its Makefile against a C artifact (static and
shared, out of tree) gives the same greedy tokens as edgec-run and Python, in both of its generation
paths; examples/python/generate.py builds, generates and scores; examples/cli.sh runs end to end."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgec
from helpers import IDS

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
N = 12
PROMPT = "Hello world"
QEMU = shutil.which("qemu-aarch64")
CROSS = shutil.which("aarch64-linux-gnu-gcc")
TEXT = "The quick brown fox jumps over the lazy dog. It's a truth universally acknowledged.\n" * 8


def bpe_copy(model: Path, out: Path) -> Path:
    """model with a BPE tokenizer of the same vocabulary and ids (merges none): the C tokenizer reads
    BPE only, and tiny.py's tokenizer is WordLevel."""
    import transformers
    from tokenizers import Tokenizer, decoders, models

    from tiny import SPECIALS, VOCAB_CHARS

    shutil.copytree(model, out, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(SPECIALS + list(VOCAB_CHARS))}, [], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                         eos_token="</s>").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bpe_llama(tiny_llama, tmp_path_factory):
    return bpe_copy(tiny_llama, tmp_path_factory.mktemp("hf") / "tiny-llama-bpe")


@pytest.fixture(scope="module")
def artifact(bpe_llama, tmp_path_factory):
    return edgec.build(bpe_llama, tmp_path_factory.mktemp("art") / "c-int4", backend="c", recipe="int4-rtn")


def make(*args, check=True):
    proc = subprocess.run(["make", "-C", str(EXAMPLES / "c"), *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def programs(artifact, tmp_path_factory):
    """generate (libedgec.a) and generate-shared (libedgec.so), built outside the repository."""
    build = tmp_path_factory.mktemp("examples-c") / "out"
    make(f"ARTIFACT={artifact}", f"BUILD={build}", "all", "shared")
    return build


def run(cmd, code=0):
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, (cmd, proc.stdout, proc.stderr)
    return proc


def ids_of(proc) -> list[int]:
    return [int(t) for t in proc.stdout.split()]


def test_makefile_links_static_and_shared(programs, artifact):
    static, shared = programs / "generate", programs / "generate-shared"
    assert static.is_file() and shared.is_file()
    dyn = {p: run(["readelf", "-d", p]).stdout for p in (static, shared)}
    assert "libedgec" not in dyn[static]  # the model and runtime are inside the program
    assert "[libedgec.so]" in dyn[shared] and f"[{artifact / 'model'}]" in dyn[shared]  # found by its rpath
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run([shared, artifact, "--ids", "5,6", "-n", "3"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and len(proc.stdout.split()) == 3, proc.stderr


@pytest.mark.parametrize("program", ["generate", "generate-shared"])
@pytest.mark.parametrize("loop", [False, True], ids=["generate_ids", "loop"])
def test_greedy_ids_match_edgec_run_and_python(program, loop, programs, artifact):
    want = edgec.load(artifact).generate(IDS, N)
    assert len(want) == N and not set(want) & {2}  # no end token: all N are printed
    idlist = ["--ids", ",".join(map(str, IDS)), "-n", N]
    assert ids_of(run([artifact / "model" / "edgec-run", artifact, *idlist])) == want
    proc = run([programs / program, artifact, *idlist, *(["--loop"] if loop else [])])
    assert ids_of(proc) == want
    assert f"{len(IDS)} prompt tokens, {N} new: prefill" in proc.stderr
    if loop:
        logprob = float(proc.stderr.split("mean log-probability of the new tokens ")[1].split()[0])
        assert -math.log(75) < logprob < 0  # greedy picks beat the uniform's log(1/vocab)


@pytest.mark.parametrize("loop", [False, True], ids=["generate", "loop"])
def test_text_matches_edgec_run_and_python(loop, programs, artifact):
    model = edgec.load(artifact)
    new = model.generate(model.encode(PROMPT), 20)
    want = model.tokenizer.decode([t for t in new if t not in model.eos_token_ids], skip_special_tokens=False)
    assert want.strip()
    theirs = run([artifact / "model" / "edgec-run", artifact, "-p", PROMPT, "-n", 20]).stdout
    ours = run([programs / "generate", artifact, "-p", PROMPT, "-n", 20, *(["--loop"] if loop else [])])
    assert ours.stdout == theirs == want + "\n"
    assert f" {len(new)} new: " in ours.stderr  # the end token counts, as in edgec_generate


def test_sampling_follows_the_seed(programs, artifact):
    def sample(seed, binary=programs / "generate"):
        return ids_of(run([binary, artifact, "--ids", "5,17,33", "-n", 32, "--temperature", "1.5", "--top-k", 50,
                           "--top-p", "0.95", "--seed", seed]))

    first = sample(1)
    assert first == sample(1) == sample(1, artifact / "model" / "edgec-run")
    assert first != sample(2)
    assert first != ids_of(run([programs / "generate", artifact, "--ids", "5,17,33", "-n", 32]))  # not greedy


def test_errors_carry_the_api_message(programs, artifact, tmp_path):
    gen = programs / "generate"
    for args, code, needle in (([tmp_path / "nope", "-p", "x"], 1, "cannot open"),
                               ([artifact, "--ids", "5,100000"], 1, "outside the vocabulary"),
                               ([artifact, "--ids", "5,100000", "--loop"], 1, "outside the vocabulary"),
                               ([artifact, "--ids", ",".join(map(str, IDS)), "--context", 8], 1, "fill the context"),
                               ([artifact, "-p", "x", "--top-p", 2], 2, "--top-p"),
                               ([artifact, "-p", "x", "--bogus", 1], 2, "unknown option --bogus"),
                               ([artifact, "--ids", "1,x"], 2, "--ids takes"),
                               ([artifact], 2, "either -p PROMPT or --ids")):
        proc = run([gen, *args], code)
        assert proc.stderr.startswith("generate: error: ") and needle in proc.stderr.splitlines()[0], proc.stderr
    # more new tokens than the context holds: capped, then all of them generated
    proc = run([gen, artifact, "--ids", "5,6,7", "--context", 10, "-n", 50])
    assert "8 new tokens fit the context of 10" in proc.stderr and len(proc.stdout.split()) == 8


def test_make_run_and_clean(programs, artifact, tmp_path):
    proc = make(f"ARTIFACT={artifact}", f"BUILD={tmp_path}", "run", "PROMPT=it's a test", "N=5", "ARGS=--loop")
    assert "11 prompt tokens, 5 new: " in proc.stderr and "mean log-probability" in proc.stderr
    make(f"ARTIFACT={artifact}", f"BUILD={tmp_path}", "clean")
    assert not (tmp_path / "generate").exists()
    bad = make(f"BUILD={tmp_path}", check=False)
    assert bad.returncode != 0 and "give the artifact" in bad.stderr
    bad = make(f"ARTIFACT={tmp_path}", f"BUILD={tmp_path}", check=False)
    assert bad.returncode != 0 and "ARTIFACT must be a folder written by edgec build --backend c" in bad.stderr


@pytest.mark.skipif(not (QEMU and CROSS), reason="needs qemu-user and gcc-aarch64-linux-gnu")
def test_cross_build_for_rpi5_under_qemu(bpe_llama, programs, artifact, tmp_path):
    """make CC=aarch64-linux-gnu-gcc LDFLAGS=-static against an rpi5 artifact, as the README says."""
    art = edgec.build(bpe_llama, tmp_path / "rpi5", device="rpi5", backend="c", recipe="int4-rtn")
    make(f"ARTIFACT={art}", f"BUILD={tmp_path / 'out'}", f"CC={CROSS}", "LDFLAGS=-static")
    binary = tmp_path / "out" / "generate"
    assert binary.read_bytes()[18] == 183  # e_machine: AArch64
    want = ids_of(run([QEMU, art / "model" / "edgec-run", art, "--ids", ",".join(map(str, IDS)), "-n", N]))
    assert len(want) == N
    assert ids_of(run([QEMU, binary, art, "--ids", ",".join(map(str, IDS)), "-n", N])) == want


def test_python_example_builds_generates_and_scores(bpe_llama, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "py-art"
    proc = run([sys.executable, EXAMPLES / "python" / "generate.py", bpe_llama, "-o", out, "--recipe", "int4-rtn",
                "-p", PROMPT, "-n", N, "--text", text, "--window", 32, "--max-tokens", 32, "--json"])
    r = json.loads(proc.stdout)
    model = edgec.load(out)
    assert model.manifest["backend"]["name"] == "c"
    assert r["prompt_ids"] == model.encode(PROMPT)
    assert r["ids"] == model.generate(r["prompt_ids"], N) and r["ids"]
    assert r["text"] == model.tokenizer.decode([t for t in r["ids"] if t not in model.eos_token_ids],
                                               skip_special_tokens=True)
    # one window: edgec.evaluate and the by-hand log-softmax compute the same perplexity
    assert r["windows"] == 1 and 1 < r["perplexity"] < 1e4
    assert r["first_window_perplexity"] == pytest.approx(r["perplexity"], rel=1e-4)
    # an existing artifact, streamed as text
    proc = run([sys.executable, EXAMPLES / "python" / "generate.py", "--artifact", out, "-p", PROMPT, "-n", N])
    assert proc.stdout == r["text"] + "\n" and "decode" in proc.stderr


def test_cli_walkthrough(bpe_llama, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "cli-art"
    env = {**os.environ, "RECIPE": "int4-rtn", "PROMPT": PROMPT, "N": "8", "TEXT": str(text), "WINDOW": "32",
           "MAX_TOKENS": "64", "PROMPT_TOKENS": "16", "NEW_TOKENS": "8"}
    proc = subprocess.run(["bash", EXAMPLES / "cli.sh", bpe_llama, out], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [ln[3:].split()[0] for ln in proc.stdout.splitlines() if ln.startswith("== ")]
    assert steps == ["edgec", "edgec", "edgec", "edgec", "edgec", f"{out}/model/edgec-run", "done:"]
    assert "(yours)" in proc.stdout                               # inspect: signed with the user's key
    assert "perplexity " in proc.stdout and "2 windows x 32 tokens" in proc.stdout and "KL " in proc.stdout
    assert "decode, per token:" in proc.stdout                    # profile
    assert "decode" in proc.stderr and "kernels" in proc.stderr  # run --stats, edgec-run --stats
    assert edgec.load(out).manifest["recipe"]["name"] == "int4-rtn"
