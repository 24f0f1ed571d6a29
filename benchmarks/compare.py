"""What the overhead benchmarks share: a warm workspace, and bare-vs-tfsubmit rounds."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tfsubmit import Experiment, TensorFlow  # noqa: E402
from tfsubmit.service.server import ensure_server, stop_server  # noqa: E402
from tfsubmit.spec.environment import environment_spec  # noqa: E402
from tfsubmit.store.layout import Workspace  # noqa: E402
from tfsubmit.store.package import runtime_dir  # noqa: E402


@contextlib.contextmanager
def warm_workspace(job: TensorFlow, warm_params: dict, setup=None, *,
                   database: str | None = None) -> Iterator[tuple[Workspace, Path]]:
    """A temporary workspace with its server up (on `database`, a PostgreSQL URL, when
    given) and `job`'s environment built (one short run with `warm_params`); yields it and
    a copy of the job's source for bare runs. `setup(workspace)`, if given, runs first (to
    define the job's target, say)."""
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with tempfile.TemporaryDirectory(prefix="tfsubmit-bench-") as tmp:
        workspace = Workspace(Path(tmp) / "ws")
        try:
            ensure_server(workspace, database=database)
            if setup is not None:
                setup(workspace)
            print("warming up: environment, server, page cache ...", flush=True)
            Experiment("bench", workspace=workspace.root).submit(
                job.model_copy(update={"script_params": warm_params})).wait_for_completion()
            bare_dir = Path(tmp) / "bare"
            shutil.copytree(job.source_directory, bare_dir)
            (bare_dir / "outputs").mkdir(exist_ok=True)
            yield workspace, bare_dir
        finally:
            stop_server(workspace)


def bare_context(workspace: Workspace, job: TensorFlow) -> tuple[str, dict[str, str]]:
    """The job environment's interpreter, and an env that finds tfsubmit's runtime."""
    python = str(workspace.env_cache / environment_spec(job).hash / "bin" / "python")
    return python, {**os.environ, "PYTHONPATH": str(runtime_dir(workspace.runtime))}


def compare(workspace: Workspace, job: TensorFlow, bare_argv: list[str], bare_dir: Path,
            bare_env: dict[str, str], *, repeats: int, bare_label: str, goal: float | None
            ) -> float:
    """Alternate bare and tfsubmit runs; print medians, best runs and the ratio."""
    experiment = Experiment("bench", workspace=workspace.root)
    bare, managed = [], []
    for i in range(repeats):
        started = time.perf_counter()
        subprocess.run(bare_argv, cwd=bare_dir, env=bare_env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        experiment.submit(job).wait_for_completion()
        managed.append(time.perf_counter() - started)
        print(f"  round {i + 1}: {bare_label} {bare[-1]:.2f} s, tfsubmit {managed[-1]:.2f} s",
              flush=True)
    b, m = statistics.median(bare), statistics.median(managed)
    print(f"{bare_label:22} median {b:.2f} s, best {min(bare):.2f} s")
    print(f"{'tfsubmit submit+wait':22} median {m:.2f} s, best {min(managed):.2f} s")
    print(f"ratio of best runs tfsubmit/bare: {min(managed) / min(bare):.3f}")
    print(f"ratio tfsubmit/bare: {m / b:.3f}  (medians"
          + (f"; goal <= {goal})" if goal else ")"))
    return m / b
