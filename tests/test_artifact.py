"""An artifact is exactly its manifest: written atomically, verified whole, never replacing user data."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgec import artifact, signing
from edgec.artifact import (FORMAT_VERSION, MANIFEST, SIGNATURE, ArtifactWriter, check_output, check_trust,
                            clean_stale, load_manifest, open_artifact, pack, sha256_file, unpack)
from edgec.errors import ArtifactError, EdgecError
from fake_artifact import WEIGHTS, write


def leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def error_of(path, **kwargs):
    with pytest.raises(ArtifactError) as info:
        load_manifest(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def edit_manifest(out, change):
    m = json.loads((out / MANIFEST).read_text())
    change(m)
    (out / MANIFEST).write_text(json.dumps(m))


def test_round_trip(tmp_path):
    out = write(tmp_path / "art")
    m = load_manifest(out)
    assert m["format_version"] == FORMAT_VERSION and m["recipe"]["name"] == "fp32"
    assert set(m["files"]) == {"model/weights.bin", "tokenizer/tokenizer.json"}
    assert m["files"]["model/weights.bin"] == {"size": len(WEIGHTS),
                                               "sha256": sha256_file(out / "model" / "weights.bin")}
    assert m["total_size"] == len(WEIGHTS) + len('{"v": 1}')
    assert m["edgec_version"] and m["created"].endswith("+00:00")
    assert (out / MANIFEST).read_text() == json.dumps(m, indent=2, sort_keys=True) + "\n"
    assert leftovers(tmp_path, "art") == [] and not (out / SIGNATURE).exists()
    assert (out.stat().st_mode & 0o777) == 0o755


def test_verified_bytes_are_the_hashed_bytes(tmp_path):
    out = write(tmp_path / "art")
    art = open_artifact(out)
    tok = art.files("tokenizer")
    assert tok.read_bytes("tokenizer.json") == b'{"v": 1}' and tok.listing() == ["tokenizer.json"]
    (out / "tokenizer" / "tokenizer.json").unlink()  # a rebuild replacing files after the check ...
    (out / "model" / "weights.bin").unlink()
    assert tok.read_bytes("tokenizer.json") == b'{"v": 1}'  # ... cannot change what was verified
    with open(art.files("model").path("weights.bin"), "rb") as f:
        assert f.read() == WEIGHTS
    art.close()


def test_flipped_byte_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(artifact, "IN_MEMORY_MAX", 1024)  # so weights.bin counts as a large file
    out = write(tmp_path / "art")
    data = bytearray((out / "model" / "weights.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "model" / "weights.bin").write_bytes(bytes(data))
    assert "model/weights.bin is corrupt or tampered with" in error_of(out)
    load_manifest(out, verify=False)  # sizes only: large files are not hashed


def test_truncated_and_missing_files_are_reported(tmp_path):
    out = write(tmp_path / "art")
    (out / "model" / "weights.bin").write_bytes(WEIGHTS[:10])
    assert "truncated" in error_of(out)
    (out / "model" / "weights.bin").unlink()
    assert "model/weights.bin is missing" in error_of(out)


def test_wrong_version_is_reported(tmp_path):
    out = write(tmp_path / "art")
    edit_manifest(out, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    message = error_of(out)
    assert f"version {FORMAT_VERSION + 1}" in message and f"version {FORMAT_VERSION}" in message
    assert "rebuild" in message


def test_nonexistent_path_and_file_are_reported(tmp_path):
    assert "no artifact at" in error_of(tmp_path / "nope")
    (tmp_path / "x.edgec").write_bytes(b"x")
    assert "not an artifact directory" in error_of(tmp_path / "x.edgec")


@pytest.mark.parametrize("rel", ["additional_chat_templates/default.jinja", "tokenizer/special_tokens_map.json",
                                 "tokenizer/additional_chat_templates/default.jinja", "notes.txt"])
def test_unlisted_files_are_refused(tmp_path, rel):
    out = write(tmp_path / "art")
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_text("{{ 'pwned' }}")
    assert f"{rel} is not listed in the manifest" in error_of(out)


def test_unlisted_empty_folder_is_refused(tmp_path):
    out = write(tmp_path / "art")
    (out / "model" / "extra").mkdir()
    assert "model/extra is not listed" in error_of(out)


def test_symlinked_file_is_refused(tmp_path):
    out = write(tmp_path / "art")
    tok = out / "tokenizer" / "tokenizer.json"
    (tmp_path / "outside.json").write_bytes(tok.read_bytes())  # same bytes: only the link is wrong
    tok.unlink()
    tok.symlink_to(tmp_path / "outside.json")
    assert "tokenizer/tokenizer.json is a symlink" in error_of(out)


def test_symlinked_folder_is_refused(tmp_path):
    out = write(tmp_path / "art")
    os.rename(out / "model", tmp_path / "elsewhere")
    (out / "model").symlink_to(tmp_path / "elsewhere")
    assert "model is a symlink" in error_of(out)


def test_listed_file_linked_to_system_file_is_refused(tmp_path):
    out = write(tmp_path / "art")
    size = os.path.getsize("/etc/passwd")
    digest = sha256_file("/etc/passwd")
    (out / "model" / "weights.bin").unlink()
    (out / "model" / "weights.bin").symlink_to("/etc/passwd")

    def point(m):
        m["files"]["model/weights.bin"] = {"size": size, "sha256": digest}
        m["total_size"] = sum(e["size"] for e in m["files"].values())
    edit_manifest(out, point)
    assert "model/weights.bin is a symlink" in error_of(out)


def test_fifo_is_refused(tmp_path):
    out = write(tmp_path / "art")
    os.mkfifo(out / "model" / "pipe")
    assert "model/pipe is not a regular file" in error_of(out)  # and opening it did not hang


@pytest.mark.parametrize("change,needle", [
    (lambda m: m.update(files={}), "file table is empty"),
    (lambda m: m["files"].update({"../secret": {"size": 1, "sha256": "0" * 64}}), "unsafe path"),
    (lambda m: m["files"].update({"/etc/passwd": {"size": 1, "sha256": "0" * 64}}), "unsafe path"),
    (lambda m: m["graph"].update(context_length="12"), "graph.context_length must be an integer"),
    (lambda m: m["graph"].update(context_length=10**12), "graph.context_length must be in"),
    (lambda m: m["graph"].update(inputs=[]), "input_ids"),
    (lambda m: m["generation"].update(eos_token_ids=[10**6]), "eos_token_ids"),
    (lambda m: m.update(total_size=1), "total_size"),
    (lambda m: m.pop("backend"), "backend is missing"),
    (lambda m: m.update(backend=[]), "backend must be an object"),
    (lambda m: m["files"]["model/weights.bin"].update(size=-1), "size must be in"),
    (lambda m: m["files"]["model/weights.bin"].update(sha256="xyz"), "not a SHA-256"),
])
def test_manifest_fields_are_validated(tmp_path, change, needle):
    out = write(tmp_path / "art")
    edit_manifest(out, change)
    message = error_of(out)
    assert needle in message and "rebuild" in message


def test_duplicate_manifest_keys_are_refused(tmp_path):
    out = write(tmp_path / "art")
    text = (out / MANIFEST).read_text()
    (out / MANIFEST).write_text(text.replace('"created":', '"created": "x", "created":', 1))
    assert "appears twice" in error_of(out)


# -- writing and replacing ---------------------------------------------------------------------------
def test_exception_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out) as w:
            (w.dir / "weights.bin").write_bytes(WEIGHTS)
            raise RuntimeError("lowering failed")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_old_artifact(tmp_path):
    out = write(tmp_path / "art", context=64)
    with pytest.raises(RuntimeError):
        with ArtifactWriter(out):
            raise RuntimeError("boom")
    assert load_manifest(out)["graph"]["context_length"] == 64
    assert leftovers(tmp_path, "art") == []


def test_overwrite_existing_artifact(tmp_path):
    out = write(tmp_path / "art", context=64)
    write(out, weights=b"new weights", context=32)
    assert load_manifest(out)["graph"]["context_length"] == 32
    assert (out / "model" / "weights.bin").read_bytes() == b"new weights"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_empty_directory_is_replaced(tmp_path):
    (tmp_path / "art").mkdir()
    load_manifest(write(tmp_path / "art"))


def test_refuses_folder_with_a_fake_manifest(tmp_path):
    """The data-loss case: any folder whose manifest.json merely had format_version was deleted."""
    out = tmp_path / "photos"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    (out / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "files": {}}))
    for force in (False, True):
        with pytest.raises(EdgecError, match="not an edgec artifact that verifies"):
            write(out, force=force)
    assert (out / "thesis.tex").read_text() == "precious" and leftovers(tmp_path, "photos") == []


def test_refuses_artifact_with_user_files_unless_forced(tmp_path):
    out = write(tmp_path / "art")
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(EdgecError, match=r"holds files it did not create \(my-notes.txt\).*--force"):
        write(out, context=64)
    assert (out / "my-notes.txt").read_text() == "mine"
    write(out, context=64, force=True)
    assert not (out / "my-notes.txt").exists() and load_manifest(out)["graph"]["context_length"] == 64


def test_refuses_corrupt_artifact_even_when_forced(tmp_path):
    out = write(tmp_path / "art")
    (out / "model" / "weights.bin").write_bytes(b"x" * len(WEIGHTS))
    with pytest.raises(EdgecError, match="refusing to replace it"):
        write(out, force=True)
    assert (out / "model" / "weights.bin").read_bytes() == b"x" * len(WEIGHTS)


def test_refuses_to_replace_a_file_or_symlink(tmp_path):
    (tmp_path / "file").write_text("precious")
    (tmp_path / "link").symlink_to(write(tmp_path / "real"))
    for name in ("file", "link"):
        with pytest.raises(EdgecError, match="not an edgec artifact"):
            write(tmp_path / name)
    assert (tmp_path / "file").read_text() == "precious" and (tmp_path / "link").is_symlink()


def test_unusable_output_is_reported_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgecError, match="is not a folder"):
        check_output(tmp_path / "file" / "sub" / "art")


def test_stale_temp_dirs_are_cleaned_but_live_ones_kept(tmp_path):
    out = tmp_path / "art"
    dead = tmp_path / ".art.tmp-dead1"
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"half")
    (dead / artifact._MARKER).write_text(json.dumps({"pid": 2**22 + 7, "start": "1", "host": os.uname()[1]}))
    live = tmp_path / ".art.tmp-live1"
    live.mkdir()
    (live / artifact._MARKER).write_text(json.dumps(
        {"pid": os.getpid(), "start": artifact._proc_start(os.getpid()), "host": os.uname()[1]}))
    swapped = write(tmp_path / ".art.tmp-swap1")  # an old artifact a killed swap left, no marker
    foreign = tmp_path / ".art.tmp-mine"  # matches the pattern but is nobody's build: kept
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    other = tmp_path / ".other.tmp-dead2"  # another output's: not looked at
    other.mkdir()
    removed = clean_stale(out)
    assert sorted(p.name for p in removed) == [dead.name, swapped.name]
    assert live.exists() and foreign.exists() and other.exists()


# The build is paused where its temp folder already holds the backend's files (just before the
# manifest is written), so the signal lands mid-build however fast the machine is.
_PAUSED_BUILD = """
import sys, time
from pathlib import Path
from edgec import artifact
ready = Path(sys.argv.pop(1))
def paused(self):
    ready.write_text(str(self.dir))
    time.sleep(120)
