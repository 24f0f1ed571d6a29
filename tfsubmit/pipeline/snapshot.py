"""Step 1, snapshot: walk the source directory, filter it with gitignore rules, hash every
file and add what is new to the workspace's object store (pathspec does the matching).

A stat cache per source tree (as git's index: path -> size, mtime, ctime, inode, hash)
lets an unchanged file be recognised without reading it. An entry is trusted only when all
four match, and a file changed less than RACY_SECONDS before the snapshot that saw it is
not cached at all (git's "racily clean" rule: an edit within one timestamp tick of the
previous look would otherwise keep its size and times), so a changed file is always seen."""

from __future__ import annotations

import hashlib
import marshal
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pathspec

from tfsubmit.errors import SourceError
from tfsubmit.pipeline.context import Submission
from tfsubmit.runtime.metrics import METRICS_DIR
from tfsubmit.store.layout import is_disk_full, write_json
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
                                 for name, where in sub.job.inputs.items()},
                         stat_cache=sub.workspace.stat_cache(sub.job.source_directory))
    write_json(sub.paths.manifest, snap.manifest())
    log.event(
        f"snapshot {snap.hash[:12]}: {len(snap.files)} files, {snap.total_bytes} bytes "
        f"({snap.read_files} read, the others unchanged; {snap.new_files} new to the store, "
        f"{snap.new_bytes} bytes copied)"
    )
    for path, reason in snap.skipped.items():
        log.event(f"snapshot skipped {path}: {reason}")
    sub.record.note(snapshot_hash=snap.hash)
    return snap


def _ignore_files(source: Path) -> list:
    """The ignore files a walk of `source` reads, with their stats (a changed rule file means
    a new walk)."""
    found = []
    for name in IGNORE_FILES:
        try:
            found.append([name, StatCache._key(os.stat(source / name))])
        except OSError:
            continue
    return found


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


# Files changed this close to a snapshot's start are not cached (see the module's doc).
RACY_SECONDS = 1.0
# The stat cache's format (marshal of plain data); another version is read as no cache.
CACHE_VERSION = 3
# Files up to this size are read once, to hash and to store; bigger ones are streamed.
SMALL_FILE = 1 << 20


class StatCache:
    """What a source tree's files hashed to, by their stat (real path -> size, mtime,
    ctime, inode, sha256), and its last walk; one file per tree, rewritten after a snapshot
    that saw something new."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        self.seen: dict[str, list] = {}
        self.tree: dict = {}  # the last walk: its folders' stats, files, skipped paths
        self.new_tree: dict = {}
        self.store_state: list = []  # the object store and its removals, as last seen
        # The last snapshot of the last walk: its hash, its file count and executables
        # (the rest of each file is in `entries`).
        self.result: dict = {}
        self.new_result: dict = {}
        if path is not None:
            try:
                data = marshal.loads(path.read_bytes())
                assert data["version"] == CACHE_VERSION
                self.entries, self.tree = data["entries"], data["tree"]
                self.store_state, self.result = data["store"], data["result"]
            except (OSError, ValueError, EOFError, TypeError, KeyError, AssertionError):
                self.entries, self.tree = {}, {}  # none yet, or damaged: hash everything once

    def unchanged(self, listed: list) -> dict[str, FileEntry] | None:
        """The last snapshot's files, when every file of the (unchanged) listing has the
        stat it had then (git's index check, in one tight loop); None: look file by file."""
        if self.result.get("count") != len(listed):
            return None
        executable = set(self.result["executable"])
        entries = self.entries
        stat_of, new = os.stat, tuple.__new__
        files = {}
        try:
            for rel, path in listed:
                info = stat_of(path)
                entry = entries[path]
                if entry[0] != info.st_size or entry[1] != info.st_mtime_ns \
                        or entry[2] != info.st_ctime_ns or entry[3] != info.st_ino:
                    return None
                files[rel] = new(FileEntry, (entry[4], entry[0], rel in executable))
        except (OSError, KeyError):
            return None
        return files

    def listing(self, root: str, ignore: list) -> tuple[list, dict] | None:
        """The last walk's (rel, path) files and skipped paths, when no folder of the tree
        (nor its ignore file) has changed since: a folder's mtime and ctime move whenever
        an entry is added, removed or renamed in it. None: walk again."""
        tree = self.tree
        if tree.get("root") != root or tree.get("ignore") != ignore:
            return None
        try:
            for folder, key in tree["dirs"].items():
                if self._key(os.stat(folder))[1:] != key:
                    return None
        except (OSError, KeyError, TypeError):
            return None
        return [tuple(item) for item in tree["files"]], dict(tree.get("skipped") or {})

    def remember_tree(self, root: str, ignore: list, dirs: dict, files: list,
                      skipped: dict) -> None:
        self.new_tree = {"root": root, "ignore": ignore, "dirs": dirs, "files": files,
                         "skipped": skipped}

    @staticmethod
    def _key(info: os.stat_result) -> list:
        return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]

    def lookup(self, path: str, info: os.stat_result) -> str | None:
        entry = self.entries.get(path)
        if entry is not None and entry[:4] == self._key(info):
            self.seen[path] = entry
            return entry[4]
        return None

    def remember(self, path: str, info: os.stat_result, digest: str) -> None:
        self.seen[path] = [*self._key(info), digest]

    def trusts(self, store: ObjectStore) -> bool:
        """Whether the store still holds every object this cache names: it is the same
        store, and nothing was taken out of it since (objects are only ever added, except
        by ObjectStore.remove)."""
        return self.store_state == [str(store.root), store.removals()]

    def remember_result(self, snapshot_hash: str, files: dict[str, FileEntry]) -> None:
        self.new_result = {"hash": snapshot_hash, "count": len(files),
                           "executable": [rel for rel, e in files.items() if e.executable]}

    def save(self, started_ns: int, store: ObjectStore) -> None:
        """Keep what this snapshot saw, less files changed too close to its start."""
        if self.path is None:
            return
        racy = started_ns - int(RACY_SECONDS * 1e9)
        kept = {path: entry for path, entry in self.seen.items()
                if max(entry[1], entry[2]) < racy}
        tree = self.new_tree or self.tree  # a new walk, else the one this snapshot reused
        if self.new_tree and any(max(key[0], key[1]) >= racy
                                 for key in tree["dirs"].values()):
            tree = {}  # a folder changed too recently to vouch for its listing
        state = [str(store.root), store.removals()]
        result = self.new_result if tree and len(kept) == len(self.seen) else {}
        if kept == self.entries and tree == self.tree \
                and state == self.store_state and result == self.result:
            return  # nothing new: an unchanged tree costs no write
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # marshal: the fastest the standard library reads (a cache of this Python only)
            tmp.write_bytes(marshal.dumps({"version": CACHE_VERSION, "entries": kept,
                                           "tree": tree, "store": state, "result": result}))
            os.replace(tmp, self.path)  # concurrent snapshots of a tree: the last one wins
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache: the next snapshot reads the files again


