"""`edgec eval` / `edgec.evaluate`: the perplexity protocol, KL/top-1 vs the source, CLI, bad input.

The tiny tokenizer is character-level ASCII, so a generated text of a few
thousand characters gives dozens of 64-token windows (the tiny model's context
is 128, so these tests use window=64 instead of the real protocol's 512).
"""
import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgec
from edgec.cli import main
from edgec.eval import default_text_path, evaluate, evaluate_many

WINDOW = 64
KEYS = {"perplexity", "kl", "top1_agreement", "tokens", "windows", "size_bytes", "bits_per_weight",
        "parameters", "weight_bytes", "reference", "nll", "seconds"}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """About 3,000 characters with CRLF line ends (which the protocol normalizes to LF)."""
    rng = random.Random(0)
    words = "the cat sat on a mat; Edge devices run small models. 42 hello, world! it's fine".split()
    lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(60)]
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_bytes("\r\n".join(lines).encode())
    return path


@pytest.fixture(scope="module")
def result(tiny_artifact, text_file):
    return evaluate(tiny_artifact, text=text_file, window=WINDOW)


def _hand_perplexity(model, text: str, window: int, n_windows: int | None = None) -> tuple[float, int]:
    ids = model.tokenizer(text.replace("\r\n", "\n"), add_special_tokens=False)["input_ids"]
    n = len(ids) // window if n_windows is None else n_windows
    nll, count = 0.0, 0
    for i in range(n):
        w = ids[i * window:(i + 1) * window]
        logp = torch.log_softmax(torch.tensor(model.logits(w), dtype=torch.float64), -1)
        nll -= logp[torch.arange(window - 1), torch.tensor(w[1:])].sum().item()
        count += window - 1
    return float(np.exp(nll / count)), count


def test_perplexity_matches_hand_computation(result, tiny_artifact, text_file):
    model = edgec.load(tiny_artifact)
    text = text_file.read_bytes().decode()
    n_chars = len(text.replace("\r\n", "\n"))  # one token per character
    assert result.text_tokens == n_chars
    assert result.windows == n_chars // WINDOW  # the last partial window is dropped
    assert result.tokens == result.windows * (WINDOW - 1)
    ppl, count = _hand_perplexity(model, text, WINDOW)
    assert count == result.tokens
    assert result.perplexity == pytest.approx(ppl, rel=1e-9)
    assert result.nll == pytest.approx(np.log(ppl), rel=1e-9)


def test_max_tokens_rounds_down_to_whole_windows(tiny_artifact, text_file):
    r = evaluate(tiny_artifact, text=text_file, window=WINDOW, max_tokens=3 * WINDOW + 10, reference=False)
    assert r.windows == 3 and r.tokens == 3 * (WINDOW - 1)
    assert r.kl is None and r.top1_agreement is None and r.reference is None
    ppl, _ = _hand_perplexity(edgec.load(tiny_artifact), text_file.read_text(), WINDOW, 3)
    assert r.perplexity == pytest.approx(ppl, rel=1e-9)


def test_fp32_artifact_agrees_with_its_source(result, tiny_artifact, tiny_llama):
    assert result.reference == str(tiny_llama.resolve())
    assert 0 <= result.kl < 1e-6
    assert result.top1_agreement == 1.0
    m = edgec.load(tiny_artifact).manifest
    assert result.size_bytes == m["total_size"]
    assert result.weight_bytes == m["files"]["model/model.onnx.data"]["size"]
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert result.parameters == sum(p.numel() for p in hf.parameters())
    assert result.bits_per_weight == pytest.approx(8 * result.weight_bytes / result.parameters)
    assert 32 <= result.bits_per_weight < 34  # fp32 plus alignment padding


def test_model_target_and_shared_reference(result, tiny_artifact, tiny_llama, text_file):
    alone = evaluate(tiny_llama, text=text_file, window=WINDOW)
    assert alone.target_kind == "model" and alone.kl is None  # no reference: it would be itself
    assert alone.perplexity == pytest.approx(result.perplexity, rel=1e-5)
    art, hf = evaluate_many([tiny_artifact, tiny_llama], text=text_file, window=WINDOW, max_tokens=4 * WINDOW)
    assert art.reference == hf.reference == str(tiny_llama.resolve())  # the artifact's source
    assert hf.kl == pytest.approx(0, abs=1e-12) and hf.top1_agreement == 1.0
    assert art.windows == hf.windows == 4


