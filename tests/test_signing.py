"""Signing: one key per user, created safely; any change to a signed manifest is caught; trust is explicit."""

import base64
import hashlib
import json
import multiprocessing
import os
import stat

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgec.errors import ArtifactError, EdgecError
from edgec.signing import (SIGNATURE_FILE, config_dir, default_key, default_key_path, describe_signer,
                           key_id, load_private_key, load_public_key, parse_signature, public_line,
                           sign_manifest, signature_bytes, trusted_keys, verify_manifest_signature)

MANIFEST = json.dumps({"files": {"weights.bin": {"sha256": "ab" * 32, "size": 4}},
                       "format_version": 1}, indent=2, sort_keys=True).encode() + b"\n"


@pytest.fixture(autouse=True)
def cfg(tmp_path, monkeypatch):
    """Every test gets its own config dir: nothing touches the real ~/.config/edgec."""
    d = tmp_path / "cfg"
    monkeypatch.setenv("EDGEC_CONFIG_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def raw(key) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def one_line_error(exc_type, fn, *args):
    with pytest.raises(exc_type) as info:
        fn(*args)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# --- where keys live ------------------------------------------------------------------------

def test_config_dir_precedence(cfg, tmp_path, monkeypatch):
    assert config_dir() == cfg
    assert default_key_path() == cfg / "keys" / "signing_key.pem"
    monkeypatch.delenv("EDGEC_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "edgec"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/xdg")  # the XDG spec says to ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_dir() == tmp_path / "home" / ".config" / "edgec"


def test_key_created_on_first_use_with_private_modes_and_reused(cfg):
    path = default_key_path()
    assert not path.exists()
    key = default_key()
    assert isinstance(key, Ed25519PrivateKey)
    assert mode(cfg) == 0o700 and mode(cfg / "keys") == 0o700 and mode(path) == 0o600
    assert stat.S_ISREG(os.lstat(path).st_mode)
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()  # PKCS8, unencrypted
    pub = path.with_suffix(".pub")
    assert pub.name == "signing_key.pub"
    assert pub.read_text().startswith(public_line(key.public_key()) + " ")
    assert raw(load_public_key(pub)) == raw(key)
    assert sorted(p.name for p in (cfg / "keys").iterdir()) == ["signing_key.pem", "signing_key.pub"]

    before = path.read_bytes()
    again = default_key()
    assert raw(again) == raw(key) and path.read_bytes() == before


def test_default_key_without_create_does_not_make_one(cfg):
    message = one_line_error(EdgecError, default_key, False)
    assert str(default_key_path()) in message
    assert not cfg.exists()


def test_missing_pub_file_is_rebuilt_from_the_private_key():
    key = default_key()
    pub = default_key_path().with_suffix(".pub")
    pub.unlink()
    assert raw(default_key()) == raw(key)
    assert raw(load_public_key(pub)) == raw(key)


def _race(barrier, queue):
    barrier.wait()  # all processes reach first use together
    queue.put(key_id(default_key().public_key()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
@pytest.mark.parametrize("round_", range(3))
def test_concurrent_first_use_makes_one_key(cfg, round_):
    ctx = multiprocessing.get_context("fork")  # inherits EDGEC_CONFIG_DIR and the imports: fast
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    ids = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(ids)) == 1
    assert key_id(default_key().public_key()) == ids[0]
    assert key_id(load_public_key(default_key_path().with_suffix(".pub"))) == ids[0]
    # the losers' temp files are gone: only the key and its .pub are left
    assert sorted(p.name for p in (cfg / "keys").iterdir()) == ["signing_key.pem", "signing_key.pub"]


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604])
def test_private_key_readable_by_others_is_refused(bits):
    default_key()
    path = default_key_path()
    path.chmod(bits)
    message = one_line_error(EdgecError, default_key)
    assert f"chmod 600 {path}" in message
    with pytest.raises(EdgecError, match="chmod 600"):
        trusted_keys()  # the own key is read the same strict way
    path.chmod(0o600)
    assert isinstance(default_key(), Ed25519PrivateKey)


