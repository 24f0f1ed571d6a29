"""What a run's Prefect artifacts say, as plain data: the metrics table, the progress bar,
the images page. Whoever publishes them (Prefect's client in tasks/, the runner's REST
mirror in service/) only sends these."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path

from tfsubmit.runtime.metrics import KIND_IMAGE, TOTAL_EPOCHS, series, tasks_of

METRICS_DESCRIPTION = "Metrics of run {run}, a row per task and metric, every value in `values`"


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


def progress(metrics: dict[str, list[float]], final: bool) -> tuple[float, str] | None:
    """(percent, description) of the progress artifact; None before the first epoch."""
    epochs = metrics.get("epoch")
    if not epochs:
        return None
    epoch = int(epochs[-1])
    total = int(metrics[TOTAL_EPOCHS][-1]) if metrics.get(TOTAL_EPOCHS) else None
    percent = 100.0 if final else (min(100.0, 100.0 * epoch / total) if total else 0.0)
    latest = ", ".join(f"{name} {values[-1]:.4g}" for name, values in sorted(metrics.items())
                       if name not in ("epoch", TOTAL_EPOCHS))
    return percent, f"epoch {epoch}" + (f" of {total}" if total else "") + f": {latest}"


# Images up to this size are embedded in the artifact; bigger ones are linked.
EMBED_BYTES = 2 * 1024 * 1024


def images_markdown(run_id: str, root: Path, records: list[dict]) -> str | None:
    """The `<run>-images` page: every image the job logged (log_image), under its name and
    task; None when it logged none."""
    images = [r for r in records if r.get("kind") == KIND_IMAGE]
    if not images:
        return None
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
    return "\n".join(lines)


def outputs_link(paths_outputs: Path, count: int) -> str:
    """The outputs artifact: a link to the run's outputs folder (as Prefect's link
    artifacts write it)."""
    return (f"[{count} output file(s) in {paths_outputs}]"
            f"({paths_outputs.resolve().as_uri()})")
