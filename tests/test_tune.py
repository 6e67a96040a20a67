"""The search (stage `tune`) in process: its validation rows, its draws, its MLflow runs (a
parent with one nested run per trial, failed ones too), what train then fits, and the
checks params.yaml's space gets at load. The repro-level facts (two forced repros, a
poisoned test split) are in tests/test_tune_repro.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from mlpipeline.config import (
    TRAIN_SPLIT,
    TUNE_REPORT,
    Params,
    SearchRange,
    TuneParams,
    _check_hyperparams,
)
from mlpipeline.train import fit
from mlpipeline.tune import run, search, tuned_hyperparams, validation_split
from tests.test_tasks import PARAMS, batches


def project_params(root: Path, trials: int, space: dict[str, dict[str, SearchRange]],
                   name: str = "binary") -> Params:
    """`name`'s params anchored at `root`, with a train split there (1,400 rows)."""
    params = PARAMS[name]
    data = batches(params, n=2)
    (root / TRAIN_SPLIT).parent.mkdir(parents=True)
    data.to_parquet(root / TRAIN_SPLIT)
    return params.model_copy(update={"root": root, "tune": TuneParams(
        trials=trials, seed=3, space=space)})


SMALL_FOREST = {"n_estimators": SearchRange(low=5, high=20),
                "max_depth": SearchRange(low=2, high=8),
                "max_features": SearchRange(low=0.3, high=1.0)}


def test_the_validation_rows_are_the_newest_share_by_time() -> None:
    frame = pd.DataFrame({"t": pd.to_datetime(["2026-01-03", "2026-01-01", "2026-01-05",
                                               "2026-01-02", "2026-01-04"]), "x": range(5)})
    older, newest = validation_split(frame, "t", 0.4)
    assert newest["x"].tolist() == [4, 2] and older["x"].tolist() == [1, 3, 0]
    assert len(validation_split(frame, "t", 0.01)[1]) == 1  # at least one row held out


def test_a_range_is_ints_or_floats_log_or_not_or_choices() -> None:
    assert SearchRange(low=5, high=20).integer and not SearchRange(low=0.5, high=2).integer
    assert SearchRange(choices=["a", None]).values_to_check() == ["a", None]
    for bad in [{"low": 3}, {"low": 5, "high": 1}, {"low": 0, "high": 1, "log": True},
                {"choices": []}, {"choices": [1], "low": 1}, {"low": 1, "high": 2, "lo": 1}]:
        with pytest.raises(ValidationError):
            SearchRange.model_validate(bad)


def test_the_space_is_checked_at_load_naming_the_key(tmp_path: Path) -> None:
    params = PARAMS["binary"].model_copy(update={"root": tmp_path, "tune": TuneParams(space={
        "random_forest": {"n_trees": SearchRange(low=5, high=20),
                          "max_depth": SearchRange(low=-3, high=8)},
        "lightgbm": {"num_leaves": SearchRange(choices=[1, 31])}})})
    with pytest.raises(SystemExit) as error:
        _check_hyperparams(params)
    text = str(error.value)
    assert "tune.space.random_forest.n_trees: not a parameter of RandomForestClassifier" in text
    assert "tune.space.random_forest.max_depth: The 'max_depth' parameter" in text
    assert "tune.space.lightgbm.num_leaves: Check failed: (num_leaves) > (1)" in text


