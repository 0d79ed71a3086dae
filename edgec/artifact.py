"""The build artifact: one self-contained directory that is exactly its manifest.

Writing goes to a temp directory beside the output; the manifest (size and
SHA-256 per file) is written last, signed, and the directory is swapped into
place atomically (renameat2 RENAME_EXCHANGE where the kernel has it), so a
crash never leaves a half-written artifact where a runtime would load it, and
a reader never sees the path missing.

edgec replaces an existing output only if it is an edgec artifact that
verifies and holds nothing else (`force` also allows extra files in a
verified artifact); it never deletes a folder it did not create.

Reading (`open_artifact`) opens the directory and every listed file once,
without following symlinks, hashes each file through its open descriptor and
hands the runtimes exactly those bytes (small files from memory, large ones
through the pinned descriptor), so a concurrent rebuild cannot mix two builds.
Unlisted files, symlinks and special files are refused: nothing outside the
manifest can change what an artifact does.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tarfile
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from edgec.errors import ArtifactError, EdgecError

from . import manifest as schema
from . import signing

FORMAT_VERSION = schema.FORMAT_VERSION
MANIFEST = "manifest.json"
SIGNATURE = signing.SIGNATURE_FILE
TOP_LEVEL = (MANIFEST, SIGNATURE)  # the two files the file table does not (cannot) list
MAX_MANIFEST_BYTES = 16 << 20
IN_MEMORY_MAX = 64 << 20  # files up to this size are kept as the verified bytes themselves
_CHUNK = 1 << 20  # 1 MiB: constant memory for multi-GB weight files
_MARKER = ".edgec-build.json"  # inside a build's temp dir: who is writing it (stale-dir cleanup)
_OPEN_TRIES = 4  # a concurrent rebuild can delete the old files between opening the dir and a file


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _edgec_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("edgec")
    except (ImportError, PackageNotFoundError):
        return "0.1.0"


# -- reading ----------------------------------------------------------------------------------------
class DirectoryFiles:
    """Files read straight from a folder: the build side and tests, where nothing is verified."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def path(self, rel: str) -> str:
        return str(self.root / rel)

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def folder(self) -> Path:
        return self.root

    def is_current(self, rel: str) -> bool:
        return True

    def sub(self, prefix: str) -> "DirectoryFiles":
        return DirectoryFiles(self.root / prefix)


def as_files(source) -> "DirectoryFiles | VerifiedFiles":
    """A backend's model files: a VerifiedFiles view, or a plain folder path."""
    return source if hasattr(source, "read_bytes") and hasattr(source, "sub") else DirectoryFiles(source)


class VerifiedFiles:
    """A view of a VerifiedArtifact under one folder (e.g. model/): what a backend may read."""

    def __init__(self, art: "VerifiedArtifact", prefix: str = ""):
        self.art, self.prefix = art, prefix

    def _key(self, rel: str) -> str:
        key = f"{self.prefix}/{rel}" if self.prefix else rel
        if key not in self.art.fds:
            raise ArtifactError(f"{self.art.path}: {key} is not listed in the manifest; "
                                "the artifact is incomplete, rebuild it")
        return key

    def read_bytes(self, rel: str) -> bytes:
        """The exact bytes that were hashed (small files), or one read of the pinned descriptor."""
        key = self._key(rel)
        data = self.art.contents.get(key)
        if data is None:
            raise ArtifactError(f"{key} is {self.art.sizes[key]:,} bytes: too large to read into memory; "
                                "open it through path()")
        return data

    def path(self, rel: str) -> str:
        """A path to the verified file itself (its pinned descriptor), for loaders that want a path."""
        return _fd_path(self.art.fds[self._key(rel)])

    def size(self, rel: str) -> int:
        return self.art.sizes[self._key(rel)]

    def exists(self, rel: str) -> bool:
        return (f"{self.prefix}/{rel}" if self.prefix else rel) in self.art.fds

    def folder(self) -> Path:
        """This view's folder on disk, for a loader that must open a file by name (see is_current)."""
        return self.art.path / self.prefix

    def is_current(self, rel: str) -> bool:
        """True while folder()/rel is still the very file that was verified (same inode, which the
        pinned descriptor keeps from being reused): a loader that opened it by name between two
        such checks read the verified file, not a rebuild's."""
        try:
            st = os.stat(self.folder() / rel)
        except OSError:
            return False
        pinned = os.fstat(self.art.fds[self._key(rel)])
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (pinned.st_dev, pinned.st_ino)

    def sub(self, prefix: str) -> "VerifiedFiles":
        return VerifiedFiles(self.art, f"{self.prefix}/{prefix}" if self.prefix else prefix)

    def listing(self) -> list[str]:
        """Listed files under this view, relative to it."""
        head = f"{self.prefix}/" if self.prefix else ""
        return sorted(k[len(head):] for k in self.art.fds if k.startswith(head))


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class VerifiedArtifact:
    """An artifact opened once: manifest checked, every listed file open, hashed and pinned.

    The descriptors keep the verified inodes alive even if the artifact is
    rebuilt or deleted meanwhile; close() (or garbage collection) releases them.
    """

    def __init__(self, path: Path):
        self.path = path
        self.manifest: dict = {}
        self.manifest_bytes = b""
        self.signature: dict | None = None
        self.signer: str | None = None  # key id of a valid signature
        self.fds: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.contents: dict[str, bytes] = {}
        self.extra: list[str] = []  # unlisted entries (only collected with allow_extra)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def native(self) -> bool:
        return schema.is_native(self.manifest)

    def files(self, prefix: str = "") -> VerifiedFiles:
        return VerifiedFiles(self, prefix)

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}

    def __del__(self):
        self.close()


