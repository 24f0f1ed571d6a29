"""azureml.tensorboard, ported: `Tensorboard([runs]).start()` / `.stop()`."""

from __future__ import annotations

from typing import Any


class Tensorboard:
    """TensorBoard over Azure-style runs (tfsubmit's TensorBoard: their metrics as
    scalars, and what their own TensorBoard callbacks wrote)."""

    def __init__(self, runs: list[Any], local_root: str | None = None, port: int = 6006,
                 **ignored: Any) -> None:
        from tfsubmit.api.tensorboard import TensorBoard

        workspace = runs[0].workspace.root if runs else None
        self._board = TensorBoard(list(runs), workspace=workspace, port=port)

    def start(self, start_browser: bool = False) -> str:
        url = self._board.start()
        print(f"TensorBoard started at {url}")
        return url

    def stop(self) -> None:
        self._board.stop()
