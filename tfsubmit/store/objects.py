"""The content-addressed object store: one copy of each distinct file (`objects/ab/cdef...`,
the layout spelled once, in `object_path`), so a re-submission of an unchanged tree copies
nothing. Snapshots (snapshots.py) list what a source tree holds in it.

Standard library only, and light: the host agent imports it on SSH hosts for every
pre-flight (which objects a host lacks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# A file of the store that grows with every object taken out of it.
REMOVALS = ".removals"


def object_path(digest: str) -> str:
    """Where an object lives inside a store (a posix path, the same on every host)."""
    return posixpath.join(digest[:2], digest[2:])


class ObjectStore:
    """Files addressed by their sha256, written once and never changed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, digest: str) -> Path:
        return self.root / object_path(digest)

    def missing(self, digests: list[str]) -> list[str]:
        return [digest for digest in digests if not self.has(digest)]

    def remove(self, digest: str) -> None:
        """Take an object out (it failed its hash check), and say so in `.removals`, so
        whoever trusts that the store still holds what it held (the stat cache) looks."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_for(digest))
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / REMOVALS, "a") as marker:
            marker.write(f"{digest}\n")

    def removals(self) -> list | None:
        """What `.removals` looks like now (None: nothing was ever removed)."""
        try:
            info = os.stat(self.root / REMOVALS)
        except FileNotFoundError:
            return None
        return [info.st_size, info.st_mtime_ns, info.st_ino]

    def has(self, digest: str) -> bool:
        return os.path.exists(f"{self.root}/{digest[:2]}/{digest[2:]}")  # per file: no pathlib

    def add(self, source: Path, digest: str) -> bool:
        """Copy `source` in unless the store has it already. Returns True when copied.
        A copy-on-write clone (reflink) where the file system offers one, else a copy:
        never a hard link, which a later in-place edit of the source would change."""
        return self._write(digest, lambda tmp: _clone_or_copy(source, Path(tmp)))

    def put(self, data: bytes, digest: str) -> bool:
        """Store `data` (a small file read once, to hash and to keep) unless the store has
        it already. Returns True when written."""
        def write(tmp: str) -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        return self._write(digest, write)

    def _write(self, digest: str, fill) -> bool:
        # Plain strings, not pathlib: a snapshot of 10,000 new files calls this 10,000 times.
        folder = f"{self.root}/{digest[:2]}"
        target = f"{folder}/{digest[2:]}"
        if os.path.exists(target):
            return False
        tmp = f"{folder}/.{digest[2:]}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            try:
                fill(tmp)
            except FileNotFoundError:  # the first object of its folder
                os.makedirs(folder, exist_ok=True)
                fill(tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # a full disk, say: no half-copied .tmp left
            raise
        return True


def _clone_or_copy(source: Path, target: Path) -> None:
    """A reflink (FICLONE: btrfs, XFS; shares blocks until either side changes), else a
    plain copy."""
    with source.open("rb") as src, open(target, "xb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return
        except OSError:
            pass  # ext4, tmpfs, overlayfs...: no clone
        copy_sparse(src, dst)


# The unit in which copies look for zeros: a block of them becomes a hole.
CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)


def copy_sparse(reader: BinaryIO, writer: BinaryIO,
                on_chunk: Callable[[bytes], None] = lambda chunk: None) -> None:
    """Copy `reader` into `writer` (both at their start), leaving holes where the data is
    zeros: a sparse file stays sparse (a 2 GB sparse input took 2 GB a copy before).
    `on_chunk` sees every chunk read (to hash it on the way)."""
    while chunk := reader.read(CHUNK):
        on_chunk(chunk)
        if chunk == _ZEROS[:len(chunk)]:
            writer.seek(len(chunk), os.SEEK_CUR)
        else:
            writer.write(chunk)
    writer.truncate()  # the file's length, where it ends in a hole


# linux/fs.h: _IOW(0x94, 9, int)
FICLONE = 0x40049409
