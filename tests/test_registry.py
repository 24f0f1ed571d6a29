"""The model registry retrain promotes into: versions, copies, refusals."""

from __future__ import annotations

import pytest

from tfsubmit.errors import TfsubmitError
from tfsubmit.spec.goals import best, better
from tfsubmit.store.layout import Workspace
from tfsubmit.store.registry import ModelRegistry


def test_better_follows_the_goal():
    assert better(0.1, 0.2, "minimize") and not better(0.2, 0.1, "minimize")
    assert better(0.9, 0.8, "maximize") and not better(0.8, 0.9, "maximize")
    assert not better(0.5, 0.5, "minimize")  # equal is not better: no new version
    assert better(0.5, None, "maximize")  # anything beats nothing
    with pytest.raises(TfsubmitError, match="goal: 'lower' is not one of minimize, maximize"):
        better(0.1, 0.2, "lower")


def test_nan_and_infinities_never_win():
    """A diverged run (loss NaN) or an infinite metric is never better, so the retrain flow
    never promotes it and a sweep never ranks it first; a finite value beats it."""
    nan, inf = float("nan"), float("inf")
    for goal in ("minimize", "maximize"):
        for odd in (nan, inf, -inf):
            assert not better(odd, 0.5, goal) and not better(odd, None, goal)
            assert better(0.5, odd, goal)
    assert best([0.9, nan, 0.5, -inf], "minimize") == 0.5
    assert best([0.9, nan, inf], "maximize") == 0.9


def test_promote_numbers_versions_and_copies_outputs(tmp_path):
    registry = ModelRegistry(Workspace(tmp_path / "ws"))
    outputs = tmp_path / "outputs"
    (outputs / "model").mkdir(parents=True)
    (outputs / "model" / "weights.bin").write_bytes(b"v1")
    first = registry.promote("exp", run_id="r1", outputs=outputs, metric="val_loss", value=0.3,
                             goal="minimize", metrics={"val_loss": 0.3})
    (outputs / "model" / "weights.bin").write_bytes(b"v2")
    second = registry.promote("exp", run_id="r2", outputs=outputs, metric="val_loss",
                              value=0.2, goal="minimize", metrics={"val_loss": 0.2})
    assert (first["version"], second["version"]) == (1, 2)
    assert (registry.path("exp", 1) / "model" / "weights.bin").read_bytes() == b"v1"
    assert registry.latest("exp")["run_id"] == "r2"
    assert [v["run_id"] for v in registry.versions("exp")] == ["r1", "r2"]
    assert registry.versions("other") == []


def test_promote_refuses_a_run_without_outputs(tmp_path):
    registry = ModelRegistry(Workspace(tmp_path / "ws"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TfsubmitError, match="run r9 has no outputs to promote"):
        registry.promote("exp", run_id="r9", outputs=tmp_path / "empty", metric="loss",
                         value=1.0, goal="minimize", metrics={})
    assert registry.versions("exp") == []