def _hash_and_store(path: str, info: os.stat_result, store: ObjectStore) -> tuple[str, bool]:
    """The file's sha256, and whether the store had to add it. A small file is read once."""
    if info.st_size <= SMALL_FILE:
        with open(path, "rb") as handle:
            data = handle.read()
        digest = hashlib.sha256(data).hexdigest()
        return digest, store.put(data, digest)
    digest = hash_file(Path(path))
    return digest, store.add(Path(path), digest)


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(
    root: Path, spec: pathspec.PathSpec, skipped: dict[str, str],
    dirs: dict[str, list] | None = None, *, follow_out: bool = False,
) -> Iterator[tuple[str, str, os.stat_result]]:
    """Yield (relative posix path, real path, its stat) of every file to include.

    Symlinks are followed only while they stay inside the source directory (wherever they
    point with `follow_out`: an input folder's links name data to ship). A folder reached
    twice (`alias -> data` beside `data`) is shipped under both names; only a link back to a
    folder on its own path (`data/up -> ..`) is a loop. One stat per file: the kind of an
    entry that is no link comes with the folder's listing.
    """
    real_root = root.resolve()
    stack: list[tuple[Path, str, frozenset[Path]]] = [(real_root, "", frozenset({real_root}))]
    while stack:
        directory, prefix, ancestors = stack.pop()
        if dirs is not None:  # for the stat cache: a folder's listing changes its times
            dirs[str(directory)] = StatCache._key(os.stat(directory))[1:]
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{prefix}{entry.name}"
                linked = entry.is_symlink()
                if linked:
                    target = Path(entry.path).resolve()
                    if not follow_out and not target.is_relative_to(real_root):
                        skipped[rel] = f"symlink leaves the source directory (-> {target})"
                        continue
                    if not target.exists():
                        skipped[rel] = "broken symlink"
                        continue
                    path = str(target)
                    is_dir, is_file = target.is_dir(), target.is_file()
                else:
                    path = entry.path
                    is_dir, is_file = entry.is_dir(), entry.is_file()
                if is_dir:
                    if spec.match_file(rel + "/"):
                        continue
                    real = Path(path).resolve()
                    if real in ancestors:
                        skipped[rel] = f"symlink loop (-> {real})"
                        continue
                    stack.append((real, rel + "/", ancestors | {real}))
                elif is_file:
                    if not spec.match_file(rel):
                        yield rel, path, os.stat(path) if linked else entry.stat()


