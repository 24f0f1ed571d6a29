"""Fault injection, one test per numbered item of the reliability issue (#13): each one failed
on main before the fix. Real processes, real files; no mocks of what the item names."""

from __future__ import annotations

import os

from tfsubmit.pipeline.snapshot import take_snapshot
from tfsubmit.store.objects import ObjectStore
from tfsubmit.store.snapshots import materialize


def test_13_a_folder_and_an_alias_of_it_both_ship(tmp_path):
    """`a_alias -> data` beside `data/x.txt` used to ship only `a_alias/x.txt`, skipping `data`
    as a "symlink loop"; a real loop (`data/up -> ..`) is still cut."""
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "x.txt").write_text("x\n")
    (src / "train.py").write_text("open('data/x.txt').read()\n")
    os.symlink("data", src / "a_alias")
    os.symlink("..", src / "data" / "up")
    store = ObjectStore(tmp_path / "objects")
    snap = take_snapshot(src, store, entry_script="train.py")
    assert {"data/x.txt", "a_alias/x.txt", "train.py"} <= set(snap.files)
    assert "symlink loop" in snap.skipped["data/up"]
    assert "a_alias/up" in snap.skipped
    materialize(snap, store, tmp_path / "staged")
    assert (tmp_path / "staged" / "data" / "x.txt").read_text() == "x\n"
