"""Bad input: a one-line error naming the problem, exit code 2, nothing left behind."""
import shutil

import pytest
import transformers
from click.testing import CliRunner

from edgec.cli import main
from tiny import tiny_tokenizer


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


def test_unsupported_architecture(tmp_path):
    cfg = transformers.FalconConfig(vocab_size=73, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    path = tmp_path / "falcon"
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    fails(["build", str(path), "-o", str(tmp_path / "out")], "'falcon'", "AttentionInterface")
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
