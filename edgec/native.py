"""Loading an artifact's native code (TVM's model.so, the C backend's libedgec.so) from the verified bytes.

The library is code (docs/design.md, trust): it is written to a sealed memory file and loaded
from there, so no path on disk can be swapped between the checksum check and the load.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator


def sealed_fd(code: bytes, name: str) -> int:
    """A read-only, sealed memfd holding `code` (the caller closes it once the loader has mapped it)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 2))
    try:
        view = memoryview(code)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                    | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fd_path(fd: int) -> str:
    return f"/proc/{os.getpid()}/fd/{fd}"


@contextmanager
def sealed_path(code: bytes, name: str) -> Iterator[str]:
    """A fresh path (a private link named `name` to a sealed memfd of `code`) to dlopen while the
    context is open. Fresh, because the dynamic loader reuses an already loaded library of the same
    path, and memfd paths (/proc/PID/fd/N) repeat as descriptors are reused."""
    fd = sealed_fd(code, name)
    try:
        with tempfile.TemporaryDirectory(prefix="edgec-lib-") as tmp:
            link = os.path.join(tmp, name)
            os.symlink(fd_path(fd), link)
            yield link
    finally:
        os.close(fd)  # the loader's mapping keeps the code alive
