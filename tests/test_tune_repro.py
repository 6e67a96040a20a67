"""The search and the boosters through the real pipeline, on a copy of the trained project
(binary; the other tasks' loop with both boosters is tests/test_tasks_loop.py):
- `tune.trials: 3` with LightGBM: one parent MLflow run with 3 nested trials, train fits the
  best point and its run says so; a forced repro gives the same search and model (so the
  same metrics);
  a test split with poisoned labels leaves the search's answer unchanged.
- XGBoost, then the tuned LightGBM: each registered, served through its ONNX twin and scored
  in batch with the same answers as the service and its own pyfunc.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from mlpipeline.config import load_params
from tests.conftest import Project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def booster_project(trained_project: Project, tmp_path_factory: pytest.TempPathFactory
                    ) -> Project:
    root = tmp_path_factory.mktemp("boosters") / "project"
    shutil.copytree(trained_project.root, root, symlinks=True)
    project = Project(root)

    def boosters_may_replace_the_forest(params: dict) -> None:
        params["gate"]["tolerance"] = 0.05  # the service serves the champion: promote them

    project.set_params(boosters_may_replace_the_forest)
    project.commit("a wider tolerance")
    return project


def runs(project: Project) -> dict[str, dict[str, str]]:
    """Each run's tags, straight from the embedded store."""
    with sqlite3.connect(project.root / "mlflow.db") as db:
        rows = db.execute("SELECT run_uuid, key, value FROM tags").fetchall()
        status = dict(db.execute("SELECT run_uuid, status FROM runs").fetchall())
    tags: dict[str, dict[str, str]] = {run: {"status": state} for run, state in status.items()}
    for run, key, value in rows:
        tags[run][key] = value
    return tags


def lock_md5(project: Project, stage: str, path: str) -> str:
    lock = yaml.safe_load(project.read("dvc.lock"))
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


def served_and_scored_alike(project: Project, folder: Path, version: str) -> None:
    """`make score`'s job and the service's /invocations on 500 landed rows: the champion
    (`version`, through its ONNX twin) gives the same labels, and probabilities within 1e-6
    of its pyfunc's classifier."""
    import mlflow
    from fastapi.testclient import TestClient

    from mlpipeline import tracking
    from serving.app import create_app

    params = load_params(project.root)
    raw = sorted((project.root / "data/raw").glob("*.csv"))[-1]
    rows = pd.read_csv(raw, dtype={"application_id": str}).head(500)
    folder.mkdir()
    rows.to_csv(folder / "rows.csv", index=False)
    project.run(sys.executable, "-m", "serving.batch", "--input", str(folder / "rows.csv"),
                "--output", str(folder / "scored"))
    scored = pq.read_table(folder / "scored" / "predictions").to_pandas()
    manifest = json.loads((folder / "scored" / "manifest.json").read_text())
    assert (manifest["model"]["version"], manifest["model"]["runtime"]) == (version,
                                                                            "onnxruntime")
    features = rows[params.schema.feature_names]
    with tracking.store(params):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{params.mlflow.registered_model}@champion")
    assert scored["prediction"].tolist() == pyfunc.predict(features).tolist()
    np.testing.assert_allclose(scored["probability"],
                               pyfunc.get_raw_model().predict_proba(features)[:, 1], atol=1e-6)
    served_params = params.model_copy(update={"serving": params.serving.model_copy(
        update={"prediction_log_dir": str(folder / "log")})})
    with TestClient(create_app(served_params, start_poller=False)) as client:
        model = client.get("/model").json()
        assert (model["version"], model["runtime"]) == (version, "onnxruntime")
        reply = client.post("/invocations", content=rows.drop(columns="default").to_csv(
            index=False), headers={"Content-Type": "text/csv"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"] == scored["prediction"].tolist()


def test_xgboost_is_registered_served_and_scored_in_batch(booster_project: Project,
                                                          tmp_path: Path) -> None:
    p = booster_project
    p.set_params(lambda params: params["train"].update(model="xgboost"))
    p.commit("xgboost")
    p.dvc("repro")
    gate = json.loads(p.read("reports/gate.json"))  # (the shared project may hold v2 already)
    assert gate["promoted"], gate["reason"]
    assert json.loads(p.read("models/train_info.json"))["model"] == "xgboost"
    served_and_scored_alike(p, tmp_path / "xgboost", gate["version"])


def test_a_tracked_search_is_reproducible_and_never_reads_the_test_split(
        booster_project: Project, tmp_path: Path) -> None:
    p = booster_project
    def search_lightgbm(params: dict) -> None:
        params["train"]["model"] = "lightgbm"
        params["tune"]["trials"] = 3
        params["tune"]["space"]["lightgbm"].update(  # smaller models than the shipped space
            n_estimators={"low": 20, "high": 80}, num_leaves={"low": 8, "high": 32})

    p.set_params(search_lightgbm)
    p.commit("a search of lightgbm")
    p.dvc("repro")
    report = json.loads(p.read("reports/tune.json"))
    assert (report["model"], report["trials"], report["completed"]) == ("lightgbm", 3, 3)
    info = json.loads(p.read("models/train_info.json"))
    assert info["hyperparams"] == report["best"]["hyperparams"]
    assert info["hyperparams_source"].startswith(f"tune: trial {report['best']['trial']} of 3")

    tags = runs(p)
    [parent] = [run for run, t in tags.items() if t.get("run_kind") == "tune"]
    trials = [t for t in tags.values() if t.get("mlflow.parentRunId") == parent]
    assert len(trials) == 3 and {t["status"] for t in trials} == {"FINISHED"}
    run_id = json.loads(p.read("reports/run.json"))["run_id"]
    assert tags[run_id]["tune_run_id"] == parent  # the version's run names its search
    assert tags[run_id]["hyperparams_source"] == info["hyperparams_source"]
    gate = json.loads(p.read("reports/gate.json"))
    card = gate["version"]
    assert gate["promoted"], gate["reason"]

    # Forced again: the same search and the same model bytes, so evaluate's metrics (of the
    # same model on the same rows: tests/test_pipeline.py forces that) are up to date.
    first = {path: p.read(path) for path in ["reports/tune.json", "models/train_info.json"]}
    model_md5 = lock_md5(p, "train", "models/model.joblib")
    p.dvc("repro", "--force", "--single-item", "tune", "train")
    assert {path: p.read(path) for path in first} == first
    assert lock_md5(p, "train", "models/model.joblib") == model_md5
    assert "Data and pipelines are up to date" in p.dvc("status").stdout
    assert len([t for t in runs(p).values() if t.get("run_kind") == "tune"]) == 2

    # The test split's labels inverted: the search's answer does not move.
    test_split = p.root / "data/prepared/test.parquet"
    poisoned = pd.read_parquet(test_split)
    poisoned["default"] = 1 - poisoned["default"]
    poisoned.to_parquet(test_split)
    p.dvc("repro", "--force", "--single-item", "tune")
    assert p.read("reports/tune.json") == first["reports/tune.json"]
    p.dvc("checkout", "--force", "data/prepared/test.parquet")
    served_and_scored_alike(p, tmp_path / "lightgbm", card)