def test_symlinked_or_non_regular_private_key_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere.pem"
    elsewhere.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    elsewhere.chmod(0o600)
    path = default_key_path()
    path.parent.mkdir(parents=True)
    path.symlink_to(elsewhere)
    message = one_line_error(EdgecError, default_key)
    assert "symlink" in message and "chmod 600" in message
    path.unlink()
    path.mkdir()
    assert "not a regular file" in one_line_error(EdgecError, default_key)
    path.rmdir()
    os.mkfifo(path, 0o600)  # must be refused, not block waiting for a writer
    assert "not a regular file" in one_line_error(EdgecError, default_key)


# --- signing and verifying ------------------------------------------------------------------

def test_sign_verify_round_trip():
    key = default_key()
    record = sign_manifest(MANIFEST, key)
    assert set(record) == {"format", "algorithm", "public_key", "key_id", "signed", "signature"}
    assert record["format"] == 1 and record["algorithm"] == "ed25519"
    assert base64.b64decode(record["public_key"]) == raw(key)
    assert record["key_id"] == key_id(key.public_key())
    assert record["key_id"] == "ed25519:" + hashlib.sha256(raw(key)).hexdigest()[:32]
    assert record["signed"] == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()

    data = signature_bytes(record)
    assert SIGNATURE_FILE == "signature.json"
    assert data == (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    parsed = parse_signature(data)
    assert parsed == record
    assert verify_manifest_signature(MANIFEST, parsed) == record["key_id"]


def test_signature_is_domain_separated():
    key = default_key()
    sig = base64.b64decode(sign_manifest(MANIFEST, key)["signature"])
    digest = hashlib.sha256(MANIFEST).digest()
    key.public_key().verify(sig, b"edgec-artifact-v1\0" + digest)  # raises if wrong
    for other in (MANIFEST, digest):  # not a bare signature over the manifest or its hash
        with pytest.raises(InvalidSignature):
            key.public_key().verify(sig, other)


def test_flipped_manifest_byte_is_rejected():
    record = sign_manifest(MANIFEST, default_key())
    for i in (0, len(MANIFEST) // 2, len(MANIFEST) - 1):
        tampered = bytearray(MANIFEST)
        tampered[i] ^= 0x01
        message = one_line_error(ArtifactError, verify_manifest_signature, bytes(tampered), record)
        assert "does not match the manifest" in message and "modified after signing" in message


def test_tampering_with_signed_digest_to_match_is_still_rejected():
    """Updating 'signed' to the new manifest's hash does not help: the signature covers it."""
    record = sign_manifest(MANIFEST, default_key())
    tampered = MANIFEST.replace(b'"size": 4', b'"size": 5')
    record = dict(record, signed="sha256:" + hashlib.sha256(tampered).hexdigest())
    assert "modified after signing" in one_line_error(ArtifactError, verify_manifest_signature,
                                                      tampered, record)


@pytest.mark.parametrize("index", [0, 31, 63])
def test_flipped_signature_byte_is_rejected(index):
    record = sign_manifest(MANIFEST, default_key())
    sig = bytearray(base64.b64decode(record["signature"]))
    sig[index] ^= 0x80
    record["signature"] = base64.b64encode(bytes(sig)).decode()
    record = parse_signature(signature_bytes(record))  # still well-formed ...
    message = one_line_error(ArtifactError, verify_manifest_signature, MANIFEST, record)
    assert "does not match the manifest" in message  # ... but not valid


def test_swapped_public_key_is_rejected():
    record = sign_manifest(MANIFEST, default_key())
    other = Ed25519PrivateKey.generate().public_key()
    swapped = dict(record, public_key=base64.b64encode(raw(other)).decode(), key_id=key_id(other))
    assert "does not match the manifest" in one_line_error(ArtifactError, verify_manifest_signature,
                                                           MANIFEST, swapped)
    # swapping the key alone leaves key_id inconsistent, which is caught before any crypto
    only_key = dict(record, public_key=swapped["public_key"])
    assert "'key_id' does not match" in one_line_error(ArtifactError, verify_manifest_signature,
                                                       MANIFEST, only_key)


def test_resigned_by_a_stranger_verifies_but_is_not_trusted():
    """A modified artifact that was signed again with some other key is caught by the trust check."""
    mine = default_key()
    stranger = Ed25519PrivateKey.generate()
    record = sign_manifest(MANIFEST, stranger)
    assert verify_manifest_signature(MANIFEST, record) == key_id(stranger.public_key())
    trusted = trusted_keys()
    assert describe_signer(record, trusted) == f"{key_id(stranger.public_key())} (NOT trusted)"
    mine_record = sign_manifest(MANIFEST, mine)
    assert describe_signer(mine_record, trusted) == f"{key_id(mine.public_key())} (your key)"


def _valid():
    return sign_manifest(MANIFEST, Ed25519PrivateKey.generate())


def _without(k):
    r = _valid()
    del r[k]
    return r


B64_31 = base64.b64encode(b"\0" * 31).decode()
B64_63 = base64.b64encode(b"\0" * 63).decode()
MALFORMED = {
    "missing signature": lambda: _without("signature"),
    "missing key_id": lambda: _without("key_id"),
    "extra key": lambda: dict(_valid(), comment="hi"),
    "format as string": lambda: dict(_valid(), format="1"),
    "format as bool": lambda: dict(_valid(), format=True),
    "format 2": lambda: dict(_valid(), format=2),
    "other algorithm": lambda: dict(_valid(), algorithm="rsa"),
    "algorithm not a string": lambda: dict(_valid(), algorithm=["ed25519"]),
    "public_key bad base64": lambda: dict(_valid(), public_key="!!not base64!!"),
    "public_key 31 bytes": lambda: dict(_valid(), public_key=B64_31),
    "public_key not a string": lambda: dict(_valid(), public_key=12),
    "public_key unpadded": lambda: (lambda r: dict(r, public_key=r["public_key"].rstrip("=")))(_valid()),
    "public_key with newline": lambda: (lambda r: dict(r, public_key=r["public_key"][:10] + "\n"
                                                       + r["public_key"][10:]))(_valid()),
    "signature 63 bytes": lambda: dict(_valid(), signature=B64_63),
    "signature not a string": lambda: dict(_valid(), signature=None),
    "signed not sha256": lambda: dict(_valid(), signed="md5:" + "0" * 32),
    "signed uppercase hex": lambda: (lambda r: dict(r, signed=r["signed"].upper()))(_valid()),
    "signed not a string": lambda: dict(_valid(), signed=0),
    "key_id mismatch": lambda: dict(_valid(), key_id="ed25519:" + "0" * 32),
    "key_id not a string": lambda: dict(_valid(), key_id=1),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_parse_signature_rejects_malformed_records(case):
    record = MALFORMED[case]()
    message = one_line_error(ArtifactError, parse_signature, signature_bytes(record))
    assert SIGNATURE_FILE in message
    # verify_manifest_signature checks the same things on a record that was not parsed
    one_line_error(ArtifactError, verify_manifest_signature, MANIFEST, record)


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe{}", b"null"],
                         ids=["empty", "garbage", "list", "string", "not-utf8", "null"])
def test_parse_signature_rejects_non_records(data):
    assert SIGNATURE_FILE in one_line_error(ArtifactError, parse_signature, data)


def test_parse_signature_rejects_oversized_data():
    record = _valid()
    padded = signature_bytes(record).rstrip(b"\n") + b" " * (64 * 1024) + b"\n"
    assert json.loads(padded) == record  # valid JSON, refused only for its size
    message = one_line_error(ArtifactError, parse_signature, padded)
    assert "65536" in message
    assert parse_signature(signature_bytes(record)) == record


def test_signature_mismatch_message_is_the_documented_one():
    record = sign_manifest(MANIFEST, default_key())
    message = one_line_error(ArtifactError, verify_manifest_signature, MANIFEST + b" ", record)
    assert message.endswith("signature does not match the manifest: the artifact was modified after "
                            "signing; rebuild it or get it again from its builder")


# --- loading keys ---------------------------------------------------------------------------

def _formats(key: Ed25519PrivateKey) -> dict:
    pub = key.public_key()
    return {
        "edgec line": public_line(pub, "alice@laptop") + "\n",
        "edgec line no comment": public_line(pub),
        "openssh line": pub.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
        + " alice@laptop with spaces\n",
        "pem public": pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode(),
        "pem private": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                         ser.NoEncryption()).decode(),
        "openssh private": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                             ser.NoEncryption()).decode(),
    }


