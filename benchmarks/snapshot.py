"""How fast is a snapshot of a big source tree? One command, two ratios.

    .venv/bin/python benchmarks/snapshot.py [--files 10000] [--repeats 5] [--dir /dev/shm]

Makes a tree of `--files` files (about 21 MB by default, 100 folders), then, each repeat in
a fresh object store and stat cache:
  copytree:   shutil.copytree of the tree (the baseline: a plain copy)
  first:      tfsubmit's snapshot of the tree into an empty store (hash, copy, manifest)
  unchanged:  the same tree snapshotted again (what every re-submission does)
and prints the medians, and the median over repeats of each repeat's "first/copytree
ratio" (goal <= 1.2) and "unchanged/first ratio" (goal <= 0.1); copytree and the first
snapshot alternate which goes first. Absolute times on a shared machine mean little; the
ratios are measured within one run.
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None,
                        help="where the tree, copies and stores go (default: the system's "
                        "temporary folder; /dev/shm leaves the disk's writeback noise out)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tfsubmit-snapshot-", dir=args.dir) as scratch:
        base = Path(scratch)
        tree = base / "tree"
        make_tree(tree, args.files, args.bytes)
        total = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
        print(f"tree: {args.files + 1} files, {total / 1e6:.1f} MB in {tree}")
        copies, firsts, unchanged = [], [], []
        for repeat in range(args.repeats):
            store, cache = base / f"store{repeat}", base / f"cache{repeat}"
            copy = lambda r=repeat: copies.append(  # noqa: E731
                timed(lambda: shutil.copytree(tree, base / f"copy{r}")))
            first = lambda s=store, c=cache: firsts.append(  # noqa: E731
                timed(lambda: snapshot(tree, s, c)))
            for step in (copy, first) if repeat % 2 == 0 else (first, copy):  # alternate
                step()
            unchanged.append(timed(lambda s=store, c=cache: snapshot(tree, s, c)))
            shutil.rmtree(base / f"copy{repeat}")
            shutil.rmtree(store)
            print(f"repeat {repeat + 1}: copytree {copies[-1]:.2f} s, first {firsts[-1]:.2f} s, "
                  f"unchanged {unchanged[-1]:.2f} s", flush=True)
    copy, first, again = (statistics.median(v) for v in (copies, firsts, unchanged))
    print(f"median: copytree {copy:.2f} s, first snapshot {first:.2f} s, unchanged "
          f"re-snapshot {again:.3f} s")
    # Ratios within each repeat (its steps ran side by side), then their median: the
    # machine's noise between repeats (page cache writeback) cancels out.
    first_ratio = statistics.median(f / c for f, c in zip(firsts, copies, strict=True))
    again_ratio = statistics.median(u / f for u, f in zip(unchanged, firsts, strict=True))
    print(f"first/copytree ratio: {first_ratio:.2f} (goal <= 1.2)")
    print(f"unchanged/first ratio: {again_ratio:.3f} (goal <= 0.1)")


if __name__ == "__main__":
    main()
