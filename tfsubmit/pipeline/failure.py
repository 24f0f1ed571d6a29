"""A failed run's own words: the exception its script raised, read from the failing
process's log, so the run's error names `FileNotFoundError: dataset not found` rather than
only an exit code."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Any

from tfsubmit.pipeline.supervise import Outcome, ProcessResult

TRACEBACK = "Traceback (most recent call last):"
LAST_FRAMES = 3  # library frames kept where it raised
# A frame's first line: `  File "path", line N, in name`.
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+')
# Where library code lives: site-packages, the standard library, frozen modules.
_LIBRARY = re.compile(r"(site-packages|dist-packages|/lib/python\d[\d.]*/|^<frozen |^<string>)")
TAIL_LINES = 400  # how much of a process's log is searched for its traceback
# mpirun --tag-output's prefix of each rank's line: "[1,0]<stderr>:".
_MPI_TAG = re.compile(r"^\[\d+,\d+\]<std(?:out|err)>:")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")


def script_exception(lines: list[str]) -> dict[str, Any] | None:
    """The last exception a Python traceback in `lines` shows: type, message and the
    traceback's last lines; None when there is none."""
    lines = [_MPI_TAG.sub("", line) for line in lines]
    starts = [i for i, line in enumerate(lines) if line.strip() == TRACEBACK]
    if not starts:
        return None
    block = lines[starts[-1]:]
    for i, line in enumerate(block[1:], start=1):
        if line and not line[0].isspace():
            match = _EXCEPTION.match(line.strip())
            if not match:
                return None
            return {"type": match[1], "message": (match[2] or "").strip(),
                    "traceback": [block[0], *own_frames(block[1:i]), block[i]]}
    return None


def own_frames(lines: list[str]) -> list[str]:
    """A traceback's frames, keeping every frame of the script's own files (the user's file
    and line) and the last LAST_FRAMES (where it raised); each run of library frames in
    between becomes one line that says how many were left out."""
    frames: list[list[str]] = []
    for line in lines:
        if _FRAME.match(line) or not frames:
            frames.append([line])
        else:
            frames[-1].append(line)  # its source line, carets, chained notes
    kept: list[str] = []
    skipped = 0
    for n, frame in enumerate(frames):
        match = _FRAME.match(frame[0])
        library = bool(match and _LIBRARY.search(match["path"]))
        if library and n < len(frames) - LAST_FRAMES:
            skipped += 1
            continue
        if skipped:
            kept.append(f"  ... {skipped} library frame(s) left out ...")
            skipped = 0
        kept += frame
    return kept


def failing_process(outcome: Outcome) -> ProcessResult | None:
    """The process whose exit failed the run: the one its reason names, else the first
    that exited non-zero."""
    failed = [r for r in outcome.results if r.exit_code not in (0, None)]
    reason = outcome.reason or ""
    for result in failed:  # the reason names it first, or after its root cause
        if reason.startswith((f"{result.role}:{result.index}@", f"{result.role} {result.index}@")) \
                or f"first task it broke: {result.role}:{result.index}@{result.host} " in reason:
            return result
    return failed[0] if failed else None


def explain(outcome: Outcome) -> dict[str, Any] | None:
    """The failed run's script exception, with the task it came from, or None."""
    if outcome.status != "Failed":
        return None
    result = failing_process(outcome)
    if result is None:
        return None
    try:
        with Path(result.log_file).open(errors="replace") as handle:
            tail = [line.rstrip("\n") for line in deque(handle, maxlen=TAIL_LINES)]
    except OSError:
        return None
    found = script_exception(tail)
    if found is None:
        return None
    return {"task": f"{result.role}:{result.index}@{result.host}", **found}


def with_exception(reason: str | None, found: dict[str, Any] | None) -> str | None:
    """The reason, ending with the script's exception when one was found."""
    if not found:
        return reason
    raised = found["type"] + (f": {found['message']}" if found["message"] else "")
    return f"{reason}: {raised}" if reason else f"{found['task']} raised {raised}"