def _input_files(inputs: dict[str, str], skipped: dict[str, str]
                 ) -> Iterator[tuple[str, str, os.stat_result]]:
    """(path in the snapshot, real path) of every file of the job's inputs."""
    plain = pathspec.GitIgnoreSpec.from_lines(DEFAULT_IGNORES)
    for rel, where in inputs.items():
        path = Path(where)
        if path.is_file():
            yield rel, str(path), path.stat()
        elif path.is_dir():  # its links are followed: the data they name is shipped
            left_out: dict[str, str] = {}
            for inner, real, info in _walk(path, plain, left_out, follow_out=True):
                yield f"{rel}/{inner}", real, info
            skipped.update({f"{rel}/{inner}": why for inner, why in left_out.items()})
        else:
            raise SourceError(f"inputs: {where} no longer exists")


def take_snapshot(source: str | Path, store: ObjectStore, *, entry_script: str,
                  inputs: dict[str, str] | None = None,
                  stat_cache: Path | None = None) -> Snapshot:
    """Snapshot `source` into `store`; the entry script must be part of it. `inputs` maps a
    path in the snapshot to a local file or folder shipped there too (the job's inputs).
    With `stat_cache` (a file), unchanged files are known by their stat, not read."""
    root = Path(source)
    if not root.is_dir():
        raise SourceError(f"source_directory {root} does not exist or is not a folder")
    started = time.time_ns()
    cache = StatCache(stat_cache)
    ignore = _ignore_files(root)
    known = None if inputs else cache.listing(str(root), ignore)
    if known is not None and cache.trusts(store):
        files = cache.unchanged(known[0])  # the whole tree as it was: nothing to read
        if files is not None:
            return _checked(Snapshot(hash=cache.result["hash"], source=str(root), files=files,
                                     skipped=known[1], ignore_file=ignore[0][0] if ignore
                                     else None), root, entry_script)
    if known is not None:  # no folder changed: the same files, each still stat'ed
        listed, skipped = known
        try:
            walked = [(rel, path, os.stat(path)) for rel, path in listed]
            ignore_file = next((name for name, _ in ignore), None)
        except OSError:  # a file went away just now: walk after all
            known = None
    if known is None:
        spec, ignore_file = load_ignore_spec(root)
        skipped = {}
        dirs: dict[str, list] = {}
        walked = [*_walk(root, spec, skipped, dirs), *_input_files(inputs or {}, skipped)]
        if not inputs:
            cache.remember_tree(str(root), ignore, dirs,
                                [[rel, path] for rel, path, _ in walked], skipped)
    digests: dict[str, str] = {}
    todo = []
    check = not cache.trusts(store)  # else every object the cache names is still there
    for rel, path, info in walked:
        digest = cache.lookup(path, info)
        if digest is not None and (not check or store.has(digest)):
            digests[rel] = digest
        else:
            todo.append((rel, path, info))
    new_files = new_bytes = 0
    for rel, path, info in todo:  # one thread: on 2 cores, threads only fight over the GIL
        try:
            digest, added = _hash_and_store(path, info, store)
        except OSError as exc:
            if is_disk_full(exc) or exc.filename not in (None, path):
                raise  # the store's disk, not the file read
            raise SourceError(f"{rel}: {path} cannot be read ({exc.strerror or exc}); make "
                              "it readable, or leave it out (.tfsubmitignore)") from None
        if added:
            new_files += 1
            new_bytes += info.st_size
        cache.remember(path, info, digest)
        digests[rel] = digest
    files = {rel: FileEntry(digests[rel], info.st_size, bool(info.st_mode & stat.S_IXUSR))
             for rel, _, info in walked}
    listing = "".join(
        f"{path}\0{e.sha256}\0{int(e.executable)}\n" for path, e in sorted(files.items())
    )
    snapshot_hash = hashlib.sha256(listing.encode()).hexdigest()
    if not inputs:
        cache.remember_result(snapshot_hash, files)
    cache.save(started, store)
    return _checked(Snapshot(
        hash=snapshot_hash,
        source=str(root),
        files=files,
        skipped=skipped,
        ignore_file=ignore_file,
        new_files=new_files,
        new_bytes=new_bytes,
        read_files=len(todo),
    ), root, entry_script)


def _checked(snap: Snapshot, root: Path, entry_script: str) -> Snapshot:
    """The snapshot, if the entry script is part of it; else the error says why not."""
    if entry_script not in snap.files:
        if entry_script in snap.skipped:
            reason = snap.skipped[entry_script]
        elif (root / entry_script).exists():
            reason = f"it is excluded by {snap.ignore_file or 'the default ignore rules'}"
        else:
            reason = "no such file"
        raise SourceError(
            f"entry_script {entry_script!r} is not in the snapshot of {root}: {reason}"
        )
    return snap


