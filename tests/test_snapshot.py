"""Snapshots: ignore rules, hashing, content-addressed storage, symlinks, entry checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfsubmit.errors import SourceError
from tfsubmit.pipeline.snapshot import hash_file, take_snapshot
from tfsubmit.store.objects import ObjectStore
from tfsubmit.store.snapshots import materialize


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "data").mkdir()
    (src / "train.py").write_text("print('train')\n")
    (src / "pkg" / "model.py").write_text("X = 1\n")
    (src / "data" / "big.bin").write_bytes(b"\0" * 1000)
    (src / "notes.log").write_text("log\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"junk")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    return src


@pytest.fixture
def store(tmp_path) -> ObjectStore:
    return ObjectStore(tmp_path / "objects")


def test_default_ignores_and_hashes(tree, store):
    snap = take_snapshot(tree, store, entry_script="train.py")
    assert sorted(snap.files) == ["data/big.bin", "notes.log", "pkg/model.py", "train.py"]
    assert snap.files["train.py"].sha256 == hash_file(tree / "train.py")
    assert snap.files["data/big.bin"].size == 1000
    assert snap.ignore_file is None


def test_gitignore_is_honoured(tree, store):
    (tree / ".gitignore").write_text("data/\n*.log\n")
    snap = take_snapshot(tree, store, entry_script="train.py")
    assert sorted(snap.files) == [".gitignore", "pkg/model.py", "train.py"]
    assert snap.ignore_file == ".gitignore"


def test_tfsubmitignore_wins_over_gitignore(tree, store):
    (tree / ".gitignore").write_text("*.py\n")
    (tree / ".tfsubmitignore").write_text("data/\n!notes.log\n*.log\n")
    snap = take_snapshot(tree, store, entry_script="train.py")
    assert sorted(snap.files) == [".gitignore", ".tfsubmitignore", "pkg/model.py", "train.py"]
    assert snap.ignore_file == ".tfsubmitignore"


def test_unchanged_tree_copies_nothing_and_keeps_its_hash(tree, store):
    first = take_snapshot(tree, store, entry_script="train.py")
    assert first.new_files == 4
    second = take_snapshot(tree, store, entry_script="train.py")
    assert (second.new_files, second.new_bytes) == (0, 0)
    assert second.hash == first.hash
    (tree / "pkg" / "model.py").write_text("X = 2\n")
    third = take_snapshot(tree, store, entry_script="train.py")
    assert (third.new_files, third.new_bytes) == (1, 6)
    assert third.hash != first.hash


def test_symlinks_inside_are_followed_outside_are_skipped(tree, store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship\n")
    os.symlink(secret, tree / "leak.txt")
    os.symlink(tmp_path, tree / "up")
    os.symlink(tree / "pkg" / "model.py", tree / "alias.py")
    os.symlink(tree / "pkg", tree / "pkglink")
    snap = take_snapshot(tree, store, entry_script="train.py")
    assert "leak.txt" not in snap.files and "leak.txt" in snap.skipped
    assert "up" in snap.skipped and not any(p.startswith("up/") for p in snap.files)
    assert snap.files["alias.py"].sha256 == snap.files["pkg/model.py"].sha256
    assert "symlink leaves the source directory" in snap.skipped["leak.txt"]


def test_an_input_folders_links_are_shipped_wherever_they_point(tree, store, tmp_path):
    """Issue 27 (9): an input folder whose files are links to data elsewhere (a dataset
    folder of symlinks) ships that data; a link loop is still skipped, said so."""
    elsewhere = tmp_path / "datasets"
    (elsewhere / "shard").mkdir(parents=True)
    (elsewhere / "a.csv").write_text("1,2\n")
    (elsewhere / "shard" / "b.csv").write_text("3,4\n")
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(elsewhere / "a.csv", data / "a.csv")
    os.symlink(elsewhere / "shard", data / "shard")
    os.symlink(data, data / "again")  # a loop
    snap = take_snapshot(tree, store, entry_script="train.py", inputs={".inputs/data": str(data)})
    assert {".inputs/data/a.csv", ".inputs/data/shard/b.csv"} <= set(snap.files)
    assert snap.skipped[".inputs/data/again"].startswith("symlink loop")
    out = tmp_path / "out"
    materialize(snap, store, out)
    assert (out / ".inputs" / "data" / "shard" / "b.csv").read_text() == "3,4\n"
    # The source directory itself still ships no link that leaves it.
    os.symlink(elsewhere / "a.csv", tree / "leak.csv")
    assert "leak.csv" in take_snapshot(tree, store, entry_script="train.py").skipped


def test_a_sparse_file_stays_sparse_in_the_store_and_the_run(tree, store, tmp_path):
    """Issue 27 (10): a 256 MiB sparse input (a few bytes of data) took its full size
    twice (the store, the run's folder); both copies keep its holes now."""
    sparse = tmp_path / "disk.img"
    with sparse.open("wb") as handle:
        handle.seek(100 << 20)
        handle.write(b"data in the middle")
        handle.truncate(256 << 20)
    snap = take_snapshot(tree, store, entry_script="train.py",
                         inputs={".inputs/disk.img": str(sparse)})
    out = tmp_path / "out"
    materialize(snap, store, out)
    copies = [store.path_for(snap.files[".inputs/disk.img"].sha256),
              out / ".inputs" / "disk.img"]
    for copy in copies:
        assert copy.stat().st_size == 256 << 20
        assert copy.stat().st_blocks * 512 < 8 << 20, copy  # not 256 MiB on disk
    assert hash_file(copies[1]) == hash_file(sparse)


def test_entry_script_must_be_in_the_snapshot(tree, store, tmp_path):
    (tree / ".gitignore").write_text("train.py\n")
    with pytest.raises(SourceError, match="excluded by .gitignore"):
        take_snapshot(tree, store, entry_script="train.py")
    (tree / ".gitignore").unlink()
    outside = tmp_path / "outside.py"
    outside.write_text("x\n")
    os.symlink(outside, tree / "link.py")
    with pytest.raises(SourceError, match="link.py.*leaves the source directory"):
        take_snapshot(tree, store, entry_script="link.py")
    with pytest.raises(SourceError, match="no such file"):
        take_snapshot(tree, store, entry_script="nope.py")


def test_materialize_reproduces_the_tree(tree, store, tmp_path):
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    snap = take_snapshot(tree, store, entry_script="train.py")
    dest = tmp_path / "dest"
    materialize(snap, store, dest)
    for rel in snap.files:
        assert (dest / rel).read_bytes() == (tree / rel).read_bytes()
    assert os.access(dest / "run.sh", os.X_OK)
    (dest / "train.py").write_text("changed by the job\n")  # the store must not change
    assert store.path_for(snap.files["train.py"].sha256).read_text() == "print('train')\n"


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}\.txt", fullmatch=True),
                       st.binary(max_size=64), min_size=1, max_size=6))
