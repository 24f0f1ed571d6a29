"""Facts about local processes read from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def _state(pid: int | str) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    return _state(pid) not in (None, "Z", "X")


def processes_of_run(run_id: str) -> list[int]:
    """PIDs of live processes whose environment carries TFSUBMIT_RUN_ID=run_id.

    This also finds children that left the process group (setsid, daemonised helpers).
    """
    marker = f"TFSUBMIT_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
