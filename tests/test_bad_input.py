"""Bad input: a one-line error naming the problem, exit code 2, nothing left behind."""
import shutil

import pytest
import transformers
from click.testing import CliRunner

from edgec.cli import main
from tiny import VOCAB, tiny_tokenizer


def fails(args, *needles):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    # progress lines ("[  1.2s] ...") may come first; the error is one line, and last
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[")]
    assert len(lines) == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == lines[0]
    assert lines[0].startswith("edgec: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_nonexistent_model_path(tmp_path):
    fails(["build", str(tmp_path / "nope"), "-o", str(tmp_path / "out")], "does not exist")
    assert not (tmp_path / "out").exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x")
    fails(["build", str(tmp_path / "m"), "-o", str(tmp_path / "out")], "no config.json")
    assert not (tmp_path / "out").exists()


def test_corrupt_safetensors(tiny_llama, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    fails(["build", str(bad), "-o", str(tmp_path / "out")], "could not load the model", str(bad))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad"]  # no temp dirs either


def test_unsupported_architecture_variant(tmp_path):
    """Falcon is supported, but not with ALiBi (its position bias rides in the attention mask)."""
    cfg = transformers.FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    alibi=True)
    path = tmp_path / "falcon"
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    fails(["build", str(path), "-o", str(tmp_path / "out")], "'falcon'", "ALiBi", "not supported")
    assert not (tmp_path / "out").exists()


def test_unknown_model_type(tiny_llama, tmp_path):
    bad = tmp_path / "foo"
    shutil.copytree(tiny_llama, bad)
    cfg = (bad / "config.json").read_text().replace('"model_type": "llama"', '"model_type": "foo"')
    (bad / "config.json").write_text(cfg)
    fails(["build", str(bad), "-o", str(tmp_path / "out")], "unsupported architecture 'foo'")


@pytest.mark.parametrize("opt,value,needle", [
    ("--device", "toaster", "unknown device 'toaster'; choose one of: cuda, host"),
    ("--backend", "tensorrt", "unknown backend 'tensorrt'; choose one of: onnx"),
    ("--recipe", "int99", "unknown recipe 'int99'; choose one of:"),
    ("--recipe", "missing.toml", "recipe file 'missing.toml' does not exist"),
])
def test_unknown_device_backend_recipe(tiny_llama, tmp_path, opt, value, needle):
    fails(["build", str(tiny_llama), "-o", str(tmp_path / "out"), opt, value], needle)
    assert not (tmp_path / "out").exists()


def test_recipe_with_unknown_pass(tiny_llama, tmp_path):
    r = tmp_path / "r.toml"
    r.write_text('name = "x"\n[[passes]]\nname = "quantum_annealing"\n')
    fails(["build", str(tiny_llama), "-o", str(tmp_path / "out"), "--recipe", str(r)], "unknown pass 'quantum_annealing'")


@pytest.fixture()
def artifact_copy(tiny_artifact, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact, dst)
    return dst


def test_artifact_flipped_byte(artifact_copy):
    data = artifact_copy / "model" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    fails(["run", str(artifact_copy), "-p", "hi"], "model/model.onnx.data", "SHA-256")


def test_artifact_missing_file(artifact_copy):
    (artifact_copy / "tokenizer" / "tokenizer.json").unlink()
    fails(["run", str(artifact_copy), "-p", "hi"], "tokenizer/tokenizer.json is missing")


def test_artifact_truncated_file(artifact_copy):
    onnx_file = artifact_copy / "model" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:100])
    fails(["inspect", str(artifact_copy)], "truncated")


def test_not_an_artifact(tmp_path):
    fails(["run", str(tmp_path / "nothing"), "-p", "hi"], "no artifact at")


def test_prompt_longer_than_context(tiny_artifact):
    fails(["run", str(tiny_artifact), "-p", "a" * 300], "300 tokens", "context is 128")


@pytest.mark.parametrize("n", ["0", "-3"])
def test_max_new_tokens_not_positive(tiny_artifact, n):
    fails(["run", str(tiny_artifact), "-p", "hi", "-n", n], "must be > 0")


