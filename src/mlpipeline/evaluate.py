"""Stage `evaluate`: score the model on the test split, write DVC metrics and plots, and track
the whole run (params, metrics, plots, model, data version, git commit) in MLflow.

Which metrics and plots depends on the task (mlpipeline.tasks): the stage writes what the
task computes, and the task's `dvc plots` definitions to reports/dvc.yaml.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import joblib
import pandas as pd
import yaml

from mlpipeline.config import (
    METRICS,
    MODEL_FILE,
    PLOTS_DIR,
    PLOTS_SPEC,
    PREDICTIONS,
    RUN_INFO,
    TEST_SPLIT,
    TRAIN_INFO,
    TRAIN_SPLIT,
    Params,
    load_params,
)


def evaluate(model: Any, test: pd.DataFrame, params: Params
             ) -> tuple[dict[str, float], pd.DataFrame, dict[str, pd.DataFrame]]:
    """(metrics, per-row predictions, plot tables) of a model on a labelled table."""
    schema, task, settings = params.schema, params.task, params.evaluate
    actual = test[schema.target]
    scores = task.scores(model, test[schema.feature_names])
    predictions = task.prediction_table(actual, scores)  # labels as the schema names them
    predictions.insert(0, schema.time_column, test[schema.time_column].to_numpy())
    return (task.metrics(actual, scores), predictions,
            task.plot_tables(actual, scores, settings.calibration_bins, settings.curve_points))


def write_reports(params: Params, metrics: dict[str, float], predictions: pd.DataFrame,
                  plot_tables: dict[str, pd.DataFrame]) -> None:
    """reports/metrics.json, predictions.csv, plots/*.csv and the plots' definitions."""
    params.path(METRICS).parent.mkdir(parents=True, exist_ok=True)
    params.path(METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    predictions.to_csv(params.path(PREDICTIONS), index=False)
    plots = params.path(PLOTS_DIR)
    shutil.rmtree(plots, ignore_errors=True)  # another task's tables must not linger
    plots.mkdir(parents=True)
    for name, table in plot_tables.items():
        table.round(6).to_csv(plots / f"{name}.csv", index=False)
    header = (f"# Written by `evaluate` from the task ({params.task.name}): the `dvc plots` of "
              "its metrics.\n# Paths are relative to this folder. `dvc plots show` reads it.\n")
    params.path(PLOTS_SPEC).write_text(
        header + yaml.safe_dump({"plots": params.task.dvc_plots()}, sort_keys=False))


def main() -> None:
    params = load_params()
    model = joblib.load(params.path(MODEL_FILE))
    test = pd.read_parquet(params.path(TEST_SPLIT))
    metrics, predictions, plot_tables = evaluate(model, test, params)
    write_reports(params, metrics, predictions, plot_tables)

    from mlpipeline import tracking  # imports mlflow (~6 s): only this stage and `register` pay

    train_info = json.loads(params.path(TRAIN_INFO).read_text())
    run = tracking.log_training_run(
        params,
        model=model,
        metrics=metrics,
        train=pd.read_parquet(params.path(TRAIN_SPLIT)),
        test=test,
        plot_tables=plot_tables,
        predictions=predictions,
        train_info=train_info,
    )
    params.path(RUN_INFO).write_text(json.dumps(run, indent=2) + "\n")
    print(f"evaluate: {params.task.headline(metrics)} on {len(test)} test rows -> {METRICS}")
    print(f"evaluate: MLflow run {run['run_id']} in experiment {params.mlflow.experiment!r} "
          f"({params.tracking_uri()})")


if __name__ == "__main__":
    main()
