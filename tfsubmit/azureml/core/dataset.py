"""azureml.core.Dataset: local files and folders, shipped with the run as `inputs` are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfsubmit.errors import JobSpecError


class DatasetConsumptionConfig:
    """A dataset as a script argument: its local path, shipped into the run."""

    def __init__(self, name: str, path: Path, mode: str) -> None:
        self.name, self.path, self.mode = name, path, mode


class FileDataset:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name: str | None = None

    def as_named_input(self, name: str) -> FileDataset:
        named = FileDataset(self.path)
        named.name = name
        return named

    def as_mount(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(self.name or self.path.name, self.path, "mount")

    def as_download(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(self.name or self.path.name, self.path, "download")

    def register(self, workspace: Any, name: str, **ignored: Any) -> FileDataset:
        return self.as_named_input(name)


class _File:
    @staticmethod
    def from_files(path: Any, validate: bool = True) -> FileDataset:
        """A local folder or file (a path, or Azure's (datastore, path) pair)."""
        if isinstance(path, (list, tuple)) and len(path) == 1:
            path = path[0]
        if isinstance(path, tuple) and len(path) == 2:
            path = path[1]
        if not isinstance(path, (str, Path)) or str(path).startswith(("http:", "https:",
                                                                        "azureml:")):
            raise JobSpecError(f"Dataset.File.from_files: {path!r}: give a folder or file on "
                               "this machine (tfsubmit ships it with the run)")
        local = Path(path).expanduser().resolve()
        if validate and not local.exists():
            raise JobSpecError(f"Dataset.File.from_files: {str(local)!r} does not exist")
        return FileDataset(local)


class Dataset:
    File = _File