def test_snapshot_hash_depends_only_on_content(tmp_path_factory, files):
    hashes = set()
    for _ in range(2):
        root = tmp_path_factory.mktemp("prop")
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        entry = next(iter(files))
        snap = take_snapshot(root, ObjectStore(root.parent / f"{root.name}-store"),
                             entry_script=entry)
        assert set(snap.files) == set(files)
        hashes.add(snap.hash)
    assert len(hashes) == 1


# -- the stat cache (issue 16) ---------------------------------------------------------------


def _snap(tree: Path, store: ObjectStore, cache: Path):
    return take_snapshot(tree, store, entry_script="train.py", stat_cache=cache)


def _age(tree: Path, seconds: float = 5.0) -> None:
    """Make the tree's files look `seconds` old: mtime set back; ctime is what the kernel
    says, so the racy-file rule is shortened instead (see test below for the real rule)."""
    for path in tree.rglob("*"):
        if path.is_file():
            info = path.stat()
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns - int(seconds * 1e9)))


def test_an_unchanged_tree_is_recognised_without_reading_it(tree, store, tmp_path,
                                                            monkeypatch):
    from tfsubmit.pipeline import snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "RACY_SECONDS", 0.0)  # ctime cannot be set back
    cache = tmp_path / "cache.json"
    first = _snap(tree, store, cache)
    assert first.read_files == len(first.files) == 4
    again = _snap(tree, store, cache)
    assert again.read_files == 0 and again.hash == first.hash and again.files == first.files
    # An object taken out of the store is read and stored again, whatever the cache says.
    store.remove(first.files["train.py"].sha256)
    assert _snap(tree, store, cache).read_files == 1
    assert store.has(first.files["train.py"].sha256)


