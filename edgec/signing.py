"""Ed25519 provenance for artifacts: who built this, and was it changed since?

The manifest already lists a SHA-256 per file, so signing the manifest's bytes covers
every file. The signature lives beside it in signature.json. A valid signature only
shows that the manifest has not changed since someone with that key signed it. Whether
that someone is trusted is a separate question: `trusted_keys` and `describe_signer`
answer it.

Each user gets their own key on first use, like ssh-keygen does, kept in
config_dir()/keys/ and readable only by them. Public keys of builders you trust go in
config_dir()/trusted/*.pub.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgec.errors import ArtifactError, EdgecError

SIGNATURE_FILE = "signature.json"
FORMAT = 1
ALGORITHM = "ed25519"
PUB_PREFIX = "edgec-ed25519"
# Domain separation: a signature over an artifact can never be replayed as one over anything else.
DOMAIN = b"edgec-artifact-v1\0"
MAX_SIGNATURE_SIZE = 64 * 1024
_FIELDS = frozenset({"format", "algorithm", "public_key", "key_id", "signed", "signature"})
_SIGNED = re.compile(r"sha256:[0-9a-f]{64}")
_FIX_SIG = "re-sign the artifact or get it again from its builder"


# --- where keys live ------------------------------------------------------------------------

def config_dir() -> Path:
    """$EDGEC_CONFIG_DIR, else $XDG_CONFIG_HOME/edgec, else ~/.config/edgec."""
    if os.environ.get("EDGEC_CONFIG_DIR"):
        return Path(os.environ["EDGEC_CONFIG_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore a relative path
        return Path(xdg) / "edgec"
    return Path.home() / ".config" / "edgec"


def default_key_path() -> Path:
    """The user's private signing key; its public half is the .pub file beside it."""
    return config_dir() / "keys" / "signing_key.pem"


def default_key(create: bool = True) -> Ed25519PrivateKey:
    """The user's signing key. If there is none and `create` is true, generate one."""
    path = default_key_path()
    if not (path.exists() or path.is_symlink()):
        if not create:
            raise EdgecError(f"no signing key at {path}; run a signed build once to create one")
        _create_key(path)
    key = _read_own_key(path)
    pub = path.with_suffix(".pub")
    if not pub.exists():  # first use, or the user deleted it: rebuild it from the private key
        _write_atomic(pub, (public_line(key.public_key(), "edgec signing key") + "\n").encode(), 0o644)
    return key


def _create_key(path: Path) -> None:
    """Write a new key to PATH unless another process gets there first.

    The key is written in full to a private temp file, then hard-linked to PATH. The link
    fails if PATH already exists, so two processes racing on first use end up with one key:
    the one that loses throws its key away and reads the winner's.
    """
    _make_private_dirs(path.parent)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race; its key is the one to use
        except OSError as e:  # e.g. a filesystem without hard links
            raise EdgecError(f"cannot create signing key {path} ({e.strerror}); set EDGEC_CONFIG_DIR "
                             "to a directory on a local filesystem") from None
    finally:
        os.unlink(tmp)


