"""The build artifact: one self-contained, verifiable directory (optionally packed as a tar).

Writing goes to a temp directory beside the output and is renamed into place only
after the manifest (with a size and SHA-256 per file) is complete, so a crash or
an error never leaves a half-written artifact where a runtime would load it.
Loading checks the format version and every file, so truncation, corruption and
tampering fail loudly with a one-line message instead of producing garbage text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from edgec.errors import ArtifactError, EdgecError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20  # 1 MiB: constant memory for multi-GB weight files


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed; the one implementation used to write and to verify."""
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


class ArtifactWriter:
    """Context manager that builds an artifact in a temp dir and installs it atomically.

    with ArtifactWriter(out) as w:
        (w.dir / "model.onnx").write_bytes(...)
        w.manifest["recipe"] = ...
    """

    def __init__(self, output: Path, overwrite: bool = True):
        self.output = Path(output).absolute()
        self.overwrite = overwrite
        self.dir: Path | None = None
        self.manifest: dict = {}

    def __enter__(self) -> "ArtifactWriter":
        # Refuse before the (possibly long) build, not after it.
        _check_replaceable(self.output, self.overwrite)
        self.dir = _make_temp_dir(self.output)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._write_manifest()
                _install(self.dir, self.output, self.overwrite)
        finally:
            if self.dir.exists():  # an error anywhere: leave nothing behind
                shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def _write_manifest(self) -> None:
        files = {}
        for path in sorted(self.dir.rglob("*")):
            rel = path.relative_to(self.dir).as_posix()
            if path.is_symlink():
                raise EdgecError(f"artifact must be self-contained, but {rel} is a symlink")
            if path.is_file() and rel != MANIFEST:
                files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        self.manifest.update(
            files=files,
            format_version=FORMAT_VERSION,
            edgec_version=_edgec_version(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            total_size=sum(f["size"] for f in files.values()),
        )
        text = json.dumps(self.manifest, indent=2, sort_keys=True)
        (self.dir / MANIFEST).write_text(text + "\n", encoding="utf-8")


def _make_temp_dir(output: Path) -> Path:
    """Temp dir beside OUTPUT (same filesystem, so the final rename is atomic)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the installed artifact should be readable
    return tmp


def _is_artifact(path: Path) -> bool:
    """True only for a directory whose manifest.json looks like ours: never delete user data."""
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "format_version" in data


def _check_replaceable(output: Path, overwrite: bool) -> None:
    """Raise unless OUTPUT is absent, an empty directory, or an artifact we may overwrite."""
    if not (output.exists() or output.is_symlink()):
        return
    if output.is_symlink() or not output.is_dir():
        raise EdgecError(f"{output} exists and is not an edgec artifact directory; "
                         "remove it or choose another output path")
    if not any(output.iterdir()):
        return
    if not _is_artifact(output):
        raise EdgecError(f"{output} is a non-empty directory that is not an edgec artifact "
                         f"(no valid {MANIFEST}); refusing to replace it, choose another output path")
    if not overwrite:
        raise EdgecError(f"{output} already exists; remove it or allow overwriting")


def _install(new: Path, output: Path, overwrite: bool) -> None:
    """Move the finished directory NEW to OUTPUT, replacing an old artifact via rename."""
    _check_replaceable(output, overwrite)  # again: it may have appeared during the build
    if not output.exists():
        os.rename(new, output)
        return
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(output, old)
    try:
        os.rename(new, output)
    except BaseException:
        os.rename(old, output)  # put the previous artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_manifest(path: Path, *, verify: bool = True) -> dict:
    """Read an artifact's manifest, checking format version and (if verify) every file."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"no artifact at {path}; build one with `edgec build`")
    if not path.is_dir():
        hint = " (a packed .edgec file: unpack it first)" if path.suffix == ".edgec" else ""
        raise ArtifactError(f"{path} is not an artifact directory{hint}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not an edgec artifact: {MANIFEST} is missing; "
                            "rebuild it with `edgec build`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({e}); "
                            "the artifact is corrupt, rebuild it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{manifest_path} is not an edgec manifest (no 'files' table); "
                            "the artifact is corrupt, rebuild it")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path} has artifact format version {version!r}, but this edgec "
                            f"reads version {FORMAT_VERSION}; rebuild it with this edgec")
    if verify:
        verify_files(path, manifest)
    return manifest


def verify_files(path: Path, manifest: dict) -> None:
    """Check every listed file exists with the recorded size and SHA-256; extra files are ignored."""
    path = Path(path)
    entries = manifest["files"]
    for rel, entry in entries.items():  # cheap checks first: no hashing GBs to find a missing file
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise ArtifactError(f"{path}: manifest lists an unsafe path {rel!r}; "
                                "the artifact was tampered with, rebuild it")
        if not (isinstance(entry, dict) and type(entry.get("size")) is int
                and isinstance(entry.get("sha256"), str)):
            raise ArtifactError(f"{path}: manifest entry for {rel!r} is malformed; "
                                "the artifact is corrupt, rebuild it")
    for rel, entry in entries.items():
        file = path / rel
        if not file.is_file():
            raise ArtifactError(f"{path}: {rel} is missing; the artifact is incomplete, rebuild it")
        size = file.stat().st_size
        if size != entry["size"]:
            problem = "truncated" if size < entry["size"] else "modified"
            raise ArtifactError(f"{path}: {rel} is {size} bytes but the manifest says "
                                f"{entry['size']} ({problem}); rebuild the artifact")
    for rel, entry in entries.items():
        if sha256_file(path / rel) != entry["sha256"]:
            raise ArtifactError(f"{path}: {rel} is corrupt or tampered with (SHA-256 mismatch); "
                                "rebuild the artifact")


def pack(artifact_dir: Path, out_file: Path) -> Path:
    """Write ARTIFACT_DIR as one uncompressed tar (weights barely compress; mmap-friendly)."""
    artifact_dir, out_file = Path(artifact_dir), Path(out_file)
    manifest = load_manifest(artifact_dir, verify=False)  # unpack verifies the contents
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_file.name}.tmp-", dir=out_file.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for rel in [MANIFEST, *sorted(manifest["files"])]:  # manifest first, for streaming
                tar.add(artifact_dir / rel, arcname=rel, recursive=False)
        os.replace(tmp, out_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_file


def unpack(file: Path, dest: Path, *, overwrite: bool = True) -> Path:
    """Extract a .edgec tar to DEST safely and atomically, then verify it; returns DEST."""
    file, dest = Path(file), Path(dest).absolute()
    if not file.is_file():
        raise ArtifactError(f"no artifact at {file}; build one with `edgec build`")
    _check_replaceable(dest, overwrite)
    tmp = _make_temp_dir(dest)
    try:
        try:
            with tarfile.open(file, "r:") as tar:
                for member in tar:
                    _extract_member(tar, member, tmp, file)
        except tarfile.TarError as e:
            raise ArtifactError(f"{file} is not a valid .edgec archive ({e}); "
                                "rebuild or re-pack it") from None
        load_manifest(tmp, verify=True)
        _install(tmp, dest, overwrite)
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
