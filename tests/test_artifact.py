"""Artifacts are written atomically and any damage is reported as a clear ArtifactError."""

import io
import json
import tarfile

import pytest

from edgec import artifact
from edgec.artifact import (FORMAT_VERSION, MANIFEST, ArtifactWriter, load_manifest, pack,
                            sha256_file, unpack, verify_files)
from edgec.errors import ArtifactError, EdgecError

WEIGHTS = bytes(range(256)) * 4096 + b"tail"  # > 1 MiB: exercises chunked hashing


def build(out, weights=WEIGHTS, **manifest):
    with ArtifactWriter(out) as w:
        (w.dir / "weights.bin").write_bytes(weights)
        (w.dir / "tokenizer").mkdir()
        (w.dir / "tokenizer" / "tokenizer.json").write_text('{"v": 1}')
        w.manifest.update({"recipe": "fp32", "device": "host"}, **manifest)
    return out


def leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def error_of(path, **kwargs):
    with pytest.raises(ArtifactError) as info:
        load_manifest(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_round_trip(tmp_path):
    out = build(tmp_path / "art")
    m = load_manifest(out)
    assert m["format_version"] == FORMAT_VERSION and m["recipe"] == "fp32"
    assert set(m["files"]) == {"weights.bin", "tokenizer/tokenizer.json"}
    assert m["files"]["weights.bin"] == {"size": len(WEIGHTS), "sha256": sha256_file(out / "weights.bin")}
    assert m["total_size"] == len(WEIGHTS) + len('{"v": 1}')
    assert m["edgec_version"] and m["created"].endswith("+00:00")
    assert (out / MANIFEST).read_text() == json.dumps(m, indent=2, sort_keys=True) + "\n"
    assert leftovers(tmp_path, "art") == []
    assert (out.stat().st_mode & 0o777) == 0o755


def test_sha256_streams_large_file(tmp_path):
    import hashlib
    (tmp_path / "f").write_bytes(WEIGHTS)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(WEIGHTS).hexdigest()


def test_flipped_byte_is_reported(tmp_path):
    out = build(tmp_path / "art")
    data = bytearray((out / "weights.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "weights.bin").write_bytes(bytes(data))
    message = error_of(out)
    assert "weights.bin" in message and "SHA-256" in message and "rebuild" in message
    assert load_manifest(out, verify=False)["recipe"] == "fp32"  # verify=False skips hashing


def test_truncated_file_is_reported(tmp_path):
    out = build(tmp_path / "art")
    with open(out / "weights.bin", "r+b") as f:
        f.truncate(100)
    message = error_of(out)
    assert "weights.bin" in message and "truncated" in message


def test_missing_file_is_reported(tmp_path):
    out = build(tmp_path / "art")
    (out / "tokenizer" / "tokenizer.json").unlink()
    message = error_of(out)
    assert "tokenizer/tokenizer.json" in message and "missing" in message


def test_extra_file_is_ignored(tmp_path):
    out = build(tmp_path / "art")
    (out / "notes.txt").write_text("mine")
    load_manifest(out)


def test_missing_manifest_is_reported(tmp_path):
    out = build(tmp_path / "art")
    (out / MANIFEST).unlink()
    message = error_of(out)
    assert MANIFEST in message and "missing" in message


def test_bad_json_is_reported(tmp_path):
    out = build(tmp_path / "art")
    (out / MANIFEST).write_text('{"format_version": 1, "files": {')
    message = error_of(out)
    assert MANIFEST in message and "not valid JSON" in message


def test_wrong_version_is_reported(tmp_path):
    out = build(tmp_path / "art")
    m = json.loads((out / MANIFEST).read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (out / MANIFEST).write_text(json.dumps(m))
    message = error_of(out)
    assert f"version {FORMAT_VERSION + 1}" in message and f"version {FORMAT_VERSION}" in message
    assert "rebuild" in message


def test_nonexistent_path_is_reported(tmp_path):
    message = error_of(tmp_path / "nope")
    assert "no artifact at" in message and "edgec build" in message


def test_file_instead_of_directory_is_reported(tmp_path):
    (tmp_path / "x.edgec").write_bytes(b"x")
    assert "not an artifact directory" in error_of(tmp_path / "x.edgec")


def test_tampered_manifest_path_is_refused(tmp_path):
    out = build(tmp_path / "art")
    m = load_manifest(out)
    m["files"]["../secret"] = {"size": 1, "sha256": "0" * 64}
    with pytest.raises(ArtifactError, match="unsafe path"):
        verify_files(out, m)


def test_exception_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out) as w:
            (w.dir / "weights.bin").write_bytes(WEIGHTS)
            raise RuntimeError("lowering failed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unserializable_manifest_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(TypeError):
        with ArtifactWriter(out) as w:
            w.manifest["bad"] = object()
    assert list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_old_artifact(tmp_path):
    out = build(tmp_path / "art", recipe="old")
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out) as w:
            raise RuntimeError("boom")
    assert load_manifest(out)["recipe"] == "old"
    assert leftovers(tmp_path, "art") == []


def test_overwrite_existing_artifact(tmp_path):
    out = build(tmp_path / "art", recipe="old")
    build(out, weights=b"new weights", recipe="new")
    m = load_manifest(out)
    assert m["recipe"] == "new" and (out / "weights.bin").read_bytes() == b"new weights"
    assert leftovers(tmp_path, "art") == [] and [p.name for p in tmp_path.iterdir()] == ["art"]


def test_overwrite_false_refuses(tmp_path):
    out = build(tmp_path / "art")
    with pytest.raises(EdgecError, match="already exists"):
        with ArtifactWriter(out, overwrite=False):
            pass
    load_manifest(out)


def test_empty_directory_is_replaced(tmp_path):
    (tmp_path / "art").mkdir()
    load_manifest(build(tmp_path / "art"))


def test_refuses_to_replace_non_artifact_directory(tmp_path):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(EdgecError, match="not an edgec artifact"):
        build(out)
    assert (out / "thesis.tex").read_text() == "precious"
    assert leftovers(tmp_path, "mydata") == []


def test_refuses_to_replace_a_file(tmp_path):
    out = tmp_path / "file"
    out.write_text("precious")
    with pytest.raises(EdgecError, match="not an edgec artifact"):
        build(out)
    assert out.read_text() == "precious"


def test_pack_unpack_round_trip(tmp_path):
    out = build(tmp_path / "art")
    packed = pack(out, tmp_path / "art.edgec")
    with tarfile.open(packed) as tar:
        names = tar.getnames()
    assert names[0] == MANIFEST and "weights.bin" in names
    dest = unpack(packed, tmp_path / "unpacked")
    assert load_manifest(dest) == load_manifest(out)
    assert (dest / "weights.bin").read_bytes() == WEIGHTS
    assert leftovers(tmp_path, "unpacked") == [] and leftovers(tmp_path, "art.edgec") == []


def _tar_with(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("evil", ["../escape.txt", "/tmp/abs.txt", "sub/../../escape.txt"])
def test_unpack_rejects_escaping_members(tmp_path, evil):
    bad = _tar_with(tmp_path / "bad.edgec", [(MANIFEST, b"{}"), (evil, b"x")])
    with pytest.raises(ArtifactError, match="unsafe archive member"):
        unpack(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "escape.txt").exists()
    assert leftovers(tmp_path, "dest") == []


def test_unpack_rejects_symlink_member(tmp_path):
    bad = tmp_path / "bad.edgec"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ArtifactError, match="unsafe archive member"):
        unpack(bad, tmp_path / "dest")


def test_unpack_verifies_contents(tmp_path):
    out = build(tmp_path / "art")
    m = (out / MANIFEST).read_bytes()
    bad = _tar_with(tmp_path / "bad.edgec", [(MANIFEST, m), ("weights.bin", b"x" * len(WEIGHTS)),
                                              ("tokenizer/tokenizer.json", b'{"v": 1}')])
    with pytest.raises(ArtifactError, match="SHA-256"):
        unpack(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and leftovers(tmp_path, "dest") == []


def test_unpack_non_tar_is_reported(tmp_path):
    (tmp_path / "junk.edgec").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ArtifactError, match="not a valid .edgec archive"):
        unpack(tmp_path / "junk.edgec", tmp_path / "dest")


def test_version_fallback_is_a_string():
    assert isinstance(artifact._edgec_version(), str)