def _make_private_dirs(path: Path) -> None:
    """Create PATH and any missing parents with mode 0700. Existing directories are not changed."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
            os.chmod(p, 0o700)  # the umask may have taken bits off; ask for exactly 0700
        except FileExistsError:
            pass


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write DATA to PATH through a temp file and a rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_own_key(path: Path) -> Ed25519PrivateKey:
    """Load the user's key, refusing one that others could read or that a symlink could swap."""
    try:
        # O_NOFOLLOW: never read through a symlink; O_NONBLOCK: a FIFO here must not hang us
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if path.is_symlink():
            raise EdgecError(f"{path} is a symlink; put the key file itself there, "
                             f"with mode 600 (`chmod 600 {path}`)") from None
        raise EdgecError(f"cannot read signing key {path} ({e.strerror}); "
                         "check its permissions") from None
    try:
        st = os.fstat(fd)  # of the file we opened, not of whatever the path names later
        if not stat.S_ISREG(st.st_mode):
            raise EdgecError(f"{path} is not a regular file; remove it and edgec will create a new key")
        if os.name == "posix" and st.st_mode & 0o077:
            raise EdgecError(f"signing key {path} can be read or changed by other users "
                             f"(mode {stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    return _parse_private(data, str(path))


# --- loading keys ---------------------------------------------------------------------------

def load_private_key(path) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from a PEM (PKCS8) or OpenSSH private key file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgecError(f"no private key file at {path}; check the path") from None
    except OSError as e:
        raise EdgecError(f"cannot read private key {path} ({e.strerror}); check the path") from None
    return _parse_private(data, str(path))


def _parse_private(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # what cryptography raises when a key needs a password
        raise EdgecError(f"{where} is an encrypted private key; edgec needs an unencrypted one: "
                         "decrypt a copy (`ssh-keygen -p -N '' -f COPY`) and use that") from None
    except (ValueError, UnsupportedAlgorithm):
        raise EdgecError(f"{where} is not a PEM or OpenSSH private key; "
                         "create one with `ssh-keygen -t ed25519`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgecError(f"{where} is {_kind(key)} key, but edgec signs with Ed25519; "
                         "create one with `ssh-keygen -t ed25519`")
    return key


def load_public_key(path_or_text) -> Ed25519PublicKey:
    """An Ed25519 public key from a file or from its text.

    Accepted: an `edgec-ed25519 BASE64 [comment]` line, an OpenSSH `ssh-ed25519 AAAA... [comment]`
    line, a PEM public key, or a PEM/OpenSSH private key (its public half is used).
    """
    if isinstance(path_or_text, bytes):
        data, where = path_or_text, "public key text"
    elif (isinstance(path_or_text, str) and not os.path.isfile(path_or_text)
          and _looks_like_key(path_or_text)):
        data, where = path_or_text.encode(), "public key text"
    else:
        path = Path(path_or_text)
        where = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise EdgecError(f"no public key file at {path}; check the path") from None
        except OSError as e:
            raise EdgecError(f"cannot read public key {path} ({e.strerror}); check the path") from None
    return _parse_public(data, where)


def _looks_like_key(text: str) -> bool:
    """Key text rather than a path: a PEM block, or `TYPE BASE64 ...` with a known key type."""
    if "-----BEGIN" in text:
        return True
    fields = text.split()
    return len(fields) >= 2 and fields[0].startswith((PUB_PREFIX, "ssh-", "ecdsa-"))


def _parse_public(data: bytes, where: str) -> Ed25519PublicKey:
    text = data.decode("utf-8", "replace").strip()
    if text.startswith("-----BEGIN") and "PRIVATE KEY-----" in text.splitlines()[0]:
        return _parse_private(text.encode(), where).public_key()
    fields = text.split()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        elif fields and fields[0] == PUB_PREFIX and len(fields) >= 2:
            key = Ed25519PublicKey.from_public_bytes(_b64(fields[1], 32))
        elif fields and (fields[0].startswith("ssh-") or fields[0].startswith("ecdsa-")) and len(fields) >= 2:
            key = serialization.load_ssh_public_key(f"{fields[0]} {fields[1]}".encode())
        else:
            raise ValueError
    except (ValueError, UnsupportedAlgorithm):
        raise EdgecError(f"{where} is not a public key (expected an `{PUB_PREFIX} ...` line, "
                         "an `ssh-ed25519 ...` line or a PEM key); check the file") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EdgecError(f"{where} is {_kind(key)} key, but edgec signatures are Ed25519; "
                         "use the builder's Ed25519 public key")
    return key


def _kind(key) -> str:
    """'an RSA', 'an EC', ... for error messages."""
    for kinds, name in (((rsa.RSAPrivateKey, rsa.RSAPublicKey), "an RSA"),
                        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "an EC"),
                        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "a DSA"),
                        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448")):
        if isinstance(key, kinds):
            return name
    return f"a {type(key).__name__}"


def _b64(text, size: int) -> bytes:
    """Strict base64 of exactly SIZE bytes; ValueError otherwise (padding and alphabet are checked)."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("bad base64") from None
    if len(raw) != size or base64.b64encode(raw).decode() != text:
        raise ValueError(f"not {size} bytes in canonical base64")
    return raw


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _public(key) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key
    raise TypeError(f"expected an Ed25519 key, got {type(key).__name__}")


def public_line(pub, comment: str = "") -> str:
    """The .pub format: `edgec-ed25519 BASE64 [comment]`, one line, easy to paste."""
    line = f"{PUB_PREFIX} {base64.b64encode(_raw(_public(pub))).decode()}"
    comment = " ".join(comment.split())  # keep it one line
    return f"{line} {comment}" if comment else line


def key_id(pub) -> str:
    """A short fingerprint to show and to look keys up by: ed25519: + 128 bits of SHA-256."""
    return "ed25519:" + hashlib.sha256(_raw(_public(pub))).hexdigest()[:32]


# --- signing and verifying ------------------------------------------------------------------

def _message(manifest_bytes: bytes) -> bytes:
    return DOMAIN + hashlib.sha256(manifest_bytes).digest()


def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> dict:
    """The signature record for a manifest's exact bytes (write it with `signature_bytes`)."""
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"expected an Ed25519PrivateKey, got {type(key).__name__}")
    pub = key.public_key()
    return {
        "format": FORMAT,
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(_raw(pub)).decode(),
        "key_id": key_id(pub),
        "signed": "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": base64.b64encode(key.sign(_message(manifest_bytes))).decode(),
    }


