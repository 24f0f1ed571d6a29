"""What a run's Prefect artifacts say, as plain data: the metrics table, the progress bar,
the images page. Whoever publishes them (Prefect's client in tasks/, the runner's REST
mirror in service/) only sends these."""

from __future__ import annotations

import base64
import io
import math
import mimetypes
from pathlib import Path

from tfsubmit.runtime.metrics import KIND_IMAGE, TOTAL_EPOCHS, series, tasks_of

METRICS_DESCRIPTION = ("Metrics of run {run}, a row per task and metric, every value in "
                       "`values`, to 4 significant digits (Run.get_metrics() has them whole); "
                       "the curves are the `-curves` artifact")


def rounded(value: float) -> float:
    """To 4 significant digits, as people read a metric (NaN and infinities as they are)."""
    return float(f"{value:.4g}") if math.isfinite(value) else value


def metrics_table(records: list[dict]) -> list[dict]:
    """Rows of the metrics artifact, one per task and metric, the primary task's first;
    `values` holds every value (to 4 significant digits)."""
    rows = []
    for task in tasks_of(records):
        for name, values in sorted(series(records, task).items()):
            if name == TOTAL_EPOCHS:
                continue
            shown = [rounded(v) for v in values]
            finite = [v for v in shown if math.isfinite(v)] or shown
            rows.append({"task": task, "metric": name, "last": shown[-1], "min": min(finite),
                         "max": max(finite), "count": len(values), "values": shown})
    return rows


def curves_png(records: list[dict]) -> bytes | None:
    """One PNG: a panel per metric, its values over its steps, a line per task; None
    before any metric has two values."""
    by_metric: dict[str, dict[str, list[float]]] = {}
    for task in tasks_of(records):
        for name, values in series(records, task).items():
            if name not in (TOTAL_EPOCHS, "epoch") and len(values) > 1:
                by_metric.setdefault(name, {})[task] = values
    if not by_metric:
        return None
    import matplotlib  # loaded only here: it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(by_metric)[:12]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), dpi=90,
                                squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        for task, values in by_metric[name].items():
            axis.plot(range(1, len(values) + 1), values, marker="o", markersize=2,
                      linewidth=1, label=task)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        if len(by_metric[name]) > 1:
            axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def curves_markdown(run_id: str, png: bytes) -> str:
    return (f"# Curves of run `{run_id}`\n\nEach metric over its steps, a line per task "
            "(`tfsubmit tensorboard RUN` for more).\n\n"
            f"![curves](data:image/png;base64,{base64.b64encode(png).decode()})\n")


def outputs_markdown(run_id: str, root: Path, outputs: list[str]) -> str:
    """The outputs artifact: each file (path, size) and the command that downloads them."""
    lines = [f"# Outputs of run `{run_id}`", "",
             f"{len(outputs)} file(s) in `{root / 'outputs'}` on the machine that ran the "
             "flow. Download them with:", "",
             f"    tfsubmit download {run_id} --prefix outputs/", "",
             f"Run folder: `{root}`", ""]
    if outputs:
        lines += ["| file | size |", "| --- | --- |"]
    for name in outputs[:200]:
        path = root / name
        size = path.stat().st_size if path.is_file() else 0
        lines.append(f"| `{name}` | {human_size(size)} |")
    if len(outputs) > 200:
        lines.append(f"| ... {len(outputs) - 200} more | |")
    return "\n".join(lines)


def human_size(count: float) -> str:
    """Bytes as people read them: 512 B, 27.3 KB, 1.2 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


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
