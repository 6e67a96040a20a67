"""Stage `train`: fit a seeded scikit-learn Pipeline (preprocessing + model) on the train split.

The model family and its hyper-parameters come from `train` in params.yaml, the estimator
for that family from the schema's task (mlpipeline.tasks). The fitted pipeline
takes the raw feature columns (numbers and category strings, missing values allowed), so the
service and monitoring feed it exactly what the schema describes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import joblib
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlpipeline.config import MODEL_FILE, TRAIN_INFO, TRAIN_SPLIT, Params, load_params
from mlpipeline.schema import training_target
from mlpipeline.tasks import Task
from mlpipeline.tasks.base import SCALED


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


def fit(frame: pd.DataFrame, params: Params) -> tuple[Pipeline, dict[str, Any]]:
    schema, task, train = params.schema, params.task, params.train
    try:
        pipeline = build_pipeline(task, train.model, train.chosen_hyperparams(), train.seed)
    except ValueError as error:  # a hyper-parameter the estimator does not take
        raise SystemExit(f"train: {error}") from None
    available = len(frame)
    if train.max_rows is not None and available > train.max_rows:  # the most recent rows
        frame = frame.sort_values(schema.time_column, kind="stable").tail(train.max_rows)
    started = time.perf_counter()
    target = training_target(frame[schema.target], schema)
    pipeline.fit(frame[schema.feature_names], target)
    # train.hyperparams.n_jobs is for fitting; the saved model predicts on one thread, so a
    # served request spawns no pool and a forest's averaged scores are the same bits each run
    estimator = pipeline[-1]
    if "n_jobs" in estimator.get_params():
        estimator.set_params(n_jobs=None)
    info = {
        "model": train.model,
        "task": task.name,
        "hyperparams": train.chosen_hyperparams(),
        "train_rows": len(frame),
        "train_rows_available": available,
        **task.target_summary(target),
        "fit_seconds": round(time.perf_counter() - started, 3),
    }
    return pipeline, info


def main() -> None:
    params = load_params()
    frame = pd.read_parquet(params.path(TRAIN_SPLIT))
    pipeline, info = fit(frame, params)
    params.path(MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, params.path(MODEL_FILE))
    params.path(TRAIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    print(f"train: {info['model']} ({info['task']}) on {info['train_rows']} rows in "
          f"{info['fit_seconds']} s -> {MODEL_FILE}")


if __name__ == "__main__":
    main()
