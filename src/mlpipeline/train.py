"""Stage `train`: fit a seeded scikit-learn Pipeline (preprocessing + model) on the train split.

The model type and its hyper-parameters come from `train` in params.yaml. The fitted pipeline
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
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlpipeline.config import MODEL_FILE, TRAIN_INFO, TRAIN_SPLIT, Params, TrainParams, load_params
from mlpipeline.schema import Schema, training_labels

MODELS: dict[str, Any] = {
    "random_forest": RandomForestClassifier,
    "logistic_regression": LogisticRegression,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "dummy": DummyClassifier,  # a deliberately useless baseline, for gate tests and sanity
}


# Models that need standardised inputs. Trees do not, and leaving them unscaled keeps their
# ONNX twin exact: both runtimes compare the same float32 inputs with the same thresholds.
SCALED = {"logistic_regression"}


def build_pipeline(schema: Schema, train: TrainParams) -> Pipeline:
    numeric_steps: list[Any] = [SimpleImputer(strategy="median")]
    if train.model in SCALED:
        numeric_steps.append(StandardScaler())
    numeric = make_pipeline(*numeric_steps)
    # Missing and unknown categories (the latter allowed up to a threshold by `validate`)
    # both encode as all zeros.
    categorical = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    features = ColumnTransformer([
        ("numeric", numeric, schema.numeric),
        ("categorical", categorical, schema.categorical),
    ])
    hyper = train.chosen_hyperparams()
    model_cls = MODELS[train.model]
    if "random_state" in model_cls().get_params():
        hyper.setdefault("random_state", train.seed)
    return Pipeline([("features", features), ("model", model_cls(**hyper))])


def fit(frame: pd.DataFrame, params: Params) -> tuple[Pipeline, dict[str, Any]]:
    schema = params.schema
    pipeline = build_pipeline(schema, params.train)
    started = time.perf_counter()
    pipeline.fit(frame[schema.feature_names], training_labels(frame[schema.target], schema))
    info = {
        "model": params.train.model,
        "hyperparams": params.train.chosen_hyperparams(),
        "train_rows": len(frame),
        "train_positive_rate": round(float((frame[schema.target] == schema.positive_class)
                                           .mean()), 6),
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
    print(f"train: {info['model']} on {info['train_rows']} rows in {info['fit_seconds']} s "
          f"-> {MODEL_FILE}")


if __name__ == "__main__":
    main()