def _open_in(dir_fd: int, name: str, flags: int) -> int:
    return os.open(name, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)


def _walk(dir_fd: int, rel: str, found: dict[str, str]) -> None:
    """Every entry under dir_fd as rel-path -> kind ('file', 'dir', 'symlink', 'other'), no following."""
    with os.scandir(dir_fd) as it:
        entries = list(it)
    for e in entries:
        name = f"{rel}/{e.name}" if rel else e.name
        if e.is_symlink():
            found[name] = "symlink"
        elif e.is_dir(follow_symlinks=False):
            found[name] = "dir"
            sub = _open_in(dir_fd, e.name, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _walk(sub, name, found)
            finally:
                os.close(sub)
        elif e.is_file(follow_symlinks=False):
            found[name] = "file"
        else:
            found[name] = "other"


def _open_listed(root_fd: int, rel: str) -> int:
    """Open a listed file, refusing a symlink in any component of its path."""
    parts = rel.split("/")
    fd = root_fd
    try:
        for part in parts[:-1]:
            nxt = _open_in(fd, part, os.O_RDONLY | os.O_DIRECTORY)
            if fd != root_fd:
                os.close(fd)
            fd = nxt
        return _open_in(fd, parts[-1], os.O_RDONLY)
    finally:
        if fd != root_fd:
            os.close(fd)


def _hash_fd(fd: int, keep: bool) -> tuple[str, bytes | None]:
    digest = hashlib.sha256()
    chunks = [] if keep else None
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
        if chunks is not None:
            chunks.append(chunk)
    return digest.hexdigest(), (b"".join(chunks) if chunks is not None else None)


def open_artifact(path: str | Path, *, verify: bool = True, allow_extra: bool = False) -> VerifiedArtifact:
    """Open and verify the artifact at PATH (see the module docstring); ArtifactError when it does not verify.

    verify=False skips the SHA-256 of large files (benchmarks); the file set, sizes and
    the manifest are still checked, and native code is always hashed. allow_extra lists
    unlisted entries in `.extra` instead of refusing them (only to decide a replacement).
    """
    path = Path(path)
    for attempt in range(_OPEN_TRIES):
        try:
            return _open_once(path, verify, allow_extra)
        except _Swapped:
            continue  # a rebuild replaced the folder while it was being read: read the new one
        except FileNotFoundError:
            if attempt + 1 == _OPEN_TRIES or not path.exists():
                break
    raise ArtifactError(f"no artifact at {path} (or it was removed while loading); build one with `edgec build`")


class _Swapped(Exception):
    """The folder at the artifact's path is no longer the one being read."""


def _open_once(path: Path, verify: bool, allow_extra: bool) -> VerifiedArtifact:
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    if not path.is_dir():
        hint = " (a packed .edgec file: unpack it first)" if path.suffix == ".edgec" else ""
        raise ArtifactError(f"{path} is not an artifact directory{hint}")
    art = VerifiedArtifact(path)
    root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        art.manifest_bytes = _read_top(root, path, MANIFEST, required=True)
        art.manifest = schema.parse(art.manifest_bytes, f"{path}/{MANIFEST}")
        listed = art.manifest["files"]
        found: dict[str, str] = {}
        _walk(root, "", found)
        parents = {p.as_posix() for rel in listed for p in PurePosixPath(rel).parents}
        for rel, kind in sorted(found.items(), key=lambda kv: (kv[1] == "dir", kv[0])):  # files first
            if rel in TOP_LEVEL and kind == "file":
                continue
            if kind == "dir" and rel in parents:
                continue
            if kind == "file" and rel in listed:
                continue
            if kind in ("symlink", "other") or (rel in listed and kind != "file"):
                what = "a symlink" if kind == "symlink" else "not a regular file"
                raise ArtifactError(f"{path}: {rel} is {what}; an artifact holds only the regular files "
                                    "its manifest lists: remove it, or rebuild the artifact")
            if allow_extra:
                art.extra.append(rel)
                continue
            raise ArtifactError(f"{path}: {rel} is not listed in the manifest; an artifact holds exactly the "
                                f"files its manifest lists: remove {rel}, or rebuild the artifact")
        for rel, entry in listed.items():  # cheap checks first: no hashing GBs to find a missing file
            if found.get(rel) != "file":
                raise ArtifactError(f"{path}: {rel} is missing; the artifact is incomplete, rebuild it")
            fd = _open_listed(root, rel)
            art.fds[rel] = fd
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"{path}: {rel} is not a regular file; rebuild the artifact")
            art.sizes[rel] = st.st_size
            if st.st_size != entry["size"]:
                problem = "truncated" if st.st_size < entry["size"] else "modified"
                raise ArtifactError(f"{path}: {rel} is {st.st_size} bytes but the manifest says "
                                    f"{entry['size']} ({problem}); rebuild the artifact")
        for rel, entry in listed.items():
            keep = entry["size"] <= IN_MEMORY_MAX or schema.is_native_file(rel)
            if not verify and not keep:
                continue
            digest, data = _hash_fd(art.fds[rel], keep)
            if digest != entry["sha256"]:
                raise ArtifactError(f"{path}: {rel} is corrupt or tampered with (SHA-256 mismatch); "
                                    "rebuild the artifact")
            if data is not None:
                art.contents[rel] = data
        sig = _read_top(root, path, SIGNATURE, required=False)
        if sig is not None:
            art.signature = signing.parse_signature(sig)
            art.signer = signing.verify_manifest_signature(art.manifest_bytes, art.signature)
    except BaseException as e:
        art.close()
        if isinstance(e, (ArtifactError, OSError)) and _moved(root, path):
            raise _Swapped() from None
        raise
    finally:
        os.close(root)
    return art


