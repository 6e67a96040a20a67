"""What binary and multi-class classification share: classifiers, per-class probabilities as
scores (the schema's class order), the likeliest class as the decision, and the answers."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mlpipeline.tasks.base import Task, new_figure

# The ONNX twin's probabilities may differ from scikit-learn's by float32 rounding, no more.
TOLERANCE = 1e-6


class Classification(Task):
    estimators: ClassVar[dict[str, str]] = {
        "random_forest": "sklearn.ensemble:RandomForestClassifier",
        "linear": "sklearn.linear_model:LogisticRegression",  # multinomial for 3+ classes
        "logistic_regression": "sklearn.linear_model:LogisticRegression",
        "hist_gradient_boosting": "sklearn.ensemble:HistGradientBoostingClassifier",
        "xgboost": "mlpipeline.tasks.boosters:XGBLabelledClassifier",
        "lightgbm": "lightgbm:LGBMClassifier",
        "dummy": "sklearn.dummy:DummyClassifier",  # a deliberately useless baseline
    }

    @property
    def classes(self) -> list[Any]:
        return list(self.schema.labels)

    def column_order(self, model: Any) -> list[int]:
        """Where each of the schema's classes is among the model's columns (scikit-learn sorts
        its `classes_`; the schema's order may differ, e.g. [repaid, default])."""
        fitted = list(model.classes_)
        return [fitted.index(label) for label in self.classes]

    def class_index(self, actual: pd.Series | np.ndarray) -> np.ndarray:
        """Each label's position in the schema's classes (1.0 and 1 are the same class)."""
        position = {label: i for i, label in enumerate(self.classes)}
        return np.array([position[label] for label in actual], dtype=int)

    def target_summary(self, target: pd.Series) -> dict[str, Any]:
        shares = target.value_counts(normalize=True)
        return {"train_class_shares": {str(label): round(float(shares.get(label, 0.0)), 6)
                                       for label in self.classes}}

    # --- scoring --------------------------------------------------------------------------

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        return model.predict_proba(features)[:, self.column_order(model)]

    def onnx_options(self, model: Any) -> dict[int, dict[str, Any]]:
        return {id(model.steps[-1][1]): {"zipmap": False}}  # probabilities as one tensor

    def onnx_scores(self, outputs: list[np.ndarray], model: Any) -> np.ndarray:
        return outputs[1][:, self.column_order(model)]  # outputs: labels, probabilities

    def onnx_scorer(self, model: Any) -> Callable[[list[np.ndarray]], np.ndarray]:
        order = self.column_order(model)
        return lambda outputs: outputs[1][:, order]

    def predictions(self, scores: np.ndarray) -> np.ndarray:
        return self.class_array[scores.argmax(axis=1)]

    @functools.cached_property
    def class_array(self) -> np.ndarray:
        return np.asarray(self.classes)

    def onnx_parity(self, twin: np.ndarray, reference: np.ndarray, actual: pd.Series
                    ) -> tuple[dict[str, Any], str | None]:
        """Every class probability within TOLERANCE, and no decision changed."""
        max_diff = float(np.max(np.abs(twin - reference))) if len(reference) else 0.0
        flips = int(np.sum(self.predictions(twin) != self.predictions(reference)))
        figures = {"onnx_max_abs_diff": max_diff, "onnx_label_flips": flips}
        if max_diff > TOLERANCE or flips:
            return figures, (f"differs from scikit-learn: max |dp| {max_diff:.2e}, "
                             f"{flips} labels changed")
        return figures, None

    # --- serving --------------------------------------------------------------------------

    def proba_rows(self, scores: np.ndarray, model: Any) -> list[list[float]]:
        in_model_order = np.empty_like(scores)
        in_model_order[:, self.column_order(model)] = scores
        return np.round(in_model_order.astype(np.float64), 6).tolist()

    def count(self, sink: Any, predictions: list[Any], version: str) -> None:
        sink.count_labels(predictions, version)

    def label_json_schema(self) -> dict[str, Any]:
        return {"enum": self.classes,
                "description": "the predicted class, as the schema's `classes` name it"}

    # --- monitoring -----------------------------------------------------------------------

    def evidently_frame(self, actual: pd.Series, scores: np.ndarray) -> tuple[pd.DataFrame,
                                                                                list[str]]:
        """Outcomes, decisions and one probability column per class (named by the class, as
        text), for Evidently's classification metrics."""
        names = [str(label) for label in self.classes]
        frame = pd.DataFrame({
            "target": np.asarray(self.classes)[self.class_index(actual)].astype(str),
            "prediction": self.predictions(scores).astype(str),
            **{name: scores[:, i].astype(float) for i, name in enumerate(names)}})
        return frame, names

    def confusion_figure(self, predictions: pd.DataFrame) -> Any:
        from sklearn.metrics import ConfusionMatrixDisplay

        fig, ax = new_figure()
        ConfusionMatrixDisplay.from_predictions(predictions["actual"], predictions["predicted"],
                                                labels=self.classes, ax=ax, colorbar=False)
        return fig


def metric_slug(label: Any) -> str:
    """A class name as part of a metric name (MLflow and DVC take letters, digits, _ . -)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(label))
