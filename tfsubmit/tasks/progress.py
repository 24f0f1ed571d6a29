"""Live artifacts of a run in the Prefect UI: a progress bar per epoch and a metrics table.

While the job runs, the launch step hands the job's metrics here every second (see
pipeline.progress) and two artifacts of the flow run are kept current: `<run>-progress`
(epoch / total_epochs, with the latest values in its description) and `<run>-metrics`
(one row per task and metric, every value so far; the primary task's rows first: the
chief's, else worker 0's, else rank 0's). The metrics table is written once more, complete,
when the outputs are collected.
"""

from __future__ import annotations

import base64
import json
import mimetypes
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

from tfsubmit.runtime.metrics import KIND_IMAGE, TOTAL_EPOCHS, json_safe, series, tasks_of
from tfsubmit.service.prefect_api import artifact_key


def metrics_table(records: list[dict]) -> list[dict]:
    """Rows of the metrics artifact, one per task and metric, the primary task's first;
    `values` holds every value, so readers can rebuild them."""
    rows = []
    for task in tasks_of(records):
        rows += [
            {"task": task, "metric": name, "last": values[-1], "min": min(values),
             "max": max(values), "count": len(values), "values": values}
            for name, values in sorted(series(records, task).items())
            if name != TOTAL_EPOCHS
        ]
    return rows


# Seconds live artifact updates pause after the API failed to take one.
QUIET_SECONDS = 30.0


class RunArtifacts:
    """The run's live artifacts; create once, then update in place (one artifact each)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.metrics_id: UUID | None = None
        self.progress_id: UUID | None = None
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
                table=table, key=artifact_key(self.run_id, "metrics"),
                description=f"Metrics of run {self.run_id}, a row per task and metric, every "
                            "value in `values`",
            )
            return
        data = json.dumps(json_safe(table))
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


# Images up to this size are embedded in the artifact; bigger ones are linked.
EMBED_BYTES = 2 * 1024 * 1024


def publish_images(run_id: str, root: Path, records: list[dict]) -> None:
    """A markdown artifact `<run>-images` showing every image the job logged (log_image),
    under its name and task; nothing when it logged none."""
    images = [r for r in records if r.get("kind") == KIND_IMAGE]
    if not images:
        return
    lines = [f"# Images of run `{run_id}`", ""]
    for record in images:
        path = root / record["value"]
        lines.append(f"## {record['name']} ({record['task']})")
        if path.is_file() and path.stat().st_size <= EMBED_BYTES:
            kind = mimetypes.guess_type(path.name)[0] or "image/png"
            data = base64.b64encode(path.read_bytes()).decode()
            lines.append(f"![{record['name']}](data:{kind};base64,{data})")
        else:
            lines.append(f"[{path.name}]({path.resolve().as_uri()})")
        lines.append("")
    create_markdown_artifact(key=artifact_key(run_id, "images"), markdown="\n".join(lines),
                             description=f"Images logged by run {run_id}")
