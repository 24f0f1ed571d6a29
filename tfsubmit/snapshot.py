"""Source snapshots: walk, filter with gitignore rules, hash, store by content.

The store keeps one copy of each distinct file (`objects/ab/cdef...`), so a re-submission
of an unchanged tree copies nothing. A snapshot is identified by the hash of its manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from tfsubmit.errors import SourceError

IGNORE_FILES = (".tfsubmitignore", ".gitignore")
# Never worth shipping; the ignore file can add to these, not remove them.
DEFAULT_IGNORES = (".git/", "__pycache__/", "*.pyc", ".tfsubmit/", ".ipynb_checkpoints/")
_CHUNK = 1 << 20


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


class ObjectStore:
    """Files addressed by their sha256, written once and never changed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:]

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


def load_ignore_spec(source: Path) -> tuple[pathspec.PathSpec, str | None]:
    """Rules from `.tfsubmitignore` if present, else `.gitignore`, plus the defaults."""
    lines = list(DEFAULT_IGNORES)
    used = None
    for name in IGNORE_FILES:
        candidate = source / name
        if candidate.is_file():
            lines += candidate.read_text().splitlines()
            used = name
            break
    return pathspec.GitIgnoreSpec.from_lines(lines), used


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(
    root: Path, spec: pathspec.PathSpec, skipped: dict[str, str]
) -> Iterator[tuple[str, Path]]:
    """Yield (relative posix path, real path) of every file to include.

    Symlinks are followed only while they stay inside the source directory.
    """
    real_root = root.resolve()
    seen_dirs = {real_root}
    stack = [(real_root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{prefix}{entry.name}"
                path = Path(entry.path)
                if entry.is_symlink():
                    target = path.resolve()
                    if not target.is_relative_to(real_root):
                        skipped[rel] = f"symlink leaves the source directory (-> {target})"
                        continue
                    if not target.exists():
                        skipped[rel] = "broken symlink"
                        continue
                    path = target
                if path.is_dir():
                    if spec.match_file(rel + "/"):
                        continue
                    if path in seen_dirs:
                        skipped[rel] = "symlink loop"
                        continue
                    seen_dirs.add(path)
                    stack.append((path, rel + "/"))
                elif path.is_file():
                    if not spec.match_file(rel):
                        yield rel, path


def take_snapshot(source: str | Path, store: ObjectStore, *, entry_script: str) -> Snapshot:
    """Snapshot `source` into `store`; the entry script must be part of it."""
    root = Path(source)
    if not root.is_dir():
        raise SourceError(f"source_directory {root} does not exist or is not a folder")
    spec, ignore_file = load_ignore_spec(root)
    files: dict[str, FileEntry] = {}
    skipped: dict[str, str] = {}
    new_files = new_bytes = 0
    for rel, path in _walk(root, spec, skipped):
        info = path.stat()
        digest = hash_file(path)
        if store.add(path, digest):
            new_files += 1
            new_bytes += info.st_size
        files[rel] = FileEntry(digest, info.st_size, bool(info.st_mode & stat.S_IXUSR))

    if entry_script not in files:
        if entry_script in skipped:
            reason = skipped[entry_script]
        elif (root / entry_script).exists():
            reason = f"it is excluded by {ignore_file or 'the default ignore rules'}"
        else:
            reason = "no such file"
        raise SourceError(
            f"entry_script {entry_script!r} is not in the snapshot of {root}: {reason}"
        )

    listing = "".join(
        f"{path}\0{e.sha256}\0{int(e.executable)}\n" for path, e in sorted(files.items())
    )
    return Snapshot(
        hash=hashlib.sha256(listing.encode()).hexdigest(),
        source=str(root),
        files=files,
        skipped=skipped,
        ignore_file=ignore_file,
        new_files=new_files,
        new_bytes=new_bytes,
    )


def materialize(snapshot: Snapshot, store: ObjectStore, dest: Path) -> None:
    """Write the snapshot's files under `dest` (copies: the job may change its own files)."""
    for rel, entry in snapshot.files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.path_for(entry.sha256), target)
        if entry.executable:
            target.chmod(0o755)