artifact.ArtifactWriter._write_manifest = paused
from edgec.cli import main
sys.argv[0] = "edgec"
main()
"""


def test_sigterm_during_build_leaves_nothing(tiny_llama, tmp_path):
    import time
    out, ready = tmp_path / "art", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_BUILD, str(ready), "build", str(tiny_llama),
                             "-o", str(out), "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and ready.exists(), "the build never reached its pause"
    assert leftovers(tmp_path, "art") == [Path(ready.read_text()).name]
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted" in err
    assert not out.exists() and leftovers(tmp_path, "art") == []


# -- signing and trust ----------------------------------------------------------------------------
def test_signed_artifact_verifies_and_tampering_is_caught(tmp_path):
    key = Ed25519PrivateKey.generate()
    out = write(tmp_path / "art", sign_key=key)
    art = open_artifact(out)
    assert art.signer == signing.key_id(key.public_key()) and art.digest.startswith("sha256:")
    edit_manifest(out, lambda m: m["graph"].update(context_length=64))  # schema-valid, but not what was signed
    assert "signature does not match the manifest" in error_of(out)


def test_native_artifact_needs_a_trusted_signature(tmp_path):
    stranger = Ed25519PrivateKey.generate()
    unsigned = open_artifact(write(tmp_path / "u", backend="tvm"))
    foreign = open_artifact(write(tmp_path / "f", backend="tvm", sign_key=stranger))
    mine = open_artifact(write(tmp_path / "m", backend="tvm", sign_key=signing.default_key()))
    with pytest.raises(ArtifactError, match="native code and is not signed.*--allow-unsigned"):
        check_trust(unsigned)
    with pytest.raises(ArtifactError, match="a key you do not trust"):
        check_trust(foreign)
    assert check_trust(unsigned, allow_unsigned=True) == "unsigned"
    assert check_trust(mine) == "yours"
    pub = tmp_path / "stranger.pub"
    pub.write_text(signing.public_line(stranger.public_key()) + "\n")
    assert check_trust(foreign, trust=[pub]) == "trusted"
    data = open_artifact(write(tmp_path / "d", sign_key=stranger))  # no native code: data, runs
    assert check_trust(data) == "untrusted"


def test_pack_unpack_round_trip_keeps_signature(tmp_path):
    out = write(tmp_path / "art", sign_key=signing.default_key())
    packed = pack(out, tmp_path / "art.edgec")
    with tarfile.open(packed) as tar:
        names = tar.getnames()
    assert names[:2] == [MANIFEST, SIGNATURE] and "model/weights.bin" in names
    dest = unpack(packed, tmp_path / "unpacked")
    assert load_manifest(dest) == load_manifest(out)
    assert open_artifact(dest).signer == open_artifact(out).signer
    assert (dest / "model" / "weights.bin").read_bytes() == WEIGHTS
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
    out = write(tmp_path / "art")
    m = (out / MANIFEST).read_bytes()
    bad = _tar_with(tmp_path / "bad.edgec", [(MANIFEST, m), ("model/weights.bin", b"x" * len(WEIGHTS)),
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
