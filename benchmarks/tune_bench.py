"""Benchmark (`make bench-tune`): the model inside the loop against its anchors.

For each task's shipped data (binary: the default params; multiclass and regression: their
presets), a copy of the project runs the data stages (`dvc repro prepare`); then, on that
train split, scored on that test split by the task's own metrics, in this process:
- every learner with its shipped hyper-parameters (train.hyperparams), timed;
- the tuned champion: the `tune` stage's search (mlpipeline.tune.search, tune.seed and
  tune.space as shipped) of each learner in --tuned, stopped at the wall-clock budget, and
  its best point fitted on the whole train split (the budget covers both);
- FLAML's AutoML (`flaml`, the benchmark-only dependency group) with the same budget on the
  same train split (its own choice of learners and validation).
The gate's metric of each task (roc_auc; log_loss and rmse in the presets) decides. Prints a
table per task, every side as a ratio to FLAML's within the same run, and the verdict: the
tuned champion within 0.5 % of FLAML's metric or better, on every task.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.config import TEST_SPLIT, TRAIN_SPLIT, Params, load_params
from mlpipeline.schema import training_target
from mlpipeline.train import fit
from mlpipeline.tune import search
from tests.conftest import make_project

LEARNERS = ["random_forest", "hist_gradient_boosting", "xgboost", "lightgbm", "linear"]
FLAML_METRIC = {"roc_auc": "roc_auc", "log_loss": "log_loss", "rmse": "rmse",
                "f1_macro": "macro_f1", "r2": "r2", "mae": "mae"}
WITHIN = 0.005  # the tuned champion within 0.5 % of FLAML's metric, or better


def test_metric(params: Params, model: Any, test: pd.DataFrame) -> float:
    task, schema = params.task, params.schema
    scores = task.scores(model, test[schema.feature_names])
    return float(task.metrics(test[schema.target], scores)[str(params.gate.compare_metric)])


def with_learner(params: Params, learner: str, trials: int = 0) -> Params:
    return params.model_copy(update={
        "train": params.train.model_copy(update={"model": learner}),
        "tune": params.tune.model_copy(update={"trials": trials})})


def tuned(params: Params, learner: str, train: pd.DataFrame, test: pd.DataFrame,
          budget: float) -> tuple[float, float, int]:
    """(test metric, seconds, trials) of the search stopped at the budget less a full fit."""
    started = time.perf_counter()
    probe = time.perf_counter()
    fit(train, with_learner(params, learner))  # the final fit's cost, kept out of the search
    final_fit = time.perf_counter() - probe
    searched = with_learner(params, learner, trials=100_000)
    report = search(train, searched, timeout=max(1.0, budget - 2 * final_fit))
    model, _ = fit(train, searched, tuned=report)
    return test_metric(params, model, test), time.perf_counter() - started, report["completed"]


class FlamlModel:
    """FLAML's fitted AutoML, scored as the task scores a pipeline."""

    def __init__(self, automl: Any, params: Params) -> None:
        self.automl, self.schema = automl, params.schema
        self.classes_ = np.asarray(automl.classes_) if hasattr(automl, "classes_") else None

    def frame(self, features: pd.DataFrame) -> pd.DataFrame:
        return features.astype({c: "category" for c in self.schema.categorical})

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        return self.automl.predict_proba(self.frame(features))

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return self.automl.predict(self.frame(features))


def flaml(params: Params, train: pd.DataFrame, test: pd.DataFrame, budget: float
          ) -> tuple[float, float, str]:
    from flaml import AutoML

    schema = params.schema
    started = time.perf_counter()
    automl = AutoML()
    features = train[schema.feature_names].astype({c: "category" for c in schema.categorical})
    automl.fit(features, training_target(train[schema.target], schema),
               task="regression" if schema.numeric_target else "classification",
               metric=FLAML_METRIC[str(params.gate.compare_metric)], time_budget=budget,
               seed=params.tune.seed, n_jobs=os.cpu_count(), use_spark=False, verbose=0)
    model = FlamlModel(automl, params)
    return (test_metric(params, model, test), time.perf_counter() - started,
            str(automl.best_estimator))


def split(task: str, folder: Path) -> tuple[Params, pd.DataFrame, pd.DataFrame]:
    project = make_project(folder / task, None if task == "binary" else task)
    project.run(sys.executable, "-m", "dvc", "repro", "prepare")
    params = load_params(project.root)
    return params, pd.read_parquet(params.path(TRAIN_SPLIT)), pd.read_parquet(
        params.path(TEST_SPLIT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["binary", "multiclass", "regression"])
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds for each search and for FLAML")
    parser.add_argument("--tuned", nargs="+", default=["lightgbm", "xgboost", "linear"],
                        help="the learners whose search is timed against FLAML")
    args = parser.parse_args()
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            params, train, test = split(task, Path(tmp))
            metric = str(params.gate.compare_metric)
            lower = params.task.metric_directions[metric]
            rows: list[tuple[str, float, float, str]] = []
            for learner in LEARNERS:
                started = time.perf_counter()
                model, _ = fit(train, with_learner(params, learner))
                rows.append((f"{learner}, shipped", test_metric(params, model, test),
                             time.perf_counter() - started, ""))
            searched = {}
            for learner in args.tuned:
                value, seconds, trials = tuned(params, learner, train, test, args.budget)
                rows.append((f"{learner}, tuned", value, seconds, f"{trials} trials"))
                searched[learner] = value
            anchor, seconds, chosen = flaml(params, train, test, args.budget)
            rows.append(("FLAML AutoML", anchor, seconds, f"chose {chosen}"))
            print(f"\n### {task}: test {metric} ({'lower' if lower else 'higher'} is better), "
                  f"{len(train):,} train and {len(test):,} test rows, budget {args.budget:g} s\n")
            print(f"| learner | test {metric} | vs FLAML | minutes | |")
            print("|---|---|---|---|---|")
            for name, value, took, note in rows:
                print(f"| {name} | {value:.4f} | {value / anchor:.4f} | {took / 60:.2f} | "
                      f"{note} |")
            for learner, value in searched.items():
                met = value <= anchor * (1 + WITHIN) if lower else value >= anchor * (1 - WITHIN)
                verdicts.append((task, learner, met, value / anchor))
            sys.stdout.flush()
    print(f"\n{os.cpu_count()} cores. Target: the tuned champion within {WITHIN:.1%} of "
          f"FLAML's metric or better, at equal budget ({args.budget:g} s), on every task:")
    for task, learner, met, ratio in verdicts:
        print(f"  {task}, {learner} tuned: {'met' if met else 'MISSED'} (tuned / FLAML "
              f"{ratio:.4f})")


if __name__ == "__main__":
    main()
