"""What the flows share: their flow runs' names and tags, and the one mapping from a run's
record to the state its flow run ends in."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State

from tfsubmit.store.record import CANCELED, COMPLETED


def flow_run_name() -> str:
    params = flow_run.parameters
    return params.get("run_id") or f"{params.get('experiment') or 'default'}-run"


def label_flow_run(run_id: str, experiment: str) -> None:
    """Name the flow run after the run and tag it with the experiment, however it was started
    (tfsubmit's runner, `prefect deployment run`, a schedule): `tfsubmit runs --experiment`
    and the UI's filters find it by that tag."""
    tags = sorted({*(flow_run.tags or []), experiment})
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=run_id, tags=tags)


def prefect_state(record: dict[str, Any], what: str = "training") -> State:
    """The state a run's flow run ends in, derived from its record's settled outcome."""
    outcome = record.get("outcome")
    if outcome == COMPLETED:
        return Completed(message=f"{what} completed")
    if outcome == CANCELED:
        return Cancelled(message=record.get("error") or "canceled")
    return Failed(message=record.get("error") or "failed")