@pytest.mark.parametrize("fmt", sorted(_formats(Ed25519PrivateKey.generate())))
def test_load_public_key_accepts_every_format(tmp_path, fmt):
    key = Ed25519PrivateKey.generate()
    text = _formats(key)[fmt]
    path = tmp_path / "k.pub"
    path.write_text(text)
    for source in (path, str(path), text, text.encode()):
        loaded = load_public_key(source)
        assert isinstance(loaded, Ed25519PublicKey) and raw(loaded) == raw(key)


def test_public_line_format():
    key = Ed25519PrivateKey.generate()
    line = public_line(key.public_key(), "a\nb  c")
    kind, b64, comment = line.split(" ", 2)
    assert kind == "edgec-ed25519" and base64.b64decode(b64) == raw(key) and comment == "a b c"
    assert public_line(key) == f"edgec-ed25519 {b64}"  # a private key gives its public half


@pytest.mark.parametrize("fmt", ["pem", "openssh"])
def test_load_private_key_formats(tmp_path, fmt):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "k"
    path.write_bytes(key.private_bytes(ser.Encoding.PEM, {"pem": ser.PrivateFormat.PKCS8,
                                                          "openssh": ser.PrivateFormat.OpenSSH}[fmt],
                                       ser.NoEncryption()))
    assert raw(load_private_key(path)) == raw(key)


