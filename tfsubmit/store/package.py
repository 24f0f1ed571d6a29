"""tfsubmit's own code: its hash, and the copy of it a job finds on its PYTHONPATH."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def package_sources() -> tuple[Path, list[Path]]:
    """The tfsubmit package folder, and every Python file in it."""
    package = Path(__file__).resolve().parent.parent
    return package, sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)


@functools.lru_cache(maxsize=1)
def package_hash() -> str:
    """A hash of tfsubmit's code: changes with every upgrade or edit. Read once per
    process (it is asked per host and per submission)."""
    package, sources = package_sources()
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def runtime_dir(workspace_runtime: Path) -> Path:
    """A copy of the tfsubmit package to put on the job's PYTHONPATH.

    The job's environment has TensorFlow but not tfsubmit's own dependencies; the package's
    face imports nothing heavy, so `from tfsubmit import run_context` works there.
    """
    package, sources = package_sources()
    target = workspace_runtime / package_hash()
    if not (target / "tfsubmit" / "__init__.py").exists():
        # A folder of its own: trials of a sweep install it from threads of one process
        workspace_runtime.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=workspace_runtime))
        tmp.chmod(0o755)  # as a plain mkdir leaves it: readable where jobs run as others
        for path in sources:
            dest = tmp / "tfsubmit" / path.relative_to(package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        try:
            os.replace(tmp, target)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return target
