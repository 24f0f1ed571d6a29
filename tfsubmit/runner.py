"""The detached process that executes one submission's flow.

`Experiment.submit` prepares the run folder and starts `python -m tfsubmit.runner RUN_DIR`
in its own session, so the run outlives the submitting process and can be followed,
listed and canceled from any other one. A `cancel.requested` file in the run folder asks
the run to stop.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from tfsubmit.workspace import TERMINAL_STATUSES, RunPaths, Workspace, read_json, update_record


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = RunPaths(Path(args[0]))
    record = read_json(paths.record) or {}
    try:
        from tfsubmit.server import ensure_server, prefect_env

        workspace = Workspace(record["workspace"])
        os.environ.update(prefect_env(workspace))
        os.environ["PREFECT_API_URL"] = ensure_server(workspace).api_url
        os.environ["TFSUBMIT_RUNNER_OF"] = record["id"]
        if "prefect" in sys.modules:  # forked from a warm fork server: re-read the settings
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()

        if record.get("kind") == "sweep":
            from tfsubmit.flows.sweep import run_sweep as run_flow

            spec = {"sweep": read_json(paths.job)}
        else:
            from tfsubmit.flows import submit_training as run_flow

            spec = {"job": read_json(paths.job)}
        state = run_flow(
            **spec,
            experiment=record["experiment"],
            run_id=record["id"],
            workspace=record["workspace"],
            return_state=True,
        )
        # The run ends when its flow run has ended, so that both always agree.
        outcome = (read_json(paths.record) or {}).get("outcome", "Failed")
        update_record(paths, status=outcome)
        return 0 if state.is_completed() else 1
    except BaseException as exc:  # the record must never stay "Running" after we are gone
        final = read_json(paths.record) or {}
        if final.get("status") not in TERMINAL_STATUSES:
            reason = f"the run's runner failed: {exc}"
            with paths.output_log.open("a") as log:
                log.write(f"[tfsubmit] {reason}\n{traceback.format_exc()}")
            update_record(paths, status="Failed", error=reason, finished=time.time())
        if isinstance(exc, Exception):
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
