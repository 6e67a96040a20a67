"""Binary classification: two classes, the last one positive, decided at a threshold
(`evaluate.threshold`, carried by each model's contract).

Metrics: roc_auc, pr_auc, accuracy, precision, recall, f1, log_loss (and positive_rate,
rows); plots:
ROC and precision-recall curves, calibration, the confusion matrix. The service answers
`label` and `probability` (of the positive class) per record.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mlpipeline.tasks.base import (
    Answers,
    evidently_tests,
    new_figure,
    one_row,
    round_figures,
    rounded,
    thin,
)
from mlpipeline.tasks.classification import Classification

METRICS = {"roc_auc": False, "pr_auc": False, "accuracy": False, "precision": False,
           "recall": False, "f1": False, "log_loss": True}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float
                           ) -> dict[str, float]:
    """The figures for 0/1 outcomes and positive-class probabilities."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = (proba >= threshold).astype(int)
    return round_figures({
        "roc_auc": roc_auc_score(y_true, proba) if len(set(y_true)) > 1 else float("nan"),
        "pr_auc": average_precision_score(y_true, proba),
        "accuracy": accuracy_score(y_true, predicted),
        "precision": precision_score(y_true, predicted, zero_division=0),
        "recall": recall_score(y_true, predicted, zero_division=0),
        "f1": f1_score(y_true, predicted, zero_division=0),
        "log_loss": log_loss(y_true, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1]),
        "positive_rate": float(np.mean(y_true)),
        "rows": float(len(y_true)),
    })


def curves(y_true: np.ndarray, proba: np.ndarray, bins: int, points: int
           ) -> dict[str, pd.DataFrame]:
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y_true, proba)
    precision, recall, _ = precision_recall_curve(y_true, proba)
    observed, predicted = calibration_curve(y_true, proba, n_bins=bins, strategy="quantile")
    return {
        "roc": thin(pd.DataFrame({"fpr": fpr, "tpr": tpr}), points),
        "pr": thin(pd.DataFrame({"recall": recall, "precision": precision}), points),
        "calibration": pd.DataFrame({"mean_predicted": predicted, "fraction_positive": observed}),
    }


