"""Durable file writes: the one place that knows how a write survives a power cut.

Blocking (fsyncs), stdlib only: callers on the event loop run these in a worker thread.
A Raspberry Pi loses power without warning, so a file that matters (voiceprints, the
config, an installed model) is replaced by rename, never rewritten in place, and the
rename itself is made durable by fsyncing its directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600,
                 owner: tuple[int, int] | None = None) -> os.stat_result:
    """Replace ``path`` with ``data``: readers see the old file or the new, never half.

    The new file gets ``mode`` (whatever the umask) and, when given and running as root,
    ``owner`` (uid, gid); it is fsynced, renamed over the old one, and the directory is
    fsynced. Returns the new file's stat. On failure nothing is left behind and the old
    file is untouched; the OSError propagates.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(f.fileno(), *owner)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return st


def create_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` with mode 0600 if it does not exist, and tighten it if it does.

    No umask games: the umask is process-wide and threads race it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)


def shred(path: str | os.PathLike[str]) -> None:
    """Overwrite ``path`` with zeros, fsync it, and remove it (a missing file is fine).

    On a filesystem that writes in place (ext4 without data journalling, on a disk) the
    old bytes are gone. On flash (an SD card, eMMC, an SSD) the controller writes
    elsewhere and keeps the old blocks until it reuses them: this is then a best effort,
    and only data written encrypted from the start is out of reach without the key.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        zeros = bytes(1 << 16)
        written = 0
        while written < size:
            written += os.write(fd, zeros[: min(len(zeros), size - written)])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    fsync_dir(Path(path).parent)
