"""Stage `train`: fit a seeded scikit-learn Pipeline (preprocessing + model) on the train split.

The model family and its hyper-parameters come from `train` in params.yaml, the estimator
for that family from the schema's task (mlpipeline.tasks). The fitted pipeline
takes the raw feature columns (numbers and category strings, missing values allowed), so the
service and monitoring feed it exactly what the schema describes.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import joblib
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlpipeline.config import (
    FIT_TIMING,
    MODEL_FILE,
    TRAIN_INFO,
    TRAIN_SPLIT,
    TUNE_REPORT,
    Params,
    load_params,
)
from mlpipeline.engine import session_for, uses_spark
from mlpipeline.lineage import file_md5
from mlpipeline.schema import training_target
from mlpipeline.tasks import Task
from mlpipeline.tasks.base import BOOSTERS, SCALED
from mlpipeline.tune import tuned_hyperparams

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def build_pipeline(task: Task, model: str, hyperparams: dict[str, Any], seed: int) -> Pipeline:
    """Preprocessing and the task's estimator of the `model` family."""
    schema = task.schema
    numeric_steps: list[Any] = [SimpleImputer(strategy="median")]
    if model in SCALED:
        numeric_steps.append(StandardScaler())
    numeric = make_pipeline(*numeric_steps)
    # Missing and unknown categories (the latter allowed up to a threshold by `validate`)
    # both encode as all zeros.
    categorical = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    features = ColumnTransformer([
        ("numeric", numeric, schema.numeric),
        ("categorical", categorical, schema.categorical),
    ])
    return Pipeline([("features", features),
                     ("model", task.estimator(model, hyperparams, seed))])


def newest(frame: pd.DataFrame, params: Params, available: int | None = None
           ) -> pd.DataFrame:
    """The newest train.max_rows rows of `frame` (all when null): what train and the search
    fit. `available`: the train split's rows when `frame` is already those newest rows."""
    available = len(frame) if available is None else available
    limit = params.train.max_rows
    if limit is not None and available > limit:
        return frame.sort_values(params.schema.time_column, kind="stable").tail(limit)
    return frame


def fit(frame: pd.DataFrame, params: Params, available: int | None = None,
        tuned: dict[str, Any] | None = None) -> tuple[Pipeline, dict[str, Any]]:
    """The task's pipeline fitted on the newest train.max_rows rows of `frame` (all when
    null), and what models/train_info.json says of it: nothing that changes from run to run
    (it is a DVC output). `available`: the train split's rows when `frame` is already those
    newest rows. `tuned`: reports/tune.json's content (the search's best point)."""
    schema, task, train = params.schema, params.task, params.train
    hyperparams, source = tuned_hyperparams(params, tuned)
    try:
        pipeline = build_pipeline(task, train.model, hyperparams, train.seed)
    except ValueError as error:  # a hyper-parameter the estimator does not take
        raise SystemExit(f"train: {error}") from None
    available = len(frame) if available is None else available
    frame = newest(frame, params, available)
    target = training_target(frame[schema.target], schema)
    pipeline.fit(frame[schema.feature_names], target)
    # train.hyperparams.n_jobs is for fitting; the saved model predicts on one thread, so a
    # served request spawns no pool and a forest's averaged scores are the same bits each run
    # (scikit-learn's None is one thread; a booster's None is every core)
    estimator = pipeline[-1]
    if "n_jobs" in estimator.get_params():
        estimator.set_params(n_jobs=1 if train.model in BOOSTERS else None)
    info = {
        "model": train.model,
        "task": task.name,
        "hyperparams": hyperparams,
        "hyperparams_source": source,
        "train_rows": len(frame),
        "train_rows_available": available,
        # The newest row it learnt from: the gate compares a later challenger with this model
        # only on test rows after it (a model re-scored on its own training rows flatters).
        "trained_until": pd.Timestamp(frame[schema.time_column].max()).isoformat(),
        **task.target_summary(target),
    }
    return pipeline, info


def newest_on_spark(params: Params, spark: SparkSession) -> tuple[pd.DataFrame, int]:
    """The newest train.max_rows rows of the train split, chosen on the cluster and collected
    through Arrow in the embedded engine's order (time, then place in the split), and the
    split's row count: the driver never holds more than the sample."""
    from pyspark.sql import functions as F

    time_column, limit = params.schema.time_column, params.train.max_rows
    frame = (spark.read.parquet(str(params.path(TRAIN_SPLIT).resolve()))
             .select("*", F.col("_metadata.row_index").alias("_position")))  # place in file
    newest = pd.DataFrame(frame.orderBy(F.col(time_column).desc(), F.col("_position").desc())
                          .limit(limit or 0).toPandas())
    newest = newest.sort_values([time_column, "_position"], kind="stable")
    return newest.drop(columns="_position").reset_index(drop=True), frame.count()


def training_rows(params: Params, spark: SparkSession | None = None
                  ) -> tuple[pd.DataFrame, int | None]:
    """What `fit` reads: the whole split, or on Spark with train.max_rows set, the sample."""
    if uses_spark(params) and params.train.max_rows is not None:
        with session_for(params, "train", spark) as session:
            return newest_on_spark(params, session)
    return pd.read_parquet(params.path(TRAIN_SPLIT)), None


def main() -> None:
    params = load_params()
    frame, available = training_rows(params)
    tuned = (json.loads(params.path(TUNE_REPORT).read_text())
             if params.path(TUNE_REPORT).exists() else None)
    started = time.perf_counter()
    pipeline, info = fit(frame, params, available, tuned)
    seconds = round(time.perf_counter() - started, 3)
    params.path(MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, params.path(MODEL_FILE))
    params.path(TRAIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    params.path(FIT_TIMING).write_text(json.dumps(
        {"model_md5": file_md5(params.path(MODEL_FILE)), "fit_seconds": seconds}) + "\n")
    print(f"train: {info['model']} ({info['task']}) on {info['train_rows']} rows in "
          f"{seconds} s, hyper-parameters from {info['hyperparams_source']} -> {MODEL_FILE}")


if __name__ == "__main__":
    main()
