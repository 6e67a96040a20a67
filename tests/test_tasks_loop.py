"""Regression and multiclass through the whole loop, every component real, and each task on a
data set other than the demo's by params alone.

The loop, per task, from its preset (`make demo TASK=...`): `dvc repro` registers v1, a
uvicorn process serves it, the next batch's applications go to it as traffic (their answers
logged in the task's shape), the batch lands drifted, and one CT cycle (as `python -m
monitoring.ct`) checks drift, scores the served answers on the outcomes, retrains, gates with
the task's metric in its direction (lower is better: rmse, log_loss) and promotes v2, which
the running service then answers with. v1 is XGBoost's, v2 LightGBM's: both learners are
registered, served through their ONNX twins and scored in batch, for both tasks.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pandas as pd
import pytest

from mlpipeline.config import load_params
from mlpipeline.prediction_log import read_log
from monitoring.demo import send, upcoming_traffic, wait_for_version
from serving.launch import free_port, start_service, wait_http_ok
from tests.conftest import ENV, Project, make_project

pytestmark = pytest.mark.slow

EXPECTED = {  # what the served answer, the metric and the counters look like per task
    "regression": {"answer": {"value"}, "metric": "rmse", "counter": "predicted_values_count",
                   "metrics": {"rmse", "mae", "r2", "mape"}},
    "multiclass": {"answer": {"label", "probabilities"}, "metric": "log_loss",
                   "counter": "predictions_total",
                   "metrics": {"accuracy", "f1_macro", "f1_weighted", "log_loss",
                               "roc_auc_ovr", "precision_A", "recall_D"}},
}


def drift_from_the_next_batch(params: dict[str, Any]) -> None:
    params["train"]["model"] = "xgboost"  # v1; the retrain's v2 is LightGBM's
    params["source"]["drift"].update(covariate_from_batch=8, concept_from_batch=8)
    params["ct"]["cooldown_batches"] = 1  # the first batch after training may retrain
    params["serving"]["log_flush_seconds"] = 0.5


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_the_loop_retrains_gates_by_the_task_metric_and_serves_the_new_version(
        task: str, tmp_path: Path) -> None:
    expected = EXPECTED[task]
    project = make_project(tmp_path / "project", preset=task)
    project.set_params(drift_from_the_next_batch)
    project.commit("drift from batch 8")
    project.dvc("repro")
    project.commit("v1")
    gate = json.loads(project.read("reports/gate.json"))
    assert gate["promoted"] and gate["champion_after"] == "1"
    assert expected["metrics"] <= set(json.loads(project.read("reports/metrics.json")))
    assert f"# Written by `evaluate` from the task ({task})" in project.read("reports/dvc.yaml")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(project.root, port, 0.5, tmp_path / "service.log", env=ENV)
    try:
        wait_http_ok(f"{url}/ready", service, timeout=90)
        model = httpx.get(f"{url}/model").json()  # XGBoost's ONNX twin
        assert (model["version"], model["task"], model["runtime"]) == ("1", task, "onnxruntime")
        traffic = upcoming_traffic(load_params(project.root))  # batch 8's applications
        assert send(url, traffic, 500) == {"1"}
        answer = httpx.post(f"{url}/predict", json=json.loads(
            traffic.iloc[[0]].drop(columns="application_id").to_json(orient="records"))).json()
        assert set(answer["predictions"][0]) == expected["answer"]
        document = httpx.get(f"{url}/openapi.json").json()  # the answer is the documented one
        jsonschema.validate(answer["predictions"][0],
                            document["components"]["schemas"]["Prediction"])
        counters = httpx.get(f"{url}/metrics").text
        assert expected["counter"] in counters
        deadline = time.monotonic() + 30
        while len(read_log(project.root / "logs/predictions")) < len(traffic):
            assert time.monotonic() < deadline, "the prediction log never caught up"
            time.sleep(0.2)

        batch_answers_as_served(url, project, traffic, task, tmp_path / "v1", "1")
        project.set_params(lambda params: params["train"].update(model="lightgbm"))
        project.commit("the next model is LightGBM's")
        result = project.run(sys.executable, "-m", "monitoring.ct")
        summary = json.loads(project.read("reports/ct/summary.json"))
        assert summary["status"] == "ok", result.stdout + result.stderr
        assert summary["drift"]["detected"] is True
        assert summary["drift"]["target"]["drifted"] and summary["drift"]["prediction"]["drifted"]
        performance = summary["performance"]
        assert performance["source"] == "served predictions joined with outcomes"
        assert performance["joined"] == {"on_id": len(traffic), "on_features": 0,
                                         "outcomes_without_prediction": 0}
        assert expected["metrics"] <= set(performance["metrics"])
        assert summary["decision"]["action"] == "retrain"
        gate = summary["gate"]
        [compared] = [c for c in gate["checks"] if "vs champion" in c["name"]]
        metric = expected["metric"]  # lower is better: the challenger is at most the bound
        assert compared["name"] == f"{metric} vs champion v1"
        assert "(lower is better)" in compared["note"]
        assert compared["value"] <= compared["threshold"] and compared["passed"]
        assert compared["value"] == gate["challenger_metrics"][metric]
        assert gate["promoted"] and (summary["champion_before"], summary["champion_after"]) \
            == ("1", "2")
        wait_for_version(url, "2", timeout=30)
        model = httpx.get(f"{url}/model").json()  # LightGBM's ONNX twin
        assert (model["version"], model["runtime"]) == ("2", "onnxruntime")
        again = httpx.post(f"{url}/predict", json=json.loads(
            traffic.iloc[[0]].to_json(orient="records"))).json()
        assert again["model"]["version"] == "2"
        assert set(again["predictions"][0]) == expected["answer"]
        answers_as_mlflow_serves(url, project, traffic, task)
        batch_answers_as_served(url, project, traffic, task, tmp_path / "v2", "2")
        assert service.poll() is None  # the same process, never restarted
    finally:
        service.terminate()
        service.wait(timeout=30)


def answers_as_mlflow_serves(url: str, project: Project, traffic: pd.DataFrame,
                             task: str) -> None:
    """/invocations, through MLflow's own scoring client, answers what `mlflow models serve`
    answers for the champion (its pyfunc's predict), and `predict_proba` what it answers for
    the model logged with `pyfunc_predict_fn="predict_proba"`: the classifier's own
    predict_proba, a column per class in its `classes_` order. The service's ONNX twin
    differs by float32 rounding at most."""
    import mlflow
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from mlpipeline import tracking

    params = load_params(project.root)
    features = traffic[params.schema.feature_names].head(50)
    with tracking.store(params):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{params.mlflow.registered_model}@champion")
    client = ScoringServerClient("127.0.0.1", int(url.rsplit(":", 1)[1]))
    served = client.invoke(features).get_predictions(predictions_format="ndarray")
    theirs = pyfunc.predict(features)
    if task == "regression":  # numbers
        np.testing.assert_allclose(served.astype(float), theirs, rtol=1e-5)
        proba = httpx.post(f"{url}/invocations", json={
            "dataframe_records": json.loads(features.to_json(orient="records")),
            "params": {"predict_method": "predict_proba"}})
        assert proba.status_code == 400 and "use 'predict'" in proba.json()["message"]
        return
    assert served.tolist() == theirs.tolist()  # the class names
    ours = client.invoke(features, params={"predict_method": "predict_proba"}).get_predictions(
        predictions_format="ndarray")
    np.testing.assert_allclose(ours, pyfunc.get_raw_model().predict_proba(features), atol=2e-6)


def batch_answers_as_served(url: str, project: Project, traffic: pd.DataFrame, task: str,
                            folder: Path, version: str) -> None:
    """`make score`'s job on the same rows answers what /invocations answers (the labels or
    values), and, for classes, the probabilities /invocations' predict_proba gives, by class."""
    import pyarrow.parquet as pq

    params = load_params(project.root)
    schema = params.schema
    rows = traffic[[c for c in [schema.id_column, *schema.feature_names] if c]].head(200)
    folder.mkdir()
    rows.to_parquet(folder / "rows.parquet")
    project.run(sys.executable, "-m", "serving.batch", "--input", str(folder / "rows.parquet"),
                "--output", str(folder / "scored"))
    scored = pq.read_table(folder / "scored" / "predictions").to_pandas()
    body = {"dataframe_records": json.loads(rows.drop(columns=schema.id_column or []).to_json(
        orient="records"))}
    served = httpx.post(f"{url}/invocations", json=body).json()["predictions"]
    assert scored["prediction"].tolist() == served
    assert (scored["model_version"] == version).all()
    if task == "regression":
        return
    proba = httpx.post(f"{url}/invocations", json={
        **body, "params": {"predict_method": "predict_proba"}}).json()["predictions"]
    model_order = sorted(schema.classes or [])  # scikit-learn's classes_, as served
    for i, label in enumerate(model_order):
        assert scored[f"probability_{label}"].tolist() == [row[i] for row in proba]