class Binary(Classification):
    name = "binary"
    default_metric = "roc_auc"
    key_metrics: ClassVar[tuple[str, ...]] = ("roc_auc", "pr_auc", "precision", "recall")
    log_score_columns: ClassVar[tuple[str, ...]] = ("probability",)

    @property
    def metric_directions(self) -> dict[str, bool]:
        return METRICS

    @property
    def decision(self) -> str:
        return (f"{self.schema.positive_class!r} when its probability is at least "
                f"{self.threshold:g}, else {self.schema.negative_class!r}")

    def positives(self, actual: pd.Series | np.ndarray) -> np.ndarray:
        """The outcomes as 0/1, 1 for the positive class (the schema's last)."""
        return (self.class_index(actual) == 1).astype(int)

    def metrics(self, actual: pd.Series | np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return classification_metrics(self.positives(actual), scores[:, 1], self.threshold)

    def target_summary(self, target: pd.Series) -> dict[str, Any]:
        return {"train_positive_rate": round(float(self.positives(target).mean()), 6)}

    def predictions(self, scores: np.ndarray) -> np.ndarray:
        return self.class_array[(scores[:, 1] >= self.threshold).astype(int)]

    # --- evaluation reports ---------------------------------------------------------------

    def prediction_table(self, actual: pd.Series, scores: np.ndarray) -> pd.DataFrame:
        classes = np.asarray(self.classes)  # ints or names
        return pd.DataFrame({"actual": classes[self.class_index(actual)],
                             "predicted": self.predictions(scores),
                             "probability": scores[:, 1].round(6)})

    def plot_tables(self, actual: pd.Series, scores: np.ndarray, bins: int, points: int
                    ) -> dict[str, pd.DataFrame]:
        return curves(self.positives(actual), scores[:, 1], bins, points)

    def dvc_plots(self) -> list[dict[str, Any]]:
        return [
            {"ROC": {"template": "simple", "x": "fpr", "y": {"plots/roc.csv": "tpr"}}},
            {"Precision-Recall": {"template": "simple", "x": "recall",
                                  "y": {"plots/pr.csv": "precision"}}},
            {"Calibration": {"template": "simple", "x": "mean_predicted",
                             "y": {"plots/calibration.csv": "fraction_positive"}}},
            {"Confusion matrix": {"template": "confusion", "x": "predicted",
                                  "y": {"predictions.csv": "actual"}}},
        ]

    def figures(self, plot_tables: dict[str, pd.DataFrame], predictions: pd.DataFrame
                ) -> dict[str, Any]:
        figures = {}
        specs = {"roc": ("fpr", "tpr", "ROC curve"),
                 "pr": ("recall", "precision", "Precision-recall curve"),
                 "calibration": ("mean_predicted", "fraction_positive", "Calibration")}
        for name, (x, y, title) in specs.items():
            fig, ax = new_figure()
            table = plot_tables[name]
            ax.plot(table[x], table[y], marker="." if name == "calibration" else None)
            if name != "pr":
                ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
            ax.set(xlabel=x, ylabel=y, title=title)
            figures[f"plots/{name}.png"] = fig
        figures["plots/confusion_matrix.png"] = self.confusion_figure(predictions)
        return figures

    # --- serving --------------------------------------------------------------------------

    def answers(self, scores: np.ndarray) -> Answers:
        row = one_row(scores)
        if row is not None:  # compared at the scores' precision, as the array path does
            positive = row[1] >= float(scores.dtype.type(self.threshold))
            labels, probabilities = [self.classes[int(positive)]], [rounded(row[1])]
        else:
            labels = self.predictions(scores).tolist()
            probabilities = scores[:, 1].astype(np.float64).round(6).tolist()
        return Answers({"prediction": labels, "probability": probabilities},
                       lambda: [{"label": label, "probability": p}
                                for label, p in zip(labels, probabilities, strict=True)])

    def prediction_json_schema(self) -> dict[str, Any]:
        return {"type": "object", "title": "Prediction", "required": ["label", "probability"],
                "properties": {
                    "label": self.label_json_schema(),
                    "probability": {"type": "number", "minimum": 0, "maximum": 1,
                                    "description": "probability of the positive class, "
                                                   f"{self.schema.positive_class!r}"}}}

    # --- monitoring -----------------------------------------------------------------------

    def scores_from_log(self, logged: pd.DataFrame) -> np.ndarray:
        positive = logged["probability"].to_numpy(dtype=float)
        return np.column_stack([1 - positive, positive])

    def behaviour_score(self, scores: np.ndarray) -> np.ndarray:
        return scores[:, 1]  # the positive class's probability

    def drifting_prediction(self, scores: np.ndarray) -> tuple[pd.Series, bool]:
        return pd.Series(scores[:, 1], name="prediction"), True

    def evidently_performance(self, actual: pd.Series, scores: np.ndarray,
                              floors: dict[str, float]) -> Any:
        from evidently import BinaryClassification, DataDefinition, Dataset, Report
        from evidently.metrics import Precision, Recall, RocAuc

        frame = pd.DataFrame({"actual": self.positives(actual),
                              "probability": scores[:, 1].astype(float),
                              "predicted": (scores[:, 1] >= self.threshold).astype(int)})
        definition = DataDefinition(classification=[BinaryClassification(
            target="actual", prediction_labels="predicted", prediction_probas="probability",
            pos_label=1)])
        lower = self.lower_is_better
        report = Report([RocAuc(tests=evidently_tests("roc_auc", floors, lower)),
                         Precision(tests=evidently_tests("precision", floors, lower)),
                         Recall(tests=evidently_tests("recall", floors, lower))])
        return report.run(Dataset.from_pandas(frame, data_definition=definition), None)

    @property
    def evidently_metric_ids(self) -> dict[str, str]:
        return {"roc_auc": "evidently:metric_v2:RocAuc",
                "precision": "evidently:metric_v2:Precision",
                "recall": "evidently:metric_v2:Recall"}
