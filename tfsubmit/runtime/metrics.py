"""The metric files: one JSON line per logged value, one file per process of a job.

Every process writes `<its working folder>/.tfsubmit/metrics-<role>-<index>.jsonl`; the
orchestrator reads them live and after collection. Names are spelled here, once.
"""

from __future__ import annotations

import json
from pathlib import Path

# Logged once by keras_callback(): the progress bar's denominator, not a result of the job.
TOTAL_EPOCHS = "total_epochs"

# The folder of a process's working directory that holds its metric files (and pid files).
METRICS_DIR = ".tfsubmit"
METRICS_GLOB = "metrics-*.jsonl"


def metrics_file(workdir: str, role: str, index: int) -> str:
    """The metric file of process `role:index` working in `workdir` (a path on its host)."""
    return f"{workdir}/{METRICS_DIR}/metrics-{role}-{index}.jsonl"


def is_metrics_file(name: str) -> bool:
    return name.startswith("metrics-") and name.endswith(".jsonl")


def read_metrics(paths: list[Path]) -> dict[str, list[float]]:
    """Merge metric files into {name: [values in logged order]}."""
    merged: dict[str, list[float]] = {}
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
                merged.setdefault(record["name"], []).append(float(record["value"]))
            except (ValueError, KeyError):
                continue  # a line still being written
    return merged
