"""A sweep's report: the trials table, a plot of the primary metric, the markdown summary."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

from tfsubmit.tuning.tuner import Tuner


def trial_rows(tuner: Tuner) -> list[dict[str, Any]]:
    """One row per trial, best first."""
    spec = tuner.spec
    return [{"trial": t.number, "run": t.run_id,
             **{name: t.params.get(name) for name in spec.space},
             spec.primary_metric: t.value, "status": t.status,
             "duration_s": round((t.finished or time.time()) - t.started, 1),
             "error": t.error or ""} for t in tuner.ordered()]


def plot_png(tuner: Tuner) -> bytes | None:
    """A PNG of the primary metric per trial (colour by status)."""
    import matplotlib  # loaded only when a sweep ends: it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = sorted(tuner.trials.values(), key=lambda t: t.number)
    if not any(t.value is not None for t in trials):
        return None
    colours = {"Completed": "tab:blue", "EarlyTerminated": "tab:orange", "Failed": "tab:red",
               "Canceled": "tab:gray"}
    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    for status, colour in colours.items():
        shown = [t for t in trials if t.status == status and t.value is not None]
        if shown:
            axes.scatter([t.number for t in shown], [t.value for t in shown], color=colour,
                         label=status)
    best = tuner.best()
    if best:
        axes.axhline(best.value, color="tab:green", linestyle="--", linewidth=1,
                     label=f"best (trial {best.number})")
    axes.set_xlabel("trial")
    axes.set_ylabel(f"{tuner.spec.primary_metric} (last value)")
    axes.set_title(f"{tuner.spec.primary_metric} per trial ({tuner.spec.goal})")
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def summary_markdown(tuner: Tuner, rows: list[dict[str, Any]], png: bytes | None) -> str:
    spec = tuner.spec
    image = ""
    if png:
        image = (f"![{spec.primary_metric} per trial](data:image/png;base64,"
                 f"{base64.b64encode(png).decode()})")
    best = tuner.best()
    header = [name for name in rows[0] if name != "error"] if rows else []
    lines = [
        f"# Sweep `{tuner.sweep_id}`",
        "",
        f"- **Sampling**: {spec.sampling}; **primary metric**: {spec.primary_metric} "
        f"({spec.goal}); **trials**: {len(tuner.trials)} of {spec.total_runs}, at most "
        f"{spec.max_concurrent_runs} at once",
        f"- **Best**: trial {best.number} (`{best.run_id}`), {spec.primary_metric} "
        f"{best.value:.6g}, {best.params}" if best else "- **Best**: no trial completed",
        "",
        image,
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join("-" if row[h] is None else str(row[h]) for h in header) + " |"
          for row in rows),
    ]
    return "\n".join(lines)
