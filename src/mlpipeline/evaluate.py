"""Stage `evaluate`: score the model on the test split, write DVC metrics and plots, and track
the whole run (params, metrics, plots, model, data version, git commit) in MLflow.

Which metrics and plots depends on the task (mlpipeline.tasks): the stage writes what the
task computes, and the task's `dvc plots` definitions to reports/dvc.yaml.
With engine.kind: spark the test split is scored where its rows are (one task per
partition) and only the time, the label and the scores come back, with a seeded sample of
evaluate.check_rows rows for the checks that move rows one by one (the ONNX twin's parity,
the gate's behaviour). Both engines compute the figures from the same arrays.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
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
    Params,
    load_params,
)
from mlpipeline.engine import session_for, uses_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

Evaluation = tuple[dict[str, float], pd.DataFrame, dict[str, pd.DataFrame]]
POSITION = "_position"  # a row's place in the split file


def evaluate(model: Any, test: pd.DataFrame, params: Params) -> Evaluation:
    """(metrics, per-row predictions, plot tables) of a model on a labelled table."""
    schema = params.schema
    return from_scores(test[schema.target], params.task.scores(model, test[
        schema.feature_names]), test[schema.time_column], params)


def from_scores(actual: pd.Series, scores: np.ndarray, times: pd.Series, params: Params
                ) -> Evaluation:
    """The same from a model's scores on the rows whose labels and times are given."""
    task, settings = params.task, params.evaluate
    actual = actual.reset_index(drop=True)
    predictions = task.prediction_table(actual, scores)  # labels as the schema names them
    predictions.insert(0, params.schema.time_column, times.to_numpy())
    return (task.metrics(actual, scores), predictions,
            task.plot_tables(actual, scores, settings.calibration_bins, settings.curve_points))


def check_positions(rows: int, params: Params) -> np.ndarray:
    """Which rows of the test split the row-by-row checks use: evaluate.check_rows of them,
    drawn with evaluate.seed and kept in split order (the same rows on both engines)."""
    limit = params.evaluate.check_rows
    if limit is None or rows <= limit:
        return np.arange(rows)
    return np.sort(np.random.default_rng(params.evaluate.seed).choice(rows, limit,
                                                                replace=False))


def read_test_split(params: Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test split read in this process, and its check rows (check_positions)."""
    test = pd.read_parquet(params.path(TEST_SPLIT))
    return test, test.iloc[check_positions(len(test), params)].reset_index(drop=True)


def spark_test_split(spark: SparkSession, params: Params) -> DataFrame:
    """The test split on the cluster, each row with its place in the file."""
    from pyspark.sql import functions as F

    return (spark.read.parquet(str(params.path(TEST_SPLIT).resolve()))
            .select("*", F.col("_metadata.row_index").alias(POSITION)))


def check_rows_on_spark(spark: SparkSession, params: Params) -> pd.DataFrame:
    """The check rows (check_positions) of the test split, the only rows that come back."""
    from pyspark.sql import functions as F

    frame = spark_test_split(spark, params)
    wanted = check_positions(frame.count(), params)
    chosen = spark.createDataFrame(pd.DataFrame({POSITION: wanted}))
    rows = pd.DataFrame(frame.join(F.broadcast(chosen), POSITION).toPandas())
    return (rows.sort_values(POSITION).drop(columns=POSITION).reset_index(drop=True)
            [frame.drop(POSITION).columns])


def scores_on_spark(spark: SparkSession, params: Params, models: dict[str, Any],
                    probe: pd.DataFrame, keep: list[str]) -> tuple[pd.DataFrame, dict[str,
                                                                                  np.ndarray]]:
    """Each model's scores on the test split, computed on the executors (the models travel
    with the tasks), and the `keep` columns, in the split's order. `probe`: a few rows the
    driver scores first, for the width of each model's scores (and to fail here, with the
    model's own error, when a model cannot score this split)."""
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    task, features = params.task, params.schema.feature_names
    probed = {name: np.asarray(task.scores(model, probe[features]))
              for name, model in models.items()}
    widths = {name: 1 if found.ndim == 1 else found.shape[1] for name, found in probed.items()}
    frame = spark_test_split(spark, params)
    columns = [f"{name}_{i}" for name, width in widths.items() for i in range(width)]
    layout = StructType([frame.schema[c] for c in keep] + [StructField(POSITION, LongType())]
                        + [StructField(c, DoubleType()) for c in columns])

    def score(frames: Any) -> Any:
        for rows in frames:
            out = rows[[*keep, POSITION]].copy()
            for name, model in models.items():
                scores = np.asarray(task.scores(model, rows[features]), dtype=float)
                for i, column in enumerate(scores.reshape(len(rows), -1).T):
                    out[f"{name}_{i}"] = column
            yield out

    table = pd.DataFrame(frame.select(*dict.fromkeys([*keep, *features, POSITION]))
                         .mapInPandas(score, layout).toPandas())
    table = table.sort_values(POSITION, kind="stable").reset_index(drop=True)
    scores = {}
    for name, width in widths.items():
        values = table[[f"{name}_{i}" for i in range(width)]].to_numpy()
        scores[name] = values if probed[name].ndim == 2 else values[:, 0]
    return table[keep], scores


def scored_test(params: Params, model: Any, spark: SparkSession | None = None
                ) -> tuple[Evaluation, pd.DataFrame]:
    """The model's evaluation on the test split and the check rows (check_positions), in
    this process or, with engine.kind: spark, on the cluster."""
    schema = params.schema
    if not uses_spark(params):
        test, check = read_test_split(params)
        return evaluate(model, test, params), check
    with session_for(params, "evaluate", spark) as session:
        check = check_rows_on_spark(session, params)
        table, scores = scores_on_spark(session, params, {"model": model}, check.head(1),
                                        [schema.time_column, schema.target])
    return from_scores(table[schema.target], scores["model"], table[schema.time_column],
                       params), check


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
    (metrics, predictions, plot_tables), check = scored_test(params, model)
    write_reports(params, metrics, predictions, plot_tables)

    from mlpipeline import tracking  # imports mlflow (~6 s): only this stage and `register` pay

    train_info = json.loads(params.path(TRAIN_INFO).read_text())
    run = tracking.log_training_run(
        params,
        model=model,
        metrics=metrics,
        check_rows=check,
        plot_tables=plot_tables,
        predictions=predictions,
        train_info=train_info,
    )
    params.path(RUN_INFO).write_text(json.dumps(run, indent=2) + "\n")
    where = f" (Spark, {params.engine.spark_master()})" if uses_spark(params) else ""
    print(f"evaluate: {params.task.headline(metrics)} on {len(predictions)} test rows{where} "
          f"-> {METRICS}")
    print(f"evaluate: MLflow run {run['run_id']} in experiment {params.mlflow.experiment!r} "
          f"({params.tracking_uri()})")


if __name__ == "__main__":
    main()
