"""How fast is a snapshot of a big source tree? One command, two ratios.

    .venv/bin/python benchmarks/snapshot.py [--files 10000] [--bytes 2100] [--repeats 3]

Makes a tree of `--files` files (about 21 MB by default, 100 folders), then, each repeat in
a fresh object store and stat cache:
  copytree:   shutil.copytree of the tree (the baseline: a plain copy)
  first:      tfsubmit's snapshot of the tree into an empty store (hash, copy, manifest)
  unchanged:  the same tree snapshotted again (what every re-submission does)
and prints the medians and "first/copytree ratio" (goal <= 1.2) and "unchanged/first
ratio" (goal <= 0.1). Absolute times on a shared machine mean little; the ratios are
measured within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tfsubmit.pipeline.snapshot import take_snapshot  # noqa: E402
from tfsubmit.store.objects import ObjectStore  # noqa: E402


def make_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        folder = root / f"pkg{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"module{i}.py").write_bytes(os.urandom(size // 2).hex().encode()[:size])
    (root / "train.py").write_text("print('hello')\n")


def timed(action) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def snapshot(tree: Path, store: Path, cache: Path):
    kwargs = {"stat_cache": cache} if "stat_cache" in take_snapshot.__code__.co_varnames \
        else {}  # the same benchmark measures code from before the stat cache
    return take_snapshot(tree, ObjectStore(store), entry_script="train.py", **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--bytes", type=int, default=2100, help="size of each file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfsubmit-snapshot-") as scratch:
        base = Path(scratch)
        tree = base / "tree"
        make_tree(tree, args.files, args.bytes)
        total = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
        print(f"tree: {args.files + 1} files, {total / 1e6:.1f} MB in {tree}")
        copies, firsts, unchanged = [], [], []
        for repeat in range(args.repeats):
            copies.append(timed(lambda r=repeat: shutil.copytree(tree, base / f"copy{r}")))
            store, cache = base / f"store{repeat}", base / f"cache{repeat}"
            firsts.append(timed(lambda s=store, c=cache: snapshot(tree, s, c)))
            unchanged.append(timed(lambda s=store, c=cache: snapshot(tree, s, c)))
            shutil.rmtree(base / f"copy{repeat}")
            shutil.rmtree(store)
            print(f"repeat {repeat + 1}: copytree {copies[-1]:.2f} s, first {firsts[-1]:.2f} s, "
                  f"unchanged {unchanged[-1]:.2f} s", flush=True)
    copy, first, again = (statistics.median(v) for v in (copies, firsts, unchanged))
    print(f"median: copytree {copy:.2f} s, first snapshot {first:.2f} s, unchanged "
          f"re-snapshot {again:.3f} s")
    print(f"first/copytree ratio: {first / copy:.2f} (goal <= 1.2)")
    print(f"unchanged/first ratio: {again / first:.3f} (goal <= 0.1)")


if __name__ == "__main__":
    main()
