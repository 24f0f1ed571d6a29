"""The metric files: one JSON line per logged value, one file per process of a job.

Every process writes `<its working folder>/.tfsubmit/metrics-<role>-<index>.jsonl`; the
orchestrator reads them live and after collection. Names are spelled here, once.

A line is {"name", "value", "time", "task": "worker:1", "kind"?, "step"?}. Without a kind
it is one value of a metric (a number, or a string); the kinds are a whole list, a table
row, a whole table, an image (its file in the run's `images/`), a tag or a property.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# Logged once by keras_callback(): the progress bar's denominator, not a result of the job.
TOTAL_EPOCHS = "total_epochs"

# The folder of a process's working directory that holds its metric files (and pid files).
METRICS_DIR = ".tfsubmit"
METRICS_GLOB = "metrics-*.jsonl"
# The folder of a process's working directory (and of the run) that holds logged images.
IMAGES_DIR = "images"

KIND_LIST = "list"
KIND_ROW = "row"
KIND_TABLE = "table"
KIND_IMAGE = "image"
KIND_TAG = "tag"
KIND_PROPERTY = "property"

# Whose metrics a run's are, when no task is named: the first of these the run has.
PRIMARY_TASKS = ("chief:0", "worker:0", "rank:0")


def metrics_file(workdir: str, role: str, index: int) -> str:
    """The metric file of process `role:index` working in `workdir` (a path on its host)."""
    return f"{workdir}/{METRICS_DIR}/metrics-{role}-{index}.jsonl"


def is_metrics_file(name: str) -> bool:
    return name.startswith("metrics-") and name.endswith(".jsonl")


def _task_of_file(path: Path) -> str:
    """`metrics-worker-1.jsonl` -> 'worker:1' (lines written before tasks were recorded)."""
    stem = path.name.removeprefix("metrics-").removesuffix(".jsonl")
    role, _, index = stem.rpartition("-")
    return f"{role}:{index}" if role and index.isdigit() else "worker:0"


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    """Every line of the metric files, each with its task, in file then logged order."""
    records = []
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except (FileNotFoundError, IsADirectoryError):
            continue
        fallback = _task_of_file(path)
        for line in lines:
            try:
                record = json.loads(line)
                record["name"]  # noqa: B018 (a line without a name is no metric)
            except (ValueError, KeyError, TypeError):
                continue  # a line still being written
            if not isinstance(record, dict):
                continue
            record.setdefault("task", fallback)
            records.append(record)
    return records


def tasks_of(records: list[dict[str, Any]]) -> list[str]:
    """The tasks that logged anything, the primary one first."""
    seen = list(dict.fromkeys(record["task"] for record in records))
    primary = primary_task(seen)
    return [primary, *(task for task in seen if task != primary)] if primary else []


def primary_task(tasks: list[str]) -> str | None:
    for task in PRIMARY_TASKS:
        if task in tasks:
            return task
    return sorted(tasks)[0] if tasks else None


# A record whose value held NaN or an infinity says so (json_safe wrote them as the strings
# "nan", "inf", "-inf"): only then are those strings read back as floats, so that a string
# metric "inf" stays a string.
NONFINITE = "nonfinite"


def has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(has_nonfinite(item) for item in value)
    if isinstance(value, dict):
        return any(has_nonfinite(item) for item in value.values())
    return False


def _number(value: Any, nonfinite: bool = False) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer past a float's range, written by hand
            return math.copysign(math.inf, value)
    if nonfinite and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def series(records: list[dict[str, Any]], task: str | None = None) -> dict[str, list[float]]:
    """{name: [numeric values in logged order]} of one task (default: the primary one):
    what progress bars, sweeps and live tables use."""
    task = task or primary_task([record["task"] for record in records])
    merged: dict[str, list[float]] = {}
    for record in records:
        if record["task"] != task or record.get("kind") not in (None, KIND_LIST):
            continue
        values = record["value"] if record.get("kind") == KIND_LIST else [record["value"]]
        flagged = bool(record.get(NONFINITE))
        numbers = [n for n in (_number(v, flagged) for v in values) if n is not None]
        if numbers:
            merged.setdefault(record["name"], []).extend(numbers)
    return merged


def read_metrics(paths: list[Path], task: str | None = None) -> dict[str, list[float]]:
    """The numeric metrics of one task (default: the chief, else worker 0, else rank 0):
    {name: [values in logged order]}."""
    return series(read_records(paths), task)


def azure_metrics(records: list[dict[str, Any]], task: str | None = None) -> dict[str, Any]:
    """Metrics as Azure ML v1's `get_metrics()` gives them, for one task: a value logged
    once is that value, logged again (or by log_list) the list; rows and tables are
    {column: [values]}; an image is its file's name in the run folder."""
    task = task or primary_task([record["task"] for record in records])
    values: dict[str, list[Any]] = {}
    listed: set[str] = set()
    tables: dict[str, dict[str, list[Any]]] = {}
    rows: dict[str, int] = {}  # rows each table has so far
    for record in records:
        kind, name = record.get("kind"), record["name"]
        if record["task"] != task or kind in (KIND_TAG, KIND_PROPERTY):
            continue
        flagged = bool(record.get(NONFINITE))
        value = _restore(record["value"], flagged)
        if kind in (KIND_ROW, KIND_TABLE) and isinstance(value, dict):
            # Columns stay aligned: a row without a column has None there, a column that
            # starts late has None for the rows before it.
            table = tables.setdefault(name, {})
            before = rows.get(name, 0)
            added = (max((len(cells) for cells in value.values()), default=0)
                     if kind == KIND_TABLE else 1)
            for column in [*table, *(column for column in value if column not in table)]:
                cells = value.get(column, [None] * added if kind == KIND_TABLE else None)
                cells = cells if kind == KIND_TABLE else [cells]
                table.setdefault(column, [None] * before).extend(
                    list(cells) + [None] * (added - len(cells)))
            rows[name] = before + added
        elif kind == KIND_LIST:
            values.setdefault(name, []).extend(value if isinstance(value, list) else [value])
            listed.add(name)
        else:
            values.setdefault(name, []).append(value)
    result: dict[str, Any] = {name: items if len(items) != 1 or name in listed else items[0]
                              for name, items in values.items()}
    result.update(tables)
    return result


def labels(records: list[dict[str, Any]], kind: str) -> dict[str, str]:
    """Tags or properties the job's processes set (later wins)."""
    return {record["name"]: str(record["value"]) for record in records
            if record.get("kind") == kind}


def json_safe(value: Any) -> Any:
    """NaN and infinity as strings ("nan", "inf"), as Prefect's own tables write them: JSON
    has no words for them; text that is not valid Unicode (a name taken from a non-UTF-8
    file name) with its odd bytes written as backslash escapes, since no API takes it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        try:  # a name decoded from a file name: its original bytes, as \xNN
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # other lone surrogates: as \udNNN
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    return value


def _restore(value: Any, nonfinite: bool) -> Any:
    """A value as it was logged: NaN and infinities back as floats (when the record says
    it held them), inside lists and tables too."""
    if not nonfinite:
        return value
    if isinstance(value, str):
        number = _number(value, True)
        return number if number is not None else value
    if isinstance(value, list):
        return [_restore(item, True) for item in value]
    if isinstance(value, dict):
        return {key: _restore(item, True) for key, item in value.items()}
    return value
