"""Step 1, snapshot: walk the source directory, filter it with gitignore rules, hash every
file and add what is new to the workspace's object store (pathspec does the matching)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pathspec

from tfsubmit.errors import SourceError
from tfsubmit.pipeline.context import Submission
from tfsubmit.runtime.metrics import METRICS_DIR
from tfsubmit.store.layout import write_json
from tfsubmit.store.objects import ObjectStore
from tfsubmit.store.runlog import RunLog
from tfsubmit.store.snapshots import FileEntry, Snapshot

IGNORE_FILES = (".tfsubmitignore", ".gitignore")
# Never worth shipping; the ignore file can add to these, not remove them.
DEFAULT_IGNORES = (".git/", "__pycache__/", "*.pyc", f"{METRICS_DIR}/", ".ipynb_checkpoints/")
_CHUNK = 1 << 20


def snapshot_source(sub: Submission, log: RunLog) -> Snapshot:
    """Snapshot the job's source directory into the object store; record its manifest."""
    sub.check_canceled()
    snap = take_snapshot(sub.job.source_directory, sub.store, entry_script=sub.job.entry_script,
                         inputs={sub.job.input_path(name, where): where
                                 for name, where in sub.job.inputs.items()})
    write_json(sub.paths.manifest, snap.manifest())
    log.event(
        f"snapshot {snap.hash[:12]}: {len(snap.files)} files, {snap.total_bytes} bytes "
        f"({snap.new_files} new to the store, {snap.new_bytes} bytes copied)"
    )
    for path, reason in snap.skipped.items():
        log.event(f"snapshot skipped {path}: {reason}")
    sub.record.note(snapshot_hash=snap.hash)
    return snap


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

    Symlinks are followed only while they stay inside the source directory. A folder reached
    twice (`alias -> data` beside `data`) is shipped under both names; only a link back to a
    folder on its own path (`data/up -> ..`) is a loop.
    """
    real_root = root.resolve()
    stack: list[tuple[Path, str, frozenset[Path]]] = [(real_root, "", frozenset({real_root}))]
    while stack:
        directory, prefix, ancestors = stack.pop()
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
                    real = path.resolve()
                    if real in ancestors:
                        skipped[rel] = f"symlink loop (-> {real})"
                        continue
                    stack.append((real, rel + "/", ancestors | {real}))
                elif path.is_file():
                    if not spec.match_file(rel):
                        yield rel, path


def _input_files(inputs: dict[str, str], skipped: dict[str, str]
                 ) -> Iterator[tuple[str, Path]]:
    """(path in the snapshot, real path) of every file of the job's inputs."""
    plain = pathspec.GitIgnoreSpec.from_lines(DEFAULT_IGNORES)
    for rel, where in inputs.items():
        path = Path(where)
        if path.is_file():
            yield rel, path
        elif path.is_dir():
            for inner, real in _walk(path, plain, skipped):
                yield f"{rel}/{inner}", real
        else:
            raise SourceError(f"inputs: {where} no longer exists")


def take_snapshot(source: str | Path, store: ObjectStore, *, entry_script: str,
                  inputs: dict[str, str] | None = None) -> Snapshot:
    """Snapshot `source` into `store`; the entry script must be part of it. `inputs` maps a
    path in the snapshot to a local file or folder shipped there too (the job's inputs)."""
    root = Path(source)
    if not root.is_dir():
        raise SourceError(f"source_directory {root} does not exist or is not a folder")
    spec, ignore_file = load_ignore_spec(root)
    files: dict[str, FileEntry] = {}
    skipped: dict[str, str] = {}
    new_files = new_bytes = 0
    for rel, path in [*_walk(root, spec, skipped), *_input_files(inputs or {}, skipped)]:
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


