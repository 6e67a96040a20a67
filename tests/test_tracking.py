"""Tracking set-up: side effects of MLflow that must not leak."""

from __future__ import annotations


def test_connecting_to_one_store_does_not_pin_the_process_to_it(tmp_path, monkeypatch) -> None:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; `connect` must not leave it set,
    or every later project in the process would read it back as an override."""
    import os

    from mlpipeline import tracking
    from mlpipeline.config import load_params
    from tests.conftest import REPO

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = load_params(REPO)
    params = params.model_copy(update={"root": tmp_path})
    tracking.connect(params)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking.mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