def test_load_private_key_errors(tmp_path, rsa_key):
    missing = tmp_path / "nope.pem"
    assert str(missing) in one_line_error(EdgecError, load_private_key, missing)

    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    assert "not a PEM or OpenSSH private key" in one_line_error(EdgecError, load_private_key, garbage)
    garbage.write_bytes(os.urandom(100))
    assert "not a PEM or OpenSSH private key" in one_line_error(EdgecError, load_private_key, garbage)

    rsa_file = tmp_path / "rsa.pem"
    for fmt in (ser.PrivateFormat.PKCS8, ser.PrivateFormat.TraditionalOpenSSL, ser.PrivateFormat.OpenSSH):
        rsa_file.write_bytes(rsa_key.private_bytes(ser.Encoding.PEM, fmt, ser.NoEncryption()))
        assert "is an RSA key" in one_line_error(EdgecError, load_private_key, rsa_file)

    encrypted = tmp_path / "enc.pem"
    for fmt in (ser.PrivateFormat.PKCS8, ser.PrivateFormat.TraditionalOpenSSL):
        k = rsa_key if fmt is ser.PrivateFormat.TraditionalOpenSSL else Ed25519PrivateKey.generate()
        encrypted.write_bytes(k.private_bytes(ser.Encoding.PEM, fmt, ser.BestAvailableEncryption(b"pw")))
        assert "encrypted" in one_line_error(EdgecError, load_private_key, encrypted)