def land_batches(project: Project, frame: pd.DataFrame, months: int) -> list[str]:
    """A team's file drop: the rows in `months` monthly CSV batches, each row stamped within
    its month."""
    days = pd.date_range("2024-01-01", periods=months, freq="MS")
    names = []
    for day, index in zip(days, np.array_split(np.arange(len(frame)), months), strict=True):
        hours = pd.to_timedelta(np.arange(len(index)), unit="h")
        batch = frame.iloc[index].assign(observed_at=day + hours)
        name = f"{day:%Y-%m-%d}.csv"
        batch.to_csv(project.root / "data/landing" / name, index=False)
        names.append(name)
    return names


def other_data(task: str) -> tuple[pd.DataFrame, str, list[Any] | None]:
    """scikit-learn's bundled data sets (offline): diabetes progression (a number) and wine
    cultivars (classes 0, 1, 2 as integers), in a seeded order (a feed is not sorted by its
    outcome)."""
    from sklearn.datasets import load_diabetes, load_wine

    data = (load_diabetes if task == "regression" else load_wine)(as_frame=True).frame
    data = data.sample(frac=1, random_state=3).reset_index(drop=True)
    return data, "target", (None if task == "regression" else [0, 1, 2])


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_another_data_set_by_params_alone(task: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from monitoring.drift import run_check
    from serving.app import create_app

    project = make_project(tmp_path / "project")  # the binary defaults, then params alone
    data, target, classes = other_data(task)
    features = [c for c in data.columns if c != target]
    land_batches(project, data, 4)

    def configure(params: dict[str, Any]) -> None:
        params["source"].update(kind="files", path="data/landing")
        params["window"].update(start="2024-01-01", end="2024-04-01")
        params["schema"] = {
            "task": task, "target": target, "time_column": "observed_at",
            **({"classes": classes} if classes else {"target_min": 0, "target_max": 1000}),
            "features": [{"name": name, "type": "numeric"} for name in features]}
        params["validate"].update(min_rows=100, min_batch_rows=30)
        params["prepare"].update(test_batches=1, reference_rows=300)
        params["monitoring"].update(min_rows=30, min_labelled_rows=30)
        hyperparams = params["train"]["hyperparams"]
        hyperparams["random_forest"].pop("class_weight")  # a classifier's knob
        if task == "regression":  # every block is checked against the task's estimators
            hyperparams.update(linear={"alpha": 1.0}, dummy={"strategy": "mean"})
            params["tune"]["space"]["linear"] = {"alpha": {"low": 0.001, "high": 100.0,
                                                           "log": True}}
        params["gate"] = {"min_metrics": {"r2": 0.2} if task == "regression"
                          else {"accuracy": 0.8}, "compare_metric": None, "tolerance": 0.0}
        params["mlflow"].update(experiment=f"other-{task}", registered_model=f"other-{task}")

    project.set_params(configure)
    project.commit("another data set, by params alone")
    out = project.dvc("repro").stdout
    assert "4 batches accepted" in out
    gate = json.loads(project.read("reports/gate.json"))
    assert gate["promoted"], gate["reason"]
    metrics = json.loads(project.read("reports/metrics.json"))
    params = load_params(project.root)
    assert params.gate.compare_metric == ("rmse" if task == "regression" else "f1_macro")
    if task == "regression":
        assert metrics["r2"] > 0.2 and metrics["rows"] == 110
    else:
        assert metrics["accuracy"] > 0.8 and metrics["rows"] == 44

    with TestClient(create_app(params, start_poller=False)) as client:
        contract = client.get("/model").json()["contract"]
        assert "threshold" not in contract and contract["task"] == task  # binary only
        record = json.loads(data[features].iloc[[0]].to_json(orient="records"))[0]
        [answer] = client.post("/predict", json=record).json()["predictions"]
        if task == "regression":
            assert 0 < answer["value"] < 400
        else:
            assert answer["label"] in classes and set(answer["probabilities"]) == {"0", "1", "2"}
            proba = client.post("/invocations", json={"dataframe_records": [record],
                                                      "params": {"predict_method":
                                                                 "predict_proba"}}).json()
            assert len(proba["predictions"][0]) == 3
    check = run_check(params, "batch")  # the newest batch: re-scored (no traffic logged)
    assert check["performance"]["source"].startswith("champion v1 re-scored")
    assert check["drift"]["target"] is not None and check["drift"]["prediction"] is not None
