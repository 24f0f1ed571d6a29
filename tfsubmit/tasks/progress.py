"""Live artifacts of a run in the Prefect UI: a progress bar per epoch and a metrics table.

While the job runs, the launch step hands the job's metrics here every second (see
pipeline.progress) and two artifacts of the flow run are kept current: `<run>-progress`
(epoch / total_epochs, with the latest values in its description) and `<run>-metrics`
(one row per metric, every value so far). The metrics table is written once more, complete,
when the outputs are collected.
"""

from __future__ import annotations

import json
import math
import threading
import time
from uuid import UUID

from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from tfsubmit.runtime.metrics import TOTAL_EPOCHS
from tfsubmit.service.prefect_api import artifact_key


def metrics_table(metrics: dict[str, list[float]]) -> list[dict]:
    """Rows of the metrics artifact; `values` holds every value, so readers can rebuild them."""
    return [
        {"metric": name, "last": values[-1], "min": min(values), "max": max(values),
         "count": len(values), "values": values}
        for name, values in sorted(metrics.items())
        if name != TOTAL_EPOCHS
    ]


# Seconds live artifact updates pause after the API failed to take one.
QUIET_SECONDS = 30.0


class RunArtifacts:
    """The run's live artifacts; create once, then update in place (one artifact each)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.metrics_id: UUID | None = None
        self.progress_id: UUID | None = None
        self._published: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._quiet_until = 0.0

    def publish(self, metrics: dict[str, list[float]], *, final: bool = False) -> None:
        """Create or update the artifacts. Live updates are best effort: while the API does
        not answer they pause (for QUIET_SECONDS), and the job never waits on them; the
        final publication raises, for the caller to report."""
        with self._lock:
            if not metrics or (metrics == self._published and not final):
                return
            if not final and time.monotonic() < self._quiet_until:
                return
            try:
                self._publish_metrics(metrics)
                self._publish_progress(metrics, final)
            except Exception:
                self._quiet_until = time.monotonic() + QUIET_SECONDS
                if final:
                    raise
                return
            self._published = {name: list(values) for name, values in metrics.items()}

    def _publish_metrics(self, metrics: dict[str, list[float]]) -> None:
        table = metrics_table(metrics)
        if self.metrics_id is None:
            self.metrics_id = create_table_artifact(
                table=table, key=artifact_key(self.run_id, "metrics"),
                description=f"Metrics of run {self.run_id}, every value in `values`",
            )
            return
        data = json.dumps(_finite(table))
        with get_client(sync_client=True) as client:
            client.update_artifact(self.metrics_id, ArtifactUpdate(data=data))

    def _publish_progress(self, metrics: dict[str, list[float]], final: bool) -> None:
        epochs = metrics.get("epoch")
        if not epochs:
            return
        epoch = int(epochs[-1])
        total = int(metrics[TOTAL_EPOCHS][-1]) if metrics.get(TOTAL_EPOCHS) else None
        percent = 100.0 if final else (min(100.0, 100.0 * epoch / total) if total else 0.0)
        latest = ", ".join(f"{name} {values[-1]:.4g}" for name, values in sorted(metrics.items())
                           if name not in ("epoch", TOTAL_EPOCHS))
        description = f"epoch {epoch}" + (f" of {total}" if total else "") + f": {latest}"
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(
                percent, key=artifact_key(self.run_id, "progress"), description=description)
        else:
            update_progress_artifact(self.progress_id, percent, description=description)


def _finite(value):
    """JSON has no NaN or infinity: write those as strings, as Prefect's own table does."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
