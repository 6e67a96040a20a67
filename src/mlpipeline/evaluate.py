"""Stage `evaluate`: score the model on the test split, write DVC metrics and plots, and track
the whole run (params, metrics, plots, model, data version, git commit) in MLflow.
"""

from __future__ import annotations

import json
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from mlpipeline.config import (
    METRICS,
    MODEL_FILE,
    PLOTS_DIR,
    PREDICTIONS,
    RUN_INFO,
    TEST_SPLIT,
    TRAIN_INFO,
    TRAIN_SPLIT,
    Params,
    load_params,
)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float
                           ) -> dict[str, float]:
    """The gate's and the report's figures for one set of predictions, rounded for stable files."""
    predicted = (proba >= threshold).astype(int)
    figures = {
        "roc_auc": roc_auc_score(y_true, proba) if len(set(y_true)) > 1 else float("nan"),
        "pr_auc": average_precision_score(y_true, proba),
        "precision": precision_score(y_true, predicted, zero_division=0),
        "recall": recall_score(y_true, predicted, zero_division=0),
        "f1": f1_score(y_true, predicted, zero_division=0),
        "log_loss": log_loss(y_true, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1]),
        "positive_rate": float(np.mean(y_true)),
        "rows": float(len(y_true)),
    }
    return {k: round(float(v), 6) for k, v in figures.items()}


def thin(table: pd.DataFrame, points: int) -> pd.DataFrame:
    """About `points` rows of a curve, evenly spread along it, first and last kept: a ROC curve
    has a point per distinct score, which at 70,000 test rows is a megabyte in git."""
    if len(table) <= points:
        return table.reset_index(drop=True)
    keep = np.unique(np.linspace(0, len(table) - 1, points).round().astype(int))
    return table.iloc[keep].reset_index(drop=True)


def curves(y_true: np.ndarray, proba: np.ndarray, bins: int, points: int
           ) -> dict[str, pd.DataFrame]:
    fpr, tpr, _ = roc_curve(y_true, proba)
    precision, recall, _ = precision_recall_curve(y_true, proba)
    observed, predicted = calibration_curve(y_true, proba, n_bins=bins, strategy="quantile")
    return {
        "roc": thin(pd.DataFrame({"fpr": fpr, "tpr": tpr}), points),
        "pr": thin(pd.DataFrame({"recall": recall, "precision": precision}), points),
        "calibration": pd.DataFrame({"mean_predicted": predicted, "fraction_positive": observed}),
    }


def positive_proba(model: Any, features: pd.DataFrame, positive_class: int | str
                   ) -> np.ndarray:
    classes = list(model.classes_)
    return model.predict_proba(features)[:, classes.index(positive_class)]


def evaluate(model: Any, test: pd.DataFrame, params: Params
             ) -> tuple[dict[str, float], pd.DataFrame, dict[str, pd.DataFrame]]:
    schema, settings = params.schema, params.evaluate
    y_true = (test[schema.target] == schema.positive_class).astype(int).to_numpy()
    proba = positive_proba(model, test[schema.feature_names], schema.positive_class)
    metrics = classification_metrics(y_true, proba, settings.threshold)
    classes = np.array([schema.negative_class, schema.positive_class])  # ints or names
    predictions = pd.DataFrame({  # labels as the schema names them (the confusion matrix)
        schema.time_column: test[schema.time_column],
        "actual": classes[y_true],
        "predicted": classes[(proba >= settings.threshold).astype(int)],
        "probability": proba.round(6),
    })
    return metrics, predictions, curves(y_true, proba, settings.calibration_bins,
                                        settings.curve_points)


def main() -> None:
    params = load_params()
    model = joblib.load(params.path(MODEL_FILE))
    test = pd.read_parquet(params.path(TEST_SPLIT))
    metrics, predictions, plot_tables = evaluate(model, test, params)

    params.path(METRICS).parent.mkdir(parents=True, exist_ok=True)
    params.path(METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    predictions.to_csv(params.path(PREDICTIONS), index=False)
    plots = params.path(PLOTS_DIR)
    plots.mkdir(parents=True, exist_ok=True)
    for name, table in plot_tables.items():
        table.round(6).to_csv(plots / f"{name}.csv", index=False)

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
    print(f"evaluate: roc_auc {metrics['roc_auc']:.4f}, pr_auc {metrics['pr_auc']:.4f}, "
          f"precision {metrics['precision']:.4f}, recall {metrics['recall']:.4f} on "
          f"{len(test)} test rows -> {METRICS}")
    print(f"evaluate: MLflow run {run['run_id']} in experiment {params.mlflow.experiment!r} "
          f"({params.tracking_uri()})")


if __name__ == "__main__":
    main()