def test_cli_json_has_every_key(tiny_artifact, text_file, result):
    r = CliRunner().invoke(main, ["eval", str(tiny_artifact), "--text", str(text_file), "--window",
                                  str(WINDOW), "--max-tokens", str(4 * WINDOW), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert KEYS <= set(out)
    assert out["windows"] == 4 and out["tokens"] == 4 * (WINDOW - 1) and out["kl"] < 1e-6
    assert r.stderr == ""  # --json: no progress


def test_cli_text_output_and_progress(tiny_artifact, text_file):
    r = CliRunner().invoke(main, ["eval", str(tiny_artifact), "--text", str(text_file), "--window", str(WINDOW),
                                  "--no-reference"])
    assert r.exit_code == 0, r.output
    assert "perplexity" in r.stdout and "bits/weight" in r.stdout and "n/a" in r.stdout
    assert "windows of 64" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["/no/such/artifact", "--text", "{text}"], "does not exist"),
    (["{art}", "--text", "/no/such/file.txt"], "does not exist"),
    (["{art}", "--reference", "/no/such/model"], "does not exist"),
    (["{art}", "--text", "{short}"], "fewer than one window"),
    (["{art}", "--text", "{text}", "--max-tokens", "10"], "at least one window"),
    (["{art}", "--text", "{text}", "--window", "4096"], "longer than the artifact's context"),
    (["{art}", "--reference", "{art}", "--no-reference"], "not both"),
])
def test_bad_input_is_one_line(args, message, tiny_artifact, text_file, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    args = [a.format(art=tiny_artifact, text=text_file, short=short) for a in args]
    r = CliRunner().invoke(main, ["eval", "-q", "--window", str(WINDOW), *args])  # a later --window wins
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("edgec: error:") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_default_text_says_how_to_fix(tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEC_DATA_DIR", str(tmp_path))
    with pytest.raises(edgec.EdgecError, match="EDGEC_DATA_DIR or pass --text"):
        default_text_path()
    r = CliRunner().invoke(main, ["eval", str(tiny_artifact), "--window", str(WINDOW), "-q"])
    assert r.exit_code == 2 and "--text FILE" in r.stderr


@pytest.mark.slow
def test_default_model_on_wikitext(shared_data, tmp_path_factory):
    """fp32 SmolLM2-135M on the first 8,192 tokens of WikiText-2 test (16 windows of 512)."""
    art = edgec.build(None, tmp_path_factory.mktemp("smollm2") / "smollm2-135m-fp32", recipe="fp32")
    r = evaluate(art, text=shared_data / "wikitext-2-raw" / "wiki.test.raw", max_tokens=8192)
    assert r.windows == 16 and r.tokens == 16 * 511
    assert 5 < r.perplexity < 60
    assert r.kl < 1e-6 and r.top1_agreement > 0.999
    assert 130e6 < r.parameters < 140e6
    assert 31.9 < r.bits_per_weight < 32.2


@pytest.mark.slow
def test_default_model_keeps_its_q4_1_blocks(shared_data, tmp_path_factory):
    """With no recipe the shipped Q4_1 file is built with `source`: its own blocks, no second
    rounding; only the kernels' int8 activations separate it from the source (KL ~0.015)."""
    art = edgec.build(None, tmp_path_factory.mktemp("smollm2") / "smollm2-135m-source")
    model = edgec.load(art)
    assert model.manifest["recipe"]["name"] == "source"
    ids = model.encode("The capital of France is")
    assert "Paris" in model.tokenizer.decode(model.generate(ids, max_new_tokens=8))
    r = evaluate(art, text=shared_data / "wikitext-2-raw" / "wiki.test.raw", max_tokens=8192)
    assert r.kl < 0.03 and r.top1_agreement > 0.9
    # Q4_1 linears (4 bits + fp16 scale and minimum + a zero byte per 32) and the Q8_0 head, their fp16
    # fields stored as float16: about 6 bits a weight (float32 fields made it 6.8)
    assert 5.5 < r.bits_per_weight < 6.3
