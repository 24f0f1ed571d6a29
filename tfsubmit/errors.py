"""The one exception hierarchy: each class says what the user must fix."""

from __future__ import annotations


class TfsubmitError(Exception):
    """Base of every error tfsubmit raises on purpose."""


class JobSpecError(TfsubmitError, ValueError):
    """A job spec field has a bad value; the message names the field."""


class SourceError(TfsubmitError):
    """The source directory or entry script cannot be snapshotted."""


class TransientError(TfsubmitError):
    """A failure that may pass by itself (a package index or a host that does not answer
    yet): the step that raised it is retried (Prefect task retries, see flows/submit.py)."""


class EnvironmentBuildError(TfsubmitError):
    """The job's Python environment could not be built."""


class DownloadError(EnvironmentBuildError, TransientError):
    """An environment build could not reach its package index (a network error)."""


class TargetError(TfsubmitError):
    """A compute target is unknown, unreachable or misconfigured."""


class UnreachableError(TargetError, TransientError):
    """A host of a compute target did not answer (refused, timed out)."""


class NotSupportedError(TfsubmitError):
    """The spec is valid, but this version of tfsubmit cannot run it yet."""


class StorageError(TfsubmitError, OSError):
    """The disk is full (or will not take a write): the message names where, and what to
    free."""


class RunNotFoundError(TfsubmitError, LookupError):
    """No run with that id exists in the workspace."""


class ServerError(TfsubmitError):
    """The embedded Prefect server could not be started or reached."""


class RunFailedError(TfsubmitError):
    """A run ended Failed or Canceled and the caller asked to raise on error."""

    def __init__(self, message: str, *, run_id: str, status: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class ModelNotFoundError(TfsubmitError, LookupError):
    """No registered model with that name (or version): the message lists those there are."""


class EndpointError(TfsubmitError):
    """An endpoint could not be deployed, reached or changed: the message says why."""
