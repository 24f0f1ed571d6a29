"""The in-job runtime: what a training script uses to log metrics, tags and images.

It runs inside the job's environment, which has TensorFlow but not Prefect: it imports only
the standard library (Keras is imported when a callback is asked for, matplotlib when a
figure is logged). Outside a tfsubmit run the context is offline: it prints what is logged
and keeps it in memory, so the same script also runs as plain `python train.py`.

    from tfsubmit import run_context             # tfsubmit's own name
    ctx = run_context()
    ctx.log("loss", 0.3)
    model.fit(..., callbacks=[ctx.keras_callback()])

    from tfsubmit import Run                     # Azure ML v1's names, same object
    run = Run.get_context()
    run.log("final_acc", 0.91); run.log_list("losses", [0.5, 0.3]); run.tag("team", "vision")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tfsubmit.runtime.metrics import (
    IMAGES_DIR,
    KIND_IMAGE,
    KIND_LIST,
    KIND_PROPERTY,
    KIND_ROW,
    KIND_TABLE,
    KIND_TAG,
    METRICS_DIR,
    NONFINITE,
    TOTAL_EPOCHS,
    has_nonfinite,
    json_safe,
)

_IMAGE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


# The run's properties set from the submitting side before the job started (JSON).
PROPERTIES_ENV = "TFSUBMIT_PROPERTIES"

# The largest integer a float holds (about 1.8e308): metrics are floats to every reader.
_FLOAT_INT = int(sys.float_info.max)


class RunContext:
    """Logging for the current process of a run (Azure ML v1's in-script `Run`)."""

    def __init__(self, metrics_file: str | None, run_id: str | None, role: str, index: int):
        self.run_id = run_id
        self.id = run_id or f"OfflineRun_{os.getpid()}"
        self.role = role
        self.index = index
        self.task = f"{role}:{index}"
        self.offline = metrics_file is None
        self.history: dict[str, list[Any]] = {}
        self._tags: dict[str, str] = {}
        self._properties: dict[str, str] = {}
        self._kinds: dict[str, str] = {}  # "value" or "table", by metric name
        self._file = None
        if metrics_file:
            Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
            # A restarted process: the properties its earlier attempts set still hold.
            self._properties.update(_properties_in(metrics_file))
            self._file = open(metrics_file, "a", buffering=1)  # noqa: SIM115 (lives with the run)
        # Those set from the submitting side before the job started hold too.
        try:
            given = json.loads(os.environ.get(PROPERTIES_ENV) or "{}")
        except ValueError:
            given = {}
        if isinstance(given, dict):
            self._properties.update({str(k): str(v) for k, v in given.items()})

    def __repr__(self) -> str:
        where = "offline" if self.offline else f"task {self.task}"
        return f"Run(id={self.id!r}, {where})"

    # -- folders ------------------------------------------------------------------------------

    @property
    def outputs_dir(self) -> Path:
        """Where to save models and other results; tfsubmit collects this folder."""
        path = Path(os.environ.get("TFSUBMIT_OUTPUTS", "outputs"))
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def tensorboard_dir(self) -> Path:
        """Where a Keras TensorBoard callback (or tf.summary) should write: `logs/tensorboard`
        (Azure ML's `./logs` convention), collected with the run's logs; `tfsubmit
        tensorboard RUN` shows it live beside the metrics logged through tfsubmit."""
        path = Path(os.environ.get("TFSUBMIT_TENSORBOARD_DIR", "logs/tensorboard"))
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def checkpoints_dir(self) -> Path:
        """Where to save checkpoints (`outputs/checkpoints`): kept across the run's
        restarts (a restarted process finds what its previous attempt wrote), collected
        with the run's outputs."""
        path = Path(os.environ.get("TFSUBMIT_CHECKPOINTS") or self.outputs_dir / "checkpoints")
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- metrics ------------------------------------------------------------------------------

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Record one value of a metric (a number or a string). Logged once, `get_metrics()`
        gives the value; logged again, the list of values in order."""
        if isinstance(value, bool | int | float):
            value = float(value) if isinstance(value, bool) else value
            if isinstance(value, int) and not -_FLOAT_INT <= value <= _FLOAT_INT:
                raise ValueError(f"log({name!r}): {str(value)[:20]}... ({len(str(value))} "
                                 "digits) is too large for a metric, a float (at most about "
                                 "1.8e308); log it as a string, or log a float")
        elif not isinstance(value, str):
            try:
                value = float(value)  # numpy and TensorFlow scalars
            except (TypeError, ValueError):
                raise TypeError(f"log({name!r}): {type(value).__name__} is not a number or a "
                                "string; use log_list, log_row or log_table") from None
        self._claim(name, "value", "log")
        self.history.setdefault(name, []).append(value)
        self._write(name, value, step=step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for name, value in metrics.items():
            self.log(name, value, step=step)

    def log_list(self, name: str, value: list[Any], description: str = "") -> None:
        """Record a list of values at once; `get_metrics()` gives the list."""
        self._claim(name, "value", "log_list")
        values = [_plain(item) for item in value]
        self.history.setdefault(name, []).extend(values)
        self._write(name, values, kind=KIND_LIST)

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        """Add a row to the table `name`; `get_metrics()` gives {column: [values]}, a
        column a row leaves out holding None for it."""
        self._claim(name, "table", "log_row")
        row = {key: _plain(value) for key, value in kwargs.items()}
        self._write(name, row, kind=KIND_ROW)

    def log_table(self, name: str, value: dict[str, list[Any]], description: str = "") -> None:
        """Record a table as {column: [values]}, every column as long; `get_metrics()`
        gives it back so."""
        lengths = {key: len(column) for key, column in value.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{key} has {count}" for key, count in lengths.items())
            raise ValueError(f"log_table({name!r}): columns differ in length ({shown}); give "
                             "every column a value for each row (None where there is none)")
        self._claim(name, "table", "log_table")
        table = {key: [_plain(item) for item in column] for key, column in value.items()}
        self._write(name, table, kind=KIND_TABLE)

    def _claim(self, name: str, kind: str, call: str) -> None:
        """A name is one kind of metric (values or a table): get_metrics() has one entry
        for it."""
        had = self._kinds.setdefault(name, kind)
        if had != kind:
            raise ValueError(f"{call}({name!r}): {name!r} is already a metric of {had}s in "
                             f"this run; give the {kind} another name")

    def log_image(self, name: str, path: str | os.PathLike | None = None, plot: Any = None,
                  description: str = "") -> None:
        """Keep an image with the run: a file (`path`) or a matplotlib figure or pyplot
        (`plot`). It is collected into the run folder's `images/` and shown as a Prefect
        artifact; `get_metrics()[name]` names its file."""
        if (path is None) == (plot is None):
            raise ValueError(f"log_image({name!r}): give exactly one of path= or plot=")
        if self.offline:  # nothing to keep it with: say so, keep what was given
            value = str(path) if path is not None else f"<{type(plot).__name__}, not saved>"
            self.history.setdefault(name, []).append(value)
            self._write(name, value, kind=KIND_IMAGE)
            return
        suffix = (Path(path).suffix if path is not None else "") or ".png"
        # The name made safe for a file, plus a hash of the name itself: "roc/train" and
        # "roc train" never share a file; never an existing one (a restarted process logs
        # from 0 again, and must not overwrite what its earlier attempt kept).
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        stem = f"{_IMAGE_NAME.sub('_', name)[:80]}-{digest}-{self.role}-{self.index}"
        folder = self.outputs_dir.parent / METRICS_DIR / IMAGES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        number = len(self.history.get(name, []))
        while True:
            target = folder / f"{stem}-{number}{suffix}"
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                break
            except FileExistsError:
                number += 1
        file_name = target.name
        if path is not None:
            shutil.copyfile(path, target)
        else:
            figure = plot.gcf() if hasattr(plot, "gcf") else plot
            figure.savefig(target, format="png")
        relative = f"{IMAGES_DIR}/{file_name}"
        self.history.setdefault(name, []).append(relative)
        self._write(name, relative, kind=KIND_IMAGE)

    # -- tags and properties ------------------------------------------------------------------

    def tag(self, key: str, value: Any = None) -> None:
        """Tag the run (`value` None: a tag without a value, as Azure ML's); later wins."""
        self.set_tags({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            text = "" if value is None else str(value)
            self._tags[str(key)] = text
            self._write(str(key), text, kind=KIND_TAG)

    def get_tags(self) -> dict[str, str]:
        return dict(self._tags)

    def add_properties(self, properties: dict[str, Any]) -> None:
        """Add properties; as in Azure ML, a property once set cannot change."""
        for key, value in properties.items():
            key, text = str(key), str(value)
            if self._properties.get(key, text) != text:
                raise ValueError(f"property {key!r} is already {self._properties[key]!r}; "
                                 "properties cannot change (use a tag)")
            self._properties[key] = text
            self._write(key, text, kind=KIND_PROPERTY)

    def get_properties(self) -> dict[str, str]:
        return dict(self._properties)

    # -- Keras --------------------------------------------------------------------------------

    def keras_callback(self):
        """A Keras callback logging `epoch` and every metric Keras reports, each epoch
        (and `total_epochs` once, for the progress bar in the Prefect UI)."""
        import tensorflow as tf

        context = self

        class TfsubmitMetrics(tf.keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                if (self.params or {}).get("epochs"):
                    context.log(TOTAL_EPOCHS, self.params["epochs"])

            def on_epoch_end(self, epoch, logs=None):
                context.log("epoch", epoch + 1, step=epoch + 1)
                for name, value in (logs or {}).items():
                    try:
                        context.log(name, float(value), step=epoch + 1)
                    except (TypeError, ValueError):
                        continue

        return TfsubmitMetrics()

    def _write(self, name: str, value: Any, *, kind: str | None = None,
               step: int | None = None) -> None:
        if self._file is None:
            shown = f" ({kind})" if kind else ""
            print(f"[offline run] {name}{shown}: {value}", flush=True)
            return
        record: dict[str, Any] = {"name": name, "value": json_safe(value),
                                  "time": time.time(), "task": self.task}
        if has_nonfinite(value):
            record[NONFINITE] = True
        if kind:
            record["kind"] = kind
        if step is not None:
            record["step"] = int(step)
        self._file.write(json.dumps(record) + "\n")


def _plain(value: Any) -> Any:
    """A value JSON can hold: numbers (numpy's too) and strings as they are."""
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


_context: RunContext | None = None


def _properties_in(metrics_file: str) -> dict[str, str]:
    """The properties a metrics file holds (set by this task's earlier attempts)."""
    found: dict[str, str] = {}
    try:
        with open(metrics_file, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                if f'"{KIND_PROPERTY}"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if record.get("kind") == KIND_PROPERTY:
                    found.setdefault(str(record["name"]), str(record["value"]))
    except OSError:
        pass
    return found


def run_context() -> RunContext:
    """The context of the run this process belongs to (one per process)."""
    global _context
    if _context is None:
        _context = RunContext(
            metrics_file=os.environ.get("TFSUBMIT_METRICS_FILE"),
            run_id=os.environ.get("TFSUBMIT_RUN_ID"),
            role=os.environ.get("TFSUBMIT_ROLE", "worker"),
            index=int(os.environ.get("TFSUBMIT_INDEX", "0")),
        )
    return _context


class Run:
    """Inside a job: Azure ML v1's `Run.get_context()`, for scripts ported by changing their
    import (`from tfsubmit import Run`). Outside a job, `tfsubmit.Run` is the submitting
    side's run (tfsubmit.api.runs.Run), which has the same `get_context`."""

    @staticmethod
    def get_context(allow_offline: bool = True) -> RunContext:
        context = run_context()
        if context.offline and not allow_offline:
            raise RuntimeError("not inside a tfsubmit run (allow_offline=False)")
        return context