@pytest.mark.slow  # a real MLflow store (its tables: seconds)
def test_trials_are_nested_runs_under_one_parent_and_train_fits_the_best(
        tmp_path: Path) -> None:
    import mlflow

    from mlpipeline import tracking

    params = project_params(tmp_path, 5, {"random_forest": SMALL_FOREST})
    report = run(params)
    assert (report["trials"], report["completed"], report["failed"]) == (5, 5, 0)
    assert report["metric"] == "roc_auc" and report["validation"]["rows"] == 280
    values = [r["value"] for r in report["history"]]
    assert report["best"]["value"] == max(values)
    assert report["best"]["trial"] == values.index(max(values))
    assert (tmp_path / TUNE_REPORT).is_file()

    with tracking.store(params):
        runs = mlflow.search_runs(experiment_names=[params.mlflow.experiment],
                                  output_format="list")
    [parent] = [r for r in runs if r.data.tags.get("run_kind") == "tune"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 5 and {r.info.status for r in trials} == {"FINISHED"}
    assert sorted(r.data.metrics["validation_roc_auc"] for r in trials) == sorted(values)
    assert all(r.data.metrics["seconds"] > 0 for r in trials)
    assert parent.data.metrics["best_validation_roc_auc"] == report["best"]["value"]
    assert parent.data.metrics["tune_seconds"] > 0
    assert parent.data.params["best.n_estimators"] == str(report["best"]["searched"][
        "n_estimators"])

    # train fits the best point, and says where it came from
    hyperparams, source = tuned_hyperparams(params, report)
    assert hyperparams == {**params.train.chosen_hyperparams(), **report["best"]["searched"]}
    assert source.endswith("(reports/tune.json)")
    model, info = fit(pd.read_parquet(tmp_path / TRAIN_SPLIT), params, tuned=report)
    assert model[-1].get_params()["n_estimators"] == report["best"]["searched"]["n_estimators"]
    assert info["hyperparams"] == hyperparams
    assert info["hyperparams_source"].startswith(f"tune: trial {report['best']['trial']} of 5")
    # the same data and params: the same trials and best point
    assert search(pd.read_parquet(tmp_path / TRAIN_SPLIT), params) == report


@pytest.mark.slow  # a real MLflow store (its tables: seconds)
def test_a_trial_that_raises_is_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    import mlflow

    from mlpipeline import tracking

    space = {"random_forest": {"n_estimators": SearchRange(choices=[-5, 10]),
                               "max_depth": SearchRange(low=2, high=8)}}
    params = project_params(tmp_path, 6, space)
    report = run(params)
    failed = [r for r in report["history"] if r["state"] == "FAIL"]
    assert failed and report["failed"] == len(failed) and report["completed"] == 6 - len(failed)
    assert all(r["params"]["n_estimators"] == -5 for r in failed)
    assert "'n_estimators' parameter of RandomForestClassifier must be an int in the range " \
        "[1, inf). Got -5" in failed[0]["error"]
    assert report["best"]["searched"]["n_estimators"] == 10
    with tracking.store(params):
        runs = mlflow.search_runs(experiment_names=[params.mlflow.experiment],
                                  filter_string="tags.run_kind = 'tune-trial'",
                                  output_format="list")
    assert sorted(r.info.status for r in runs) == sorted(
        ["FAILED"] * len(failed) + ["FINISHED"] * (6 - len(failed)))
    assert all("n_estimators" in r.data.tags["error"] for r in runs
               if r.info.status == "FAILED")


def test_without_trials_train_fits_params_yaml(tmp_path: Path) -> None:
    params = project_params(tmp_path, 0, {})
    report = run(params)
    assert report["trials"] == 0 and "no search" in report["note"]
    hyperparams, source = tuned_hyperparams(params, report)
    assert hyperparams == params.train.chosen_hyperparams()
    assert source == "params.yaml (train.hyperparams.random_forest)"
    # a search of another learner does not apply to this one
    other = {"model": "lightgbm", "trials": 3, "metric": "roc_auc",
             "best": {"trial": 0, "value": 0.8, "hyperparams": {"num_leaves": 7}}}
    assert tuned_hyperparams(params, other)[0] == params.train.chosen_hyperparams()


@pytest.mark.parametrize("name, learner", [("regression", "xgboost"),
                                           ("multiclass", "lightgbm")])
def test_the_search_optimises_the_task_metric_in_its_direction(
        tmp_path: Path, name: str, learner: str) -> None:
    space = {learner: {"n_estimators": SearchRange(low=10, high=40),
                       "learning_rate": SearchRange(low=0.03, high=0.3, log=True)}}
    params = project_params(tmp_path, 3, space, name)
    params = params.model_copy(update={"train": params.train.model_copy(
        update={"model": learner})})
    report = search(pd.read_parquet(tmp_path / TRAIN_SPLIT), params)
    values = [r["value"] for r in report["history"]]
    # the gate's metric (the presets: rmse, log_loss), lower is better; binary's roc_auc
    # (higher) is the test above
    assert report["metric"] == {"regression": "rmse", "multiclass": "log_loss"}[name]
    assert report["direction"] == "lower is better"
    assert report["best"]["value"] == min(values)
    assert np.isfinite(values).all()


@pytest.mark.slow  # a real MLflow store (its tables: seconds)
def test_the_ct_summary_gives_the_search_time_when_it_ran_in_the_cycle(
        tmp_path: Path) -> None:
    import time

    from monitoring.ct import search_summary

    params = project_params(tmp_path, 2, {"random_forest": SMALL_FOREST})
    before = time.time()
    report = run(params)
    summary = search_summary(tmp_path, before)
    assert summary is not None and summary["trials"] == 2 and summary["seconds"] > 0
    assert summary["best_value"] == report["best"]["value"] and summary["run_id"]
    later = search_summary(tmp_path, time.time() + 1)  # DVC's run cache gave it back
    assert later is not None and later["seconds"] is None
    run(params.model_copy(update={"tune": TuneParams()}))  # no search: nothing to say
    assert search_summary(tmp_path, before) is None
