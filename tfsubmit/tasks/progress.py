"""Live artifacts of a run in the Prefect UI: a progress bar per epoch and a metrics table.

While the job runs, the launch step hands the job's metrics here every second (see
pipeline.progress) and two artifacts of the flow run are kept current: `<run>-progress`
(epoch / total_epochs, with the latest values in its description) and `<run>-metrics`
(one row per task and metric, every value so far; the primary task's rows first: the
chief's, else worker 0's, else rank 0's). The metrics table is written once more, complete,
when the outputs are collected.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from tfsubmit.pipeline.artifacts import (
    METRICS_DESCRIPTION,
    curves_markdown,
    curves_png,
    images_markdown,
    metrics_table,
    progress,
)
from tfsubmit.runtime.metrics import json_safe, series
from tfsubmit.service.prefect_api import artifact_key

# Seconds live artifact updates pause after the API failed to take one.
QUIET_SECONDS = 30.0
# Seconds between live redraws of the curves (a figure costs about 0.2 s of CPU).
CURVES_SECONDS = 10.0


class RunArtifacts:
    """The run's live artifacts; create once, then update in place (one artifact each)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.metrics_id: UUID | None = None
        self.progress_id: UUID | None = None
        self.curves_id: UUID | None = None
        self._curves_at = 0.0
        self._published: list[dict] = []
        self._lock = threading.Lock()
        self._quiet_until = 0.0

    def publish(self, records: list[dict], *, final: bool = False) -> None:
        """Create or update the artifacts from the metric files' lines (every task's).
        Live updates are best effort: while the API does not answer they pause (for
        QUIET_SECONDS), and the job never waits on them; the final publication raises, for
        the caller to report."""
        with self._lock:
            if not records or (len(records) == len(self._published) and not final):
                return
            if not final and time.monotonic() < self._quiet_until:
                return
            try:
                self._publish_metrics(records)
                self._publish_progress(series(records), final)
                if final or time.monotonic() - self._curves_at > CURVES_SECONDS:
                    self._curves_at = time.monotonic()
                    self._publish_curves(records)
            except Exception:
                self._quiet_until = time.monotonic() + QUIET_SECONDS
                if final:
                    raise
                return
            self._published = list(records)

    def _publish_metrics(self, records: list[dict]) -> None:
        table = metrics_table(records)
        if self.metrics_id is None:
            self.metrics_id = create_table_artifact(
                table=json_safe(table), key=artifact_key(self.run_id, "metrics"),
                description=METRICS_DESCRIPTION.format(run=self.run_id),
            )
            return
        data = json.dumps(json_safe(table))
        with get_client(sync_client=True) as client:
            client.update_artifact(self.metrics_id, ArtifactUpdate(data=data))

    def _publish_curves(self, records: list[dict]) -> None:
        png = curves_png(records)
        if png is None:
            return
        markdown = curves_markdown(self.run_id, png)
        if self.curves_id is None:
            self.curves_id = create_markdown_artifact(
                markdown=markdown, key=artifact_key(self.run_id, "curves"),
                description=f"Curves of run {self.run_id}: each metric over its steps")
            return
        with get_client(sync_client=True) as client:
            client.update_artifact(self.curves_id, ArtifactUpdate(data=markdown))

    def _publish_progress(self, metrics: dict[str, list[float]], final: bool) -> None:
        shown = progress(metrics, final)
        if shown is None:
            return
        percent, description = shown[0], json_safe(shown[1])
        if self.progress_id is None:
            self.progress_id = create_progress_artifact(
                percent, key=artifact_key(self.run_id, "progress"), description=description)
        else:
            update_progress_artifact(self.progress_id, percent, description=description)


def publish_images(run_id: str, root: Path, records: list[dict]) -> None:
    """A markdown artifact `<run>-images` showing every image the job logged (log_image),
    under its name and task; nothing when it logged none."""
    markdown = images_markdown(run_id, root, records)
    if markdown is not None:
        create_markdown_artifact(key=artifact_key(run_id, "images"), markdown=json_safe(markdown),
                                 description=f"Images logged by run {run_id}")
