"""Snapshots: what a source tree held (path -> object, size, mode), identified by the hash
of its manifest, and writing one out again from the object store. Standard library only:
the host agent writes snapshots out on SSH hosts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tfsubmit.errors import SourceError
from tfsubmit.store.objects import ObjectStore, copy_sparse


class FileEntry(NamedTuple):
    """One file of a snapshot (a tuple: a 10,000-file snapshot makes 10,000 of them)."""

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
    read_files: int = 0  # files read and hashed; the others the stat cache knew

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


class CorruptObjectError(SourceError):
    """An object's content no longer matches its hash (changed on disk, or planted)."""


def materialize(snapshot: Snapshot, store: ObjectStore, dest: Path) -> int:
    """Write the snapshot's files under `dest` (copies: the job may change its own files),
    each checked against its hash as it is copied. An object that fails the check is
    removed from the store (the next submission sends it again) and CorruptObjectError
    names it."""
    for rel, entry in snapshot.files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = store.path_for(entry.sha256)
        if _copy_hashed(source, target) != entry.sha256:
            store.remove(entry.sha256)
            raise CorruptObjectError(
                f"{rel}: object {source} does not match its hash (it changed after it was "
                "stored, or was put there by someone else); it was removed: submit again")
        if entry.executable:
            target.chmod(0o755)
    return len(snapshot.files)


def _copy_hashed(source: Path, target: Path) -> str:
    """Copy (sparse: holes stay holes) and hash on the way."""
    digest = hashlib.sha256()
    with source.open("rb") as reader, target.open("wb") as writer:
        copy_sparse(reader, writer, digest.update)
    return digest.hexdigest()
