"""Fuzzing the manifest parser, the signature parser and the artifact verifier (hypothesis).

Property: for any input they either accept it (and then it is consistent) or raise
ArtifactError with one line; never another exception, a hang or a partial result.
The normal run is bounded (EDGEC_FUZZ_EXAMPLES, default 200 examples per test);
a long campaign: `EDGEC_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_artifact.py`.
"""
import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgec import manifest as schema
from edgec import signing
from edgec.artifact import MANIFEST, open_artifact
from edgec.errors import ArtifactError
from fake_artifact import manifest_fields, write

EXAMPLES = int(os.environ.get("EDGEC_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)


def _valid_manifest() -> dict:
    m = manifest_fields()
    m.update(files={"model/w.bin": {"size": 3, "sha256": "a" * 64}}, format_version=schema.FORMAT_VERSION,
             edgec_version="0.1.0", created="2026-01-01T00:00:00+00:00", total_size=3)
    return m


def _paths(obj, prefix=()):
    """Every (path, value) in a JSON tree, for mutating one place at a time."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _replace(obj, path, value):
    if not path:
        return value
    obj[path[0]] = _replace(obj[path[0]], path[1:], value)
    return obj


def _parses_or_clean_error(data: bytes):
    try:
        return schema.parse(data)
    except ArtifactError as e:
        assert "\n" not in str(e) and str(e)
        return None


@FUZZ
@given(st.binary(max_size=2000))
def test_manifest_parser_random_bytes(data):
    assert _parses_or_clean_error(data) is None or isinstance(data, bytes)


@FUZZ
@given(st.data())
def test_manifest_parser_mutated_fields(data):
    m = _valid_manifest()
    paths = list(_paths(m))
    for _ in range(data.draw(st.integers(1, 3))):
        m = _replace(m, data.draw(st.sampled_from(paths)), data.draw(json_values))
        paths = list(_paths(m))
    parsed = _parses_or_clean_error(json.dumps(m).encode())
    if parsed is not None:  # accepted: then everything the runtime reads is of the right kind
        assert isinstance(parsed["files"], dict) and parsed["files"]
        assert 1 <= parsed["graph"]["context_length"] <= schema.MAX_CONTEXT
        assert 1 <= schema.vocab_size(parsed) <= schema.MAX_VOCAB
        assert all(type(t) is int and 0 <= t < schema.vocab_size(parsed)
                   for t in parsed["generation"].get("eos_token_ids", []))


@FUZZ
@given(st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode()))
def test_signature_parser(data):
    try:
        record = signing.parse_signature(data)
    except ArtifactError as e:
        assert "\n" not in str(e)
        return
    assert record["algorithm"] == "ed25519"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write(tmp_path_factory.mktemp("fuzz") / "art", weights=b"w" * 5000,
                 sign_key=signing.default_key(), files={"model/extra/deep.bin": b"d" * 100})


FILES = ["model/weights.bin", "tokenizer/tokenizer.json", "model/extra/deep.bin"]
MUTATIONS = st.sampled_from(["flip", "truncate", "grow", "delete", "symlink", "extra_file", "extra_dir",
                             "fifo", "dir_symlink", "manifest_field", "signature_byte", "manifest_byte"])


@FUZZ
@given(st.lists(st.tuples(MUTATIONS, st.sampled_from(FILES), st.integers(0, 10**6), json_values),
                min_size=1, max_size=3))
def test_verifier_on_mutated_artifacts(pristine, tmp_path_factory, mutations):
    art = tmp_path_factory.mktemp("m") / "art"
    shutil.copytree(pristine, art, symlinks=True)
    for kind, rel, n, value in mutations:
        _mutate(art, kind, rel, n, value)
    try:
        opened = open_artifact(art)
    except ArtifactError as e:
        assert "\n" not in str(e)
        return
    # accepted: only possible if every listed file is byte-identical to the pristine build
    for rel in opened.manifest["files"]:
        assert (art / rel).read_bytes() == (pristine / rel).read_bytes()
    assert opened.manifest_bytes == (pristine / MANIFEST).read_bytes()
    opened.close()


def _mutate(art, kind, rel, n, value):
    f = art / rel
    if kind in ("flip", "truncate", "grow") and f.is_file() and not f.is_symlink():
        data = bytearray(f.read_bytes())
        if kind == "flip" and data:
            data[n % len(data)] ^= 1 + n % 255
        elif kind == "truncate":
            data = data[: n % max(1, len(data))]
        else:
            data += b"\0" * (1 + n % 7)
        f.write_bytes(bytes(data))
    elif kind == "delete" and f.exists():
        f.unlink()
    elif kind == "symlink" and f.is_file() and not f.is_symlink():
        target = art.parent / f"outside-{n}"
        target.write_bytes(f.read_bytes())
        f.unlink()
        f.symlink_to(target)
    elif kind == "extra_file":
        (art / "tokenizer" / f"special_tokens_map{n}.json").write_text("{}")
    elif kind == "extra_dir":
        (art / "model" / f"d{n}").mkdir(exist_ok=True)
    elif kind == "fifo" and not (art / f"fifo{n}").exists():
        os.mkfifo(art / f"fifo{n}")
    elif kind == "dir_symlink" and (art / "model" / "extra").is_dir() and not (art / "model" / "extra").is_symlink():
        os.rename(art / "model" / "extra", art.parent / f"extra-{n}")
        (art / "model" / "extra").symlink_to(art.parent / f"extra-{n}")
    elif kind == "manifest_field":
        try:
            m = json.loads((art / MANIFEST).read_bytes())
        except ValueError:  # an earlier mutation already broke the JSON
            return
        paths = list(_paths(m))
        m = _replace(m, paths[n % len(paths)], value)
        (art / MANIFEST).write_text(json.dumps(m))
    elif kind in ("signature_byte", "manifest_byte"):
        f = art / ("signature.json" if kind == "signature_byte" else MANIFEST)
        data = bytearray(f.read_bytes())
        data[n % len(data)] ^= 1 + n % 255
        f.write_bytes(bytes(data))