def test_a_same_size_edit_with_its_mtime_put_back_is_seen(tree, store, tmp_path,
                                                          monkeypatch):
    """Size and mtime as before: the ctime (which no user can set) still differs."""
    from tfsubmit.pipeline import snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "RACY_SECONDS", 0.0)
    cache = tmp_path / "cache.json"
    _age(tree)
    first = _snap(tree, store, cache)
    model = tree / "pkg" / "model.py"
    before = model.stat()
    model.write_text("X = 2\n")  # same size
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert model.stat().st_size == before.st_size and model.stat().st_mtime_ns == \
        before.st_mtime_ns
    again = _snap(tree, store, cache)
    assert again.read_files == 1
    assert again.files["pkg/model.py"].sha256 == hash_file(model) != \
        first.files["pkg/model.py"].sha256


def test_an_edit_within_the_same_timestamp_tick_is_seen(tree, store, tmp_path):
    """The racy case git's index knows: a file changed right after the snapshot that saw
    it, in the same size and possibly the same clock tick. Such files are never cached, so
    the next snapshot reads them."""
    cache = tmp_path / "cache.json"
    first = _snap(tree, store, cache)
    model = tree / "pkg" / "model.py"
    before = model.stat()
    model.write_text("X = 3\n")  # same size, at once: mtime and ctime may not move
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = _snap(tree, store, cache)
    assert again.files["pkg/model.py"].sha256 != first.files["pkg/model.py"].sha256
    assert again.files["pkg/model.py"].sha256 == hash_file(model)


def test_a_damaged_stat_cache_only_costs_a_full_read(tree, store, tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    snap = _snap(tree, store, cache)
    assert snap.read_files == len(snap.files)
    assert _snap(tree, store, cache).files == snap.files


def test_a_corrupt_object_taken_out_is_stored_again_next_time(tree, store, tmp_path,
                                                              monkeypatch):
    """The stat cache trusts the store to keep its objects; materialize taking a corrupt
    one out says so, and the next snapshot stores it again."""
    from tfsubmit.pipeline import snapshot as snapshot_module
    from tfsubmit.store.snapshots import CorruptObjectError

    monkeypatch.setattr(snapshot_module, "RACY_SECONDS", 0.0)
    cache = tmp_path / "cache.json"
    first = _snap(tree, store, cache)
    assert _snap(tree, store, cache).read_files == 0
    digest = first.files["pkg/model.py"].sha256
    store.path_for(digest).write_text("tampered")
    with pytest.raises(CorruptObjectError):
        materialize(first, store, tmp_path / "dest")
    assert not store.has(digest)
    again = _snap(tree, store, cache)
    assert again.read_files == 1 and store.has(digest)
    materialize(again, store, tmp_path / "dest2")


def test_a_new_or_removed_file_is_seen_through_the_listing_cache(tree, store, tmp_path,
                                                                 monkeypatch):
    from tfsubmit.pipeline import snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "RACY_SECONDS", 0.0)
    cache = tmp_path / "cache.json"
    _snap(tree, store, cache)
    (tree / "pkg" / "extra.py").write_text("Y = 1\n")
    (tree / "notes.log").unlink()
    snap = _snap(tree, store, cache)
    assert "pkg/extra.py" in snap.files and "notes.log" not in snap.files
    (tree / ".tfsubmitignore").write_text("pkg/\n")  # a new rule: a new walk
    assert "pkg/extra.py" not in _snap(tree, store, cache).files


def test_a_mode_change_alone_is_seen(tree, store, tmp_path, monkeypatch):
    """chmod +x changes no size, mtime or content; its ctime moves, so the whole-tree check
    falls back to looking file by file, and the snapshot (and its hash) says executable."""
    from tfsubmit.pipeline import snapshot as snapshot_module

    monkeypatch.setattr(snapshot_module, "RACY_SECONDS", 0.0)
    cache = tmp_path / "cache.json"
    first = _snap(tree, store, cache)
    assert _snap(tree, store, cache).files == first.files  # the whole-tree path
    script = tree / "train.py"
    script.chmod(script.stat().st_mode | 0o100)
    again = _snap(tree, store, cache)
    assert again.files["train.py"].executable and not first.files["train.py"].executable
    assert again.hash != first.hash
    assert _snap(tree, store, cache).files == again.files  # and remembered