@pytest.mark.parametrize("args,needle", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-p", "0"], "top-p must be in (0, 1]"),
    (["--top-k", "-2"], "top-k must be >= 0"),
])
def test_bad_sampling_options(tiny_artifact, args, needle):
    fails(["run", str(tiny_artifact), "-p", "hi", *args], needle)


def test_build_refuses_to_overwrite_user_folder(tiny_llama, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    fails(["build", str(tiny_llama), "-o", str(out)], str(out))
    assert (out / "notes.txt").read_text() == "precious"


def test_python_api_errors(tiny_artifact):
    import edgec

    model = edgec.load(tiny_artifact)
    with pytest.raises(edgec.EdgecError, match="max-new-tokens must be > 0"):
        model.generate([1, 2], max_new_tokens=0)
    with pytest.raises(edgec.EdgecError, match="prompt is empty"):
        model.generate([], max_new_tokens=3)
    with pytest.raises(edgec.EdgecError, match="unknown device"):
        edgec.build(None, "x", device="nope")


# -- token ids, the manifest against the compiled model, unlisted files, trust (issue: trusted artifacts) --
@pytest.mark.parametrize("bad", [-1, "vocab", 10**12])
def test_token_ids_out_of_range_are_refused_everywhere(tiny_artifact, bad):
    import edgec

    model = edgec.load(tiny_artifact)
    bad = model.vocab_size if bad == "vocab" else bad
    for call in (lambda: model.logits([1, bad]), lambda: model.generate([bad], 2),
                 lambda: model.sequence(8).run([bad]), lambda: model.forward([bad], 0, model.empty_cache())):
        with pytest.raises(edgec.EdgecError, match=f"token id {bad} is out of range"):
            call()
    with pytest.raises(edgec.EdgecError, match="must be integers"):
        model.logits([1.5])


def _unsigned_copy(tiny_artifact, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact, dst)
    (dst / "signature.json").unlink()
    return dst


def test_edited_context_length_is_caught_against_the_compiled_model(tiny_artifact, tmp_path):
    import json

    art = _unsigned_copy(tiny_artifact, tmp_path)
    m = json.loads((art / "manifest.json").read_text())
    m["graph"]["context_length"] = 100000
    (art / "manifest.json").write_text(json.dumps(m))
    fails(["run", str(art), "-p", "hi"], "context length 100000 in the manifest, 128 compiled")


def test_edited_signed_manifest_is_caught(artifact_copy):
    text = (artifact_copy / "manifest.json").read_text()
    (artifact_copy / "manifest.json").write_text(text.replace('"context_length": 128', '"context_length": 64'))
    fails(["run", str(artifact_copy), "-p", "hi"], "signature does not match the manifest")


def test_unlisted_chat_template_is_refused(artifact_copy):
    extra = artifact_copy / "tokenizer" / "additional_chat_templates"
    extra.mkdir()
    (extra / "default.jinja").write_text("{{ 'evil' }}")
    fails(["run", str(artifact_copy), "-p", "hi", "--chat"], "additional_chat_templates/default.jinja is not listed")
    fails(["inspect", str(artifact_copy)], "is not listed")


def test_inspect_shows_signer_and_digest(tiny_artifact):
    from edgec import signing

    r = CliRunner().invoke(main, ["inspect", str(tiny_artifact)])
    assert r.exit_code == 0, r.output
    mine = signing.key_id(signing.default_key(create=False).public_key())
    assert f"signer       {mine} (yours)" in r.output
    assert "manifest     sha256:" in r.output


def test_threads_are_checked_and_capped(tiny_artifact):
    import os

    fails(["run", str(tiny_artifact), "-p", "hi", "--threads", "0"], "--threads")
    r = CliRunner().invoke(main, ["run", str(tiny_artifact), "-p", "hi", "-n", "2", "--threads", "3000"])
    assert r.exit_code == 0, r.output
    from edgec.limits import useful_threads
    assert useful_threads(3000) == len(os.sched_getaffinity(0))


def test_build_checks_output_before_loading_the_model(tiny_llama, tmp_path):
    import time

    (tmp_path / "file").write_text("x")
    t0 = time.perf_counter()
    fails(["build", str(tiny_llama), "-o", str(tmp_path / "file" / "out")], "is not a folder")
    assert time.perf_counter() - t0 < 5  # before tracing (which takes several seconds)
