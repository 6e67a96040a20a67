"""The committed-state comparison (mlpipeline.relock) as plain functions: what it names, and
the MLflow run's traces it leaves out."""

from __future__ import annotations

import json

import yaml

from mlpipeline.relock import differences, lock_differences

LOCK = {"schema": "2.0", "stages": {
    "train": {"cmd": "python -m mlpipeline.train",
              "deps": [{"path": "src/mlpipeline/train.py", "md5": "aaa", "size": 10}],
              "params": {"params.yaml": {"train": {"seed": 7}}},
              "outs": [{"path": "models/model.joblib", "md5": "bbb", "size": 20}]},
    "evaluate": {"cmd": "python -m mlpipeline.evaluate",
                 "outs": [{"path": "reports/run.json", "md5": "r1", "size": 5},
                          {"path": "reports/predictions.csv", "md5": "p1", "size": 5}]}}}


def lock(change: dict | None = None) -> str:
    data = json.loads(json.dumps(LOCK))
    for stage, kind, path, md5 in (change or {}).get("entries", []):
        next(e for e in data["stages"][stage][kind] if e["path"] == path)["md5"] = md5
    if "seed" in (change or {}):
        data["stages"]["train"]["params"]["params.yaml"]["train"]["seed"] = change["seed"]
    return yaml.safe_dump(data, sort_keys=False)


def test_each_stage_and_path_that_differs_is_named() -> None:
    changed = lock({"entries": [("train", "deps", "src/mlpipeline/train.py", "ccc"),
                                ("evaluate", "outs", "reports/predictions.csv", "p2")],
                    "seed": 8})
    assert lock_differences(lock(), changed) == [
        "dvc.lock: stage train: dep src/mlpipeline/train.py: aaa -> ccc",
        "dvc.lock: stage train: param params.yaml.train.seed: 7 -> 8",
        "dvc.lock: stage evaluate: out reports/predictions.csv: p1 -> p2"]
    stale = yaml.safe_load(lock())
    del stale["stages"]["evaluate"]
    assert lock_differences(yaml.safe_dump(stale, sort_keys=False), lock()) == [
        "dvc.lock: stage evaluate only in the new lock"]


def test_the_mlflow_runs_traces_are_the_only_exceptions() -> None:
    gate = {"version": "1", "promoted": True, "run_id": "abc"}
    head = {"dvc.lock": lock(), "reports/run.json": '{"run_id": "abc"}',
            "reports/gate.json": json.dumps(gate), "reports/metrics.json": '{"roc_auc": 0.75}'}
    fresh = {**head, "dvc.lock": lock({"entries": [("evaluate", "outs", "reports/run.json",
                                                    "r2")]}),
             "reports/run.json": '{"run_id": "def"}',
             "reports/gate.json": json.dumps({**gate, "run_id": "def"})}
    assert differences(head, fresh) == []
    worse = {**fresh, "reports/gate.json": json.dumps({**gate, "promoted": False}),
             "reports/metrics.json": '{"roc_auc": 0.74}'}
    del worse["reports/run.json"]
    assert differences(head, worse) == ["reports/gate.json: promoted: True -> False",
                                        "reports/metrics.json: roc_auc: 0.75 -> 0.74",
                                        "reports/run.json: not written"]