def signature_bytes(record: dict) -> bytes:
    """signature.json's contents: canonical JSON, so the same record always gives the same bytes."""
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")


def parse_signature(data: bytes) -> dict:
    """Parse signature.json and check it strictly. It comes from outside, so nothing is assumed."""
    if len(data) > MAX_SIGNATURE_SIZE:
        raise ArtifactError(f"{SIGNATURE_FILE} is {len(data)} bytes, more than a signature can be "
                            f"({MAX_SIGNATURE_SIZE}); {_FIX_SIG}")
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ArtifactError(f"{SIGNATURE_FILE} is not valid JSON; {_FIX_SIG}") from None
    _check_record(record)
    return record


def _check_record(record) -> Ed25519PublicKey:
    """Raise ArtifactError unless RECORD is a well-formed signature record; return its public key."""
    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{SIGNATURE_FILE} is malformed: {problem}; {_FIX_SIG}")

    if not isinstance(record, dict):
        raise bad("it is not a JSON object")
    if set(record) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(record)), sorted(set(record) - _FIELDS)
        raise bad(", ".join([f"missing {k!r}" for k in missing] + [f"unexpected {k!r}" for k in extra]))
    if type(record["format"]) is not int:
        raise bad("'format' is not an integer")
    if record["format"] != FORMAT:
        raise ArtifactError(f"{SIGNATURE_FILE} has signature format {record['format']}, but this edgec "
                            f"reads format {FORMAT}; upgrade edgec or {_FIX_SIG}")
    if record["algorithm"] != ALGORITHM:
        raise bad(f"'algorithm' is {record['algorithm']!r}, not {ALGORITHM!r}")
    try:
        pub = Ed25519PublicKey.from_public_bytes(_b64(record["public_key"], 32))
    except ValueError:
        raise bad("'public_key' is not 32 bytes of base64") from None
    try:
        _b64(record["signature"], 64)
    except ValueError:
        raise bad("'signature' is not 64 bytes of base64") from None
    if not (isinstance(record["signed"], str) and _SIGNED.fullmatch(record["signed"])):
        raise bad("'signed' is not sha256:<64 hex digits>")
    if record["key_id"] != key_id(pub):
        raise bad("'key_id' does not match 'public_key'")
    return pub


def verify_manifest_signature(manifest_bytes: bytes, record: dict) -> str:
    """Check RECORD signs exactly MANIFEST_BYTES; return the signer's key_id.

    This only proves the manifest was not changed after that key signed it. Anyone can sign
    with a key of their own, so check the key_id against `trusted_keys()` as well.
    """
    pub = _check_record(record)
    mismatch = ArtifactError(f"the artifact's signature does not match the manifest: the artifact "
                             "was modified after signing; rebuild it or get it again from its builder")
    if record["signed"] != "sha256:" + hashlib.sha256(manifest_bytes).hexdigest():
        raise mismatch
    try:
        pub.verify(base64.b64decode(record["signature"]), _message(manifest_bytes))
    except InvalidSignature:
        raise mismatch from None
    return record["key_id"]


# --- trust ----------------------------------------------------------------------------------

def _own_public() -> Ed25519PublicKey | None:
    """The user's own public key, or None if they have no key yet (none is created)."""
    path = default_key_path()
    if not (path.exists() or path.is_symlink()):
        return None
    return default_key(create=False).public_key()


def trusted_keys(extra=()) -> dict[str, Ed25519PublicKey]:
    """key_id -> key for every key whose signature we accept: the user's own, trusted/*.pub, EXTRA.

    EXTRA items are key file paths or Ed25519 key objects. A bad file in trusted/ is an error,
    not skipped, so the user finds out that a key they meant to trust is not being used.
    """
    keys = []
    own = _own_public()
    if own is not None:
        keys.append(own)
    trusted_dir = config_dir() / "trusted"
    if trusted_dir.is_dir():
        keys += [load_public_key(p) for p in sorted(trusted_dir.glob("*.pub"))]
    for item in extra:
        if isinstance(item, (Ed25519PublicKey, Ed25519PrivateKey)):
            keys.append(_public(item))
        elif isinstance(item, (str, os.PathLike)):
            keys.append(load_public_key(item))
        else:
            raise TypeError(f"expected a key path or an Ed25519 key, got {type(item).__name__}")
    return {key_id(k): k for k in keys}


def describe_signer(record: dict, trusted: dict) -> str:
    """'ed25519:ab12... (your key)', '(trusted)' or '(NOT trusted)', for `edgec verify` and logs."""
    kid = record["key_id"]
    key = trusted.get(kid)
    signer = base64.b64decode(record["public_key"])
    if key is None or _raw(key) != signer:
        return f"{kid} (NOT trusted)"
    try:
        own = _own_public()
    except EdgecError:
        own = None
    return f"{kid} (your key)" if own is not None and _raw(own) == signer else f"{kid} (trusted)"