def test_load_public_key_errors(tmp_path, rsa_key):
    missing = tmp_path / "nope.pub"
    message = one_line_error(EdgecError, load_public_key, missing)
    assert "no public key file" in message and str(missing) in message

    path = tmp_path / "bad.pub"
    for garbage in [b"", b"hello world\n", b"edgec-ed25519 !!!notbase64", b"edgec-ed25519",
                    b"edgec-ed25519 " + base64.b64encode(b"\0" * 31),
                    b"ssh-ed25519 AAAAnotreally", os.urandom(64),
                    b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"]:
        path.write_bytes(garbage)
        message = one_line_error(EdgecError, load_public_key, path)
        assert str(path) in message and "not a public key" in message

    rsa_pub = rsa_key.public_key()
    for blob in [rsa_pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo),
                 rsa_pub.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH) + b" bob@host",
                 rsa_key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())]:
        path.write_bytes(blob)
        assert "is an RSA key" in one_line_error(EdgecError, load_public_key, path)
        assert "is an RSA key" in one_line_error(EdgecError, load_public_key, blob.decode())


def test_a_path_that_looks_like_key_text_is_read_as_a_path(tmp_path, monkeypatch):
    key = Ed25519PrivateKey.generate()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ssh-ed25519 keys.pub").write_text(public_line(key.public_key()))
    assert raw(load_public_key("ssh-ed25519 keys.pub")) == raw(key)


# --- trust ----------------------------------------------------------------------------------

def test_trusted_keys_does_not_create_a_key(cfg):
    assert trusted_keys() == {}
    assert not default_key_path().exists() and not (cfg / "keys").exists()


def test_trusted_keys_includes_own_trusted_dir_and_extras(cfg, tmp_path):
    mine = default_key()
    alice, bob, carol, dave, erin = (Ed25519PrivateKey.generate() for _ in range(5))
    trusted_dir = cfg / "trusted"
    trusted_dir.mkdir()
    (trusted_dir / "alice.pub").write_text(public_line(alice.public_key(), "alice") + "\n")
    (trusted_dir / "bob.pub").write_bytes(bob.public_key().public_bytes(ser.Encoding.OpenSSH,
                                                                        ser.PublicFormat.OpenSSH) + b" bob")
    (trusted_dir / "notes.txt").write_text("not a key, and not *.pub: ignored")
    carol_file = tmp_path / "carol.pem"
    carol_file.write_bytes(carol.public_key().public_bytes(ser.Encoding.PEM,
                                                           ser.PublicFormat.SubjectPublicKeyInfo))

    keys = trusted_keys(extra=[carol_file, dave.public_key(), erin])
    expected = {key_id(k.public_key()): raw(k) for k in (mine, alice, bob, carol, dave, erin)}
    assert {kid: raw(k) for kid, k in keys.items()} == expected
    assert all(isinstance(k, Ed25519PublicKey) for k in keys.values())
    assert set(trusted_keys()) == {key_id(k.public_key()) for k in (mine, alice, bob)}  # extras not kept


def test_broken_file_in_trusted_dir_is_reported(cfg):
    (cfg / "trusted").mkdir(parents=True)
    bad = cfg / "trusted" / "typo.pub"
    bad.write_text("ssh-ed25519 truncated")
    assert str(bad) in one_line_error(EdgecError, trusted_keys)


def test_describe_signer():
    mine = default_key()
    friend, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = trusted_keys(extra=[friend.public_key()])

    def describe(k):
        return describe_signer(sign_manifest(MANIFEST, k), trusted)

    assert describe(mine) == f"{key_id(mine.public_key())} (your key)"
    assert describe(friend) == f"{key_id(friend.public_key())} (trusted)"
    assert describe(stranger) == f"{key_id(stranger.public_key())} (NOT trusted)"
    # a trust table whose entry under that key_id is some other key does not vouch for the signer
    forged = {key_id(stranger.public_key()): friend.public_key()}
    assert describe_signer(sign_manifest(MANIFEST, stranger), forged).endswith("(NOT trusted)")


def test_key_id_format():
    key = Ed25519PrivateKey.generate()
    kid = key_id(key.public_key())
    assert kid.startswith("ed25519:") and len(kid) == len("ed25519:") + 32
    assert int(kid.split(":")[1], 16) >= 0 and kid == key_id(key)
    assert key_id(Ed25519PrivateKey.generate()) != kid

