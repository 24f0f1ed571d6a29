"""The content-addressed object store, and the snapshots that list what is in it.

The store keeps one copy of each distinct file (`objects/ab/cdef...`, the layout spelled
once, in `object_path`), so a re-submission of an unchanged tree copies nothing. A snapshot
is identified by the hash of its manifest. Standard library only: the host agent uses this
module on SSH hosts to find missing objects and to write a snapshot out.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int
    executable: bool


@dataclass(frozen=True)
class Snapshot:
    """What was taken from the source directory, and what the store had to add."""

    hash: str
    source: str
    files: dict[str, FileEntry]
    skipped: dict[str, str] = field(default_factory=dict)
    ignore_file: str | None = None
    new_files: int = 0
    new_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    @classmethod
    def from_manifest(cls, manifest: dict) -> Snapshot:
        """The snapshot a manifest describes (what `manifest()` wrote)."""
        files = {path: FileEntry(e["sha256"], e["size"], e["executable"])
                 for path, e in manifest["files"].items()}
        return cls(manifest["hash"], manifest["source"], files)

    def manifest(self) -> dict:
        return {
            "hash": self.hash,
            "source": self.source,
            "ignore_file": self.ignore_file,
            "files": {
                path: {"sha256": e.sha256, "size": e.size, "executable": e.executable}
                for path, e in sorted(self.files.items())
            },
            "skipped": dict(sorted(self.skipped.items())),
            "new_files": self.new_files,
            "new_bytes": self.new_bytes,
        }


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
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return True


def materialize(snapshot: Snapshot, store: ObjectStore, dest: Path) -> int:
    """Write the snapshot's files under `dest` (copies: the job may change its own files)."""
    for rel, entry in snapshot.files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.path_for(entry.sha256), target)
        if entry.executable:
            target.chmod(0o755)
    return len(snapshot.files)
