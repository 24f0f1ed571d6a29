"""TensorBoard over tfsubmit runs, with the maintained `tensorboard` package.

    tb = TensorBoard(runs, workspace=ws)   # Run objects (a sweep's trials side by side)
    url = tb.start()                       # http://127.0.0.1:PORT/
    tb.stop()                              # nothing of it left running

One TensorBoard process serves a session folder (`<workspace>/tensorboard/<session>/`)
holding, for each run, `<name>/metrics/<task>/`: every numeric metric the run logged
through tfsubmit's runtime, as scalars by step (the metric's own step, else its count),
written as TensorBoard event files and extended while the run trains (every
REFRESH_SECONDS); and `<name>/job`: a link to the run's folder, where a Keras TensorBoard
callback's logs are (`run_context().tensorboard_dir`, Azure's `./logs`, SageMaker's
TensorBoard output path: `logs/` is collected with the run; `work/logs/` while it runs).
TensorBoard reads the links with its Python reader (`--load_fast=false`: the fast reader
does not follow them).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tfsubmit.errors import TfsubmitError
from tfsubmit.runtime.metrics import KIND_LIST, TOTAL_EPOCHS, read_records
from tfsubmit.service.server import free_port
from tfsubmit.store.layout import Workspace

REFRESH_SECONDS = 2.0
START_TIMEOUT = 120.0


def _label(run: Any) -> str:
    """The run's name in TensorBoard: its id, or for a sweep's trial `trial-N_<id>`."""
    trial = run.record.read().get("trial") if hasattr(run, "record") else None
    return f"trial-{trial}_{run.id}" if trial is not None else run.id


class _Converter:
    """Appends a run's new numeric metrics to one event file per task."""

    def __init__(self, run: Any, folder: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer_class = EventFileWriter
        self.run = run
        self.folder = folder
        self.writers: dict[str, Any] = {}
        self.seen = 0  # records written so far (metric files only grow while a run lives)
        self.counts: dict[tuple[str, str], int] = {}

    def refresh(self) -> int:
        """Write what is new; returns how many scalars were written."""
        from tensorboard.compat.proto import event_pb2, summary_pb2

        records = read_records(self.run.paths.metric_files())
        if len(records) < self.seen:  # collected meanwhile: read from the start again
            self.seen = 0
            self.counts.clear()
            self.close()
            shutil.rmtree(self.folder, ignore_errors=True)
        written = 0
        for record in records[self.seen:]:
            values = record["value"] if record.get("kind") == KIND_LIST else [record["value"]]
            if record.get("kind") not in (None, KIND_LIST) or record["name"] == TOTAL_EPOCHS:
                continue  # not a series (total_epochs only sizes the progress bar)
            for value in values:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                key = (record["task"], record["name"])
                self.counts[key] = self.counts.get(key, 0) + 1
                step = record.get("step", self.counts[key])
                event = event_pb2.Event(
                    wall_time=record.get("time", time.time()), step=int(step),
                    summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                        tag=record["name"], simple_value=float(value))]))
                self._writer(record["task"]).add_event(event)
                written += 1
        self.seen = len(records)
        for writer in self.writers.values():
            writer.flush()
        return written

    def _writer(self, task: str):
        if task not in self.writers:
            folder = self.folder / re.sub(r"[^\w.-]", "_", task)
            folder.mkdir(parents=True, exist_ok=True)
            self.writers[task] = self._writer_class(str(folder))
        return self.writers[task]

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class TensorBoard:
    """One TensorBoard over `runs`, kept current while they train."""

    def __init__(self, runs: list[Any], *, workspace: str | Path | None = None,
                 port: int | None = None, host: str = "127.0.0.1") -> None:
        if not runs:
            raise TfsubmitError("tensorboard: no runs given; name runs, an --experiment or "
                                "a --sweep")
        self.workspace = Workspace(workspace)
        self.runs = runs
        self.port = port
        self.host = host
        self.folder = self.workspace.root / "tensorboard" / \
            f"{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._converters: list[_Converter] = []
        self.url: str | None = None

    def start(self) -> str:
        """Write the session folder, start TensorBoard and the refresher; its URL."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for run in self.runs:
            label = self.folder / _label(run)
            label.mkdir(exist_ok=True)
            (label / "job").symlink_to(run.paths.root, target_is_directory=True)
            self._converters.append(_Converter(run, label / "metrics"))
        for converter in self._converters:
            converter.refresh()
        port = self.port or free_port(self.host)
        log = (self.folder / "tensorboard.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.folder),
             "--host", self.host, "--port", str(port), "--load_fast=false",
             "--reload_interval", "2", "--window_title", "tfsubmit"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.url = f"http://{self.host}:{port}/"
        self._wait_until_up(port)
        self._thread = threading.Thread(target=self._refresh, daemon=True,
                                        name="tensorboard-refresh")
        self._thread.start()
        self._link(f"TensorBoard: {self.url}", self.url, "open while `tfsubmit tensorboard` "
                   "runs")
        return self.url

    def _link(self, text: str, link: str, note: str) -> None:
        """Each run's page in Prefect links to this TensorBoard (best effort: a run without
        a flow run, or no API, gets none)."""
        from tfsubmit.service.prefect_api import PrefectAPI, artifact_key
        from tfsubmit.service.server import api_url

        url = api_url(self.workspace, start=False)
        if not url:
            return
        api = PrefectAPI(url, timeout=10)
        try:
            for run in self.runs:
                flow_run = run.record.read().get("flow_run_id")
                if flow_run:
                    api.link_artifact(flow_run, artifact_key(run.id, "tensorboard"), link,
                                      text, f"TensorBoard over run {run.id} ({note})")
        except TfsubmitError:
            pass
        finally:
            api.close()

    def _wait_until_up(self, port: int) -> None:
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.folder / "tensorboard.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise TfsubmitError(f"TensorBoard exited (code {self.process.returncode}) "
                                    f"before it answered:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}data/environment", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TfsubmitError(f"TensorBoard did not answer on port {port} within "
                            f"{START_TIMEOUT:g} s; see {self.folder / 'tensorboard.log'}")

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            for converter in self._converters:
                try:
                    converter.refresh()
                except OSError:
                    continue  # a file moved while read (collection): next time

    def stop(self) -> None:
        """Stop TensorBoard (TERM, then KILL) and the refresher; the session folder goes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        for converter in self._converters:
            converter.close()
        if self.url:
            self._link(f"TensorBoard stopped (was {self.url})", self.url,
                       "`tfsubmit tensorboard RUN` starts it again")
            self.url = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TensorBoard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

