"""The in-job runtime: what a training script uses to log metrics.

It runs inside the job's environment, which has TensorFlow but not Prefect: it imports only
the standard library (Keras is imported when a callback is asked for). Outside a tfsubmit
run, metrics are kept in memory, so the same script also runs as plain `python train.py`.

    from tfsubmit import run_context
    ctx = run_context()
    ctx.log("loss", 0.3)
    model.fit(..., callbacks=[ctx.keras_callback()])
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from tfsubmit.runtime.metrics import TOTAL_EPOCHS


class RunContext:
    """Metric logging for the current process of a run."""

    def __init__(self, metrics_file: str | None, run_id: str | None, role: str, index: int):
        self.run_id = run_id
        self.role = role
        self.index = index
        self.offline = metrics_file is None
        self.history: dict[str, list[float]] = {}
        self._file = None
        if metrics_file:
            Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(metrics_file, "a", buffering=1)  # noqa: SIM115 (lives with the run)

    @property
    def outputs_dir(self) -> Path:
        """Where to save models and other results; tfsubmit collects this folder."""
        path = Path(os.environ.get("TFSUBMIT_OUTPUTS", "outputs"))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, name: str, value: float, step: int | None = None) -> None:
        """Record one value of a metric; appears live in the run's metrics."""
        number = float(value)
        self.history.setdefault(name, []).append(number)
        if self._file is not None:
            record: dict[str, Any] = {"name": name, "value": number, "time": time.time()}
            if step is not None:
                record["step"] = int(step)
            if not math.isfinite(number):
                record["value"] = str(number)
            self._file.write(json.dumps(record) + "\n")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for name, value in metrics.items():
            self.log(name, value, step=step)

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


_context: RunContext | None = None


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