def _moved(root_fd: int, path: Path) -> bool:
    try:
        now, was = os.stat(path), os.fstat(root_fd)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (was.st_dev, was.st_ino)


def _read_top(root: int, path: Path, name: str, required: bool) -> bytes | None:
    try:
        fd = _open_in(root, name, os.O_RDONLY)
    except FileNotFoundError:
        if not required:
            return None
        if not os.path.lexists(path / name):
            raise ArtifactError(f"{path} is not an edgec artifact: {name} is missing; "
                                "rebuild it with `edgec build`") from None
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ArtifactError(f"{path}: {name} is a symlink; an artifact holds only regular files, "
                                "rebuild it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path}: {name} is not a regular file; rebuild the artifact")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path}: {name} is {st.st_size:,} bytes, more than any edgec artifact "
                                "writes; the artifact is corrupt, rebuild it")
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_manifest(path: str | Path, *, verify: bool = True) -> dict:
    """An artifact's manifest after the full check of open_artifact."""
    art = open_artifact(path, verify=verify)
    try:
        return art.manifest
    finally:
        art.close()


# -- writing -----------------------------------------------------------------------------------------
class ArtifactWriter:
    """Context manager that builds an artifact in a temp dir and installs it atomically.

    with ArtifactWriter(out, sign_key=key) as w:
        (w.dir / "model.onnx").write_bytes(...)
        w.manifest["recipe"] = ...

    sign_key: an Ed25519 private key (None: unsigned). force: replace a verified
    artifact even if it holds extra files (never anything that is not an artifact).
    """

    def __init__(self, output: Path, *, force: bool = False, sign_key=None):
        self.output = Path(output).absolute()
        self.force = force
        self.sign_key = sign_key
        self.dir: Path | None = None
        self.manifest: dict = {}

    def __enter__(self) -> "ArtifactWriter":
        # Refuse before the (possibly long) build, not after it.
        check_output(self.output, force=self.force)
        self.dir = _make_temp_dir(self.output)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._write_manifest()
                _install(self.dir, self.output, self.force)
        finally:
            if self.dir.exists():  # an error anywhere (or the old artifact after the swap): remove it
                shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def _write_manifest(self) -> None:
        (self.dir / _MARKER).unlink(missing_ok=True)
        files = {}
        for p in sorted(self.dir.rglob("*")):
            rel = p.relative_to(self.dir).as_posix()
            if p.is_symlink():
                raise EdgecError(f"artifact must be self-contained, but {rel} is a symlink")
            if rel in TOP_LEVEL:
                raise EdgecError(f"a backend wrote {rel}, a name the artifact reserves")
            if p.is_file():
                files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
            elif not p.is_dir():
                raise EdgecError(f"artifact must hold only regular files, but {rel} is not one")
        self.manifest.update(
            files=files,
            format_version=FORMAT_VERSION,
            edgec_version=_edgec_version(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            total_size=sum(f["size"] for f in files.values()),
        )
        text = (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
        (self.dir / MANIFEST).write_bytes(text)
        if self.sign_key is not None:
            record = signing.sign_manifest(text, self.sign_key)
            (self.dir / SIGNATURE).write_bytes(signing.signature_bytes(record))


def _proc_start(pid: int) -> str | None:
    """A process's start time in clock ticks (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()[19]


def _make_temp_dir(output: Path) -> Path:
    """Temp dir beside OUTPUT (same filesystem, so the final swap is atomic), marked as this build's."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    except OSError as e:
        raise EdgecError(f"cannot write the artifact beside {output}: {e.strerror}; "
                         "choose an output path in a folder you can write") from None
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the installed artifact should be readable
    marker = {"pid": os.getpid(), "start": _proc_start(os.getpid()), "host": socket.gethostname()}
    (tmp / _MARKER).write_text(json.dumps(marker))
    return tmp


def _temp_dirs(output: Path) -> list[Path]:
    pattern = re.compile(rf"^\.{re.escape(output.name)}\.(tmp|old)-[A-Za-z0-9_]+$")
    try:
        return [p for p in output.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return []


def _is_stale(tmp: Path) -> bool:
    """True for a temp dir of a build that no longer runs, or an old artifact a killed swap left."""
    if tmp.is_symlink() or not tmp.is_dir():
        return False
    try:
        marker = json.loads((tmp / _MARKER).read_text())
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and isinstance(marker.get("pid"), int):
        if marker.get("host") != socket.gethostname():
            return False  # another machine's build on a shared disk: it may still run
        return _proc_start(marker["pid"]) != marker.get("start")
    try:  # no marker: only an edgec artifact (the previous build swapped out, then killed) is ours
        open_artifact(tmp, verify=False).close()
        return True
    except (ArtifactError, OSError):
        return False


def clean_stale(output: Path) -> list[Path]:
    """Remove temp folders beside OUTPUT left by killed builds (never one still being written)."""
    removed = []
    for tmp in _temp_dirs(Path(output).absolute()):
        if _is_stale(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def check_output(output: str | Path, *, force: bool = False) -> None:
    """Raise unless OUTPUT is absent, an empty folder, or an edgec artifact edgec may replace."""
    output = Path(output).absolute()
    if not os.path.lexists(output):
        _check_parent_writable(output)
        return
    if output.is_symlink() or not output.is_dir():
        raise EdgecError(f"{output} exists and is not an edgec artifact directory; "
                         "remove it or choose another output path")
    if not any(output.iterdir()):
        _check_parent_writable(output)
        return
    try:
        art = open_artifact(output, verify=True, allow_extra=True)
    except ArtifactError as e:
        raise EdgecError(f"{output} is not an edgec artifact that verifies ({e}); refusing to replace it: "
                         "choose another output path, or remove it yourself") from None
    art.close()
    if art.extra and not force:
        shown = ", ".join(art.extra[:3]) + (f" and {len(art.extra) - 3} more" if len(art.extra) > 3 else "")
        raise EdgecError(f"{output} is an edgec artifact but also holds files it did not create ({shown}); "
                         "refusing to replace it: move them out, or pass --force to delete them with it")
    _check_parent_writable(output)


def _check_parent_writable(output: Path) -> None:
    parent = output.parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise EdgecError(f"cannot write {output}: {parent} is not a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgecError(f"cannot write {output}: {parent} is not writable; choose another output path")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the kernel or libc cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _install(new: Path, output: Path, force: bool) -> None:
    """Move the finished directory NEW to OUTPUT; an old artifact ends up at NEW (removed by the caller)."""
    check_output(output, force=force)  # again: it may have changed during the build
    if not os.path.lexists(output):
        os.rename(new, output)
        return
    if _exchange(new, output):
        return
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(output, old)
    try:
        os.rename(new, output)
    except BaseException:
        os.rename(old, output)  # put the previous artifact back
        raise
    os.rename(old, new)  # so the caller's cleanup removes it


# -- packing --------------------------------------------------------------------------------------
def pack(artifact_dir: Path, out_file: Path) -> Path:
    """Write ARTIFACT_DIR as one uncompressed tar (weights barely compress; mmap-friendly)."""
    artifact_dir, out_file = Path(artifact_dir), Path(out_file)
    art = open_artifact(artifact_dir, verify=True)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_file.name}.tmp-", dir=out_file.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            members = [(MANIFEST, art.manifest_bytes)]  # manifest first, for streaming
            if art.signature is not None:
                members.append((SIGNATURE, signing.signature_bytes(art.signature)))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, _BytesReader(data))
            for rel in sorted(art.manifest["files"]):  # the verified descriptors, not the paths again
                info = tarfile.TarInfo(rel)
                info.size, info.mode = art.sizes[rel], 0o644
                with open(art.files().path(rel), "rb") as f:
                    tar.addfile(info, f)
        os.replace(tmp, out_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        art.close()
    return out_file


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def unpack(file: Path, dest: Path, *, force: bool = False) -> Path:
    """Extract a .edgec tar to DEST safely and atomically, then verify it; returns DEST."""
    file, dest = Path(file), Path(dest).absolute()
    if not file.is_file():
        raise ArtifactError(f"no artifact at {file}; build one with `edgec build`")
    check_output(dest, force=force)
    tmp = _make_temp_dir(dest)
    try:
        try:
            with tarfile.open(file, "r:") as tar:
                for member in tar:
                    _extract_member(tar, member, tmp, file)
        except tarfile.TarError as e:
            raise ArtifactError(f"{file} is not a valid .edgec archive ({e}); "
                                "rebuild or re-pack it") from None
        (tmp / _MARKER).unlink(missing_ok=True)
        open_artifact(tmp, verify=True).close()
        _install(tmp, dest, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path, file: Path) -> None:
    """Write one regular file under ROOT; anything that could escape ROOT is refused."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
        raise ArtifactError(f"{file}: unsafe archive member {member.name!r}; refusing to unpack")
    target = root / name
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)


# -- trust ------------------------------------------------------------------------------------------
def trust_of(art: VerifiedArtifact, trust=()) -> str:
    """'yours', 'trusted', 'untrusted' (a valid signature by a key not trusted here) or 'unsigned'."""
    if art.signer is None:
        return "unsigned"
    keys = signing.trusted_keys(trust)
    if art.signer not in keys:
        return "untrusted"
    own = signing.default_key_path().with_suffix(".pub")
    try:
        mine = own.is_file() and signing.key_id(signing.load_public_key(own)) == art.signer
    except EdgecError:
        mine = False
    return "yours" if mine else "trusted"


def check_trust(art: VerifiedArtifact, trust=(), allow_unsigned: bool = False) -> str:
    """The artifact's trust (see trust_of); refuses native code that no trusted key signed.

    A native artifact (TVM, C) is code: running it runs whatever its builder compiled, so it
    needs a signature by a key the user trusts. Other artifacts are data and only warn.
    """
    status = trust_of(art, trust)
    if status in ("yours", "trusted") or not art.native or allow_unsigned:
        return status
    who = "is not signed" if status == "unsigned" else f"is signed by {art.signer}, a key you do not trust"
    raise ArtifactError(f"{art.path} contains native code and {who}; run it only if you trust its builder: "
                        "pass --trust KEY.pub (trusted_keys=) with the builder's public key, or --allow-unsigned")
