"""TensorBoard over runs (issue 28): `tfsubmit tensorboard` serves the metrics two runs
logged through tfsubmit (one of them while it trains) and a Keras TensorBoard callback's
logs; it stops with nothing left. Real runs, a real TensorBoard process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import JOBS, TFSUBMIT, wait_until

from tfsubmit import Experiment, TensorFlow

pytestmark = pytest.mark.e2e


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def _scalars(base: str, run: str, tag: str) -> list:
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    return _get(f"{base}data/plugin/scalars/scalars?{query}")


def _tensorboards() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"tensorboard.main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_tensorboard_serves_two_runs_live_and_a_keras_callbacks_logs(workspace):
    keras = Experiment("tb", workspace=workspace.root).submit(
        # TensorFlow 2.21's wheels no longer bring TensorBoard: its callback needs it.
        TensorFlow(source_directory=str(JOBS), entry_script="tb_job.py",
                   pip_packages=["tensorboard"]))
    keras.wait_for_completion(timeout=600)
    ticking = Experiment("tb", workspace=workspace.root).submit(
        TensorFlow(source_directory=str(JOBS), entry_script="ticker.py"))
    wait_until(lambda: ticking.get_metrics().get("tick"), 300, "the first tick")
    before = set(_tensorboards())
    board = subprocess.Popen([*TFSUBMIT, "tensorboard", keras.id, ticking.id],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=os.environ.copy(), start_new_session=True)
    try:
        line = board.stdout.readline()
        assert "TensorBoard over 2 run(s): http://127.0.0.1:" in line, board.stderr.read()
        base = line.split(": ", 1)[1].strip()
        tags = wait_until(lambda: (lambda t: t if len(t) >= 4 else None)(
            _get(f"{base}data/plugin/scalars/tags")), 60, "every run in TensorBoard")
        mine = f"{keras.id}/metrics/worker_0"
        assert {"loss", "val_loss", "accuracy"} <= set(tags[mine])
        logged = keras.get_metrics()["val_loss"]
        served = [point[2] for point in _scalars(base, mine, "val_loss")]
        assert served == pytest.approx(logged, rel=1e-6)
        # The Keras TensorBoard callback's own logs, through the run's folder.
        own = [run for run in tags if run.startswith(f"{keras.id}/job/")]
        assert any(run.endswith("tensorboard/train") for run in own), tags
        assert any(tag.startswith("epoch_") for run in own for tag in tags[run])
        # The second run's ticks arrive while it trains.
        ticks = f"{ticking.id}/metrics/worker_0"
        first = len(_scalars(base, ticks, "tick"))
        wait_until(lambda: len(_scalars(base, ticks, "tick")) > first, 60, "newer ticks")
        assert ticking.get_status() in ("Running", "Completed")
        ticking.wait_for_completion(timeout=300)
        wait_until(lambda: len(_scalars(base, ticks, "tick")) == 40, 60, "all 40 ticks")
    finally:
        board.send_signal(signal.SIGINT)
        board.wait(timeout=60)
    assert board.returncode == 0
    assert "TensorBoard stopped" in board.stderr.read()
    wait_until(lambda: set(_tensorboards()) <= before, 30, "TensorBoard gone")
    assert not any((workspace.root / "tensorboard").iterdir())  # its session folder too
