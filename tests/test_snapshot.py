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
