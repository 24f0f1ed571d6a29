"""The content-addressed object store: one copy of each distinct file (`objects/ab/cdef...`,
the layout spelled once, in `object_path`), so a re-submission of an unchanged tree copies
nothing. Snapshots (snapshots.py) list what a source tree holds in it.

Standard library only, and light: the host agent imports it on SSH hosts for every
pre-flight (which objects a host lacks).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import threading
from pathlib import Path


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

    def has(self, digest: str) -> bool:
        return self.path_for(digest).exists()

    def add(self, source: Path, digest: str) -> bool:
        """Copy `source` in unless the store has it already. Returns True when copied."""
        target = self.path_for(digest)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk, say: no half-copied .tmp left
            raise
        return True
