"""Multi-class classification: three or more classes (`schema.classes`, in the order the
per-class outputs follow); the decision is the likeliest class.

Metrics: accuracy, f1_macro, f1_weighted, log_loss, roc_auc_ovr (one class against the rest,
averaged over the classes), and precision_<class> and recall_<class> for each class; plots:
the confusion matrix with the class names, precision and recall per class. The service
answers `label` and `probabilities` (one per class) per record.
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
)
from mlpipeline.tasks.classification import Classification, metric_slug


def roc_auc_ovr(index: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over the classes the outcomes hold (a class with no outcome
    has no AUC; NaN when fewer than two classes occur)."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(index)
    if len(present) < 2:
        return float("nan")
    return float(np.mean([roc_auc_score(index == c, proba[:, c]) for c in present]))


class Multiclass(Classification):
    name = "multiclass"
    default_metric = "f1_macro"
    key_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "f1_macro", "log_loss", "roc_auc_ovr")
    log_score_columns: ClassVar[tuple[str, ...]] = ("probabilities",)

    @property
    def metric_directions(self) -> dict[str, bool]:
        per_class = {f"{kind}_{metric_slug(label)}": False
                     for kind in ("precision", "recall") for label in self.classes}
        return {"accuracy": False, "f1_macro": False, "f1_weighted": False, "log_loss": True,
                "roc_auc_ovr": False, **per_class}

    def metrics(self, actual: pd.Series | np.ndarray, scores: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score, log_loss
        from sklearn.metrics import precision_recall_fscore_support as per_class

        index = self.class_index(actual)
        labels = list(range(len(self.classes)))
        predicted = scores.argmax(axis=1)
        # ONNX's float32 probabilities, rounded in the log, may miss a sum of 1 by 1e-6.
        proba = np.clip(scores / scores.sum(axis=1, keepdims=True), 1e-15, 1)
        precision, recall, _, _ = per_class(index, predicted, labels=labels, zero_division=0)
        slugs = [metric_slug(label) for label in self.classes]
        return round_figures({
            "accuracy": accuracy_score(index, predicted),
            "f1_macro": f1_score(index, predicted, labels=labels, average="macro",
                                 zero_division=0),
            "f1_weighted": f1_score(index, predicted, labels=labels, average="weighted",
                                    zero_division=0),
            "log_loss": log_loss(index, proba, labels=labels),
            "roc_auc_ovr": roc_auc_ovr(index, proba),
            **{f"precision_{slug}": p for slug, p in zip(slugs, precision, strict=True)},
            **{f"recall_{slug}": r for slug, r in zip(slugs, recall, strict=True)},
            "rows": float(len(index)),
        })

    # --- evaluation reports ---------------------------------------------------------------

    def prediction_table(self, actual: pd.Series, scores: np.ndarray) -> pd.DataFrame:
        classes = np.asarray(self.classes)
        return pd.DataFrame({"actual": classes[self.class_index(actual)],
                             "predicted": self.predictions(scores),
                             "probability": scores.max(axis=1).round(6)})

    def plot_tables(self, actual: pd.Series, scores: np.ndarray, bins: int, points: int
                    ) -> dict[str, pd.DataFrame]:
        from sklearn.metrics import precision_recall_fscore_support

        labels = list(range(len(self.classes)))
        precision, recall, f1, support = precision_recall_fscore_support(
            self.class_index(actual), scores.argmax(axis=1), labels=labels, zero_division=0)
        return {"per_class": pd.DataFrame({
            "class": [str(label) for label in self.classes], "precision": precision,
            "recall": recall, "f1": f1, "support": support})}

    def dvc_plots(self) -> list[dict[str, Any]]:
        return [
            {"Confusion matrix": {"template": "confusion", "x": "predicted",
                                  "y": {"predictions.csv": "actual"}}},
            {"Recall per class": {"template": "bar_horizontal", "x": "recall",
                                  "y": {"plots/per_class.csv": "class"}}},
            {"Precision per class": {"template": "bar_horizontal", "x": "precision",
                                     "y": {"plots/per_class.csv": "class"}}},
        ]

    def figures(self, plot_tables: dict[str, pd.DataFrame], predictions: pd.DataFrame
                ) -> dict[str, Any]:
        table = plot_tables["per_class"]
        fig, ax = new_figure()
        positions = np.arange(len(table))
        for offset, metric in zip((-0.25, 0, 0.25), ("precision", "recall", "f1"), strict=True):
            ax.barh(positions + offset, table[metric], height=0.25, label=metric)
        ax.set(yticks=positions, yticklabels=table["class"], xlim=(0, 1),
               title="Per class", xlabel="score")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
        fig.tight_layout()
        return {"plots/confusion_matrix.png": self.confusion_figure(predictions),
                "plots/per_class.png": fig}

    # --- serving --------------------------------------------------------------------------

    def answers(self, scores: np.ndarray) -> Answers:
        row = one_row(scores)
        if row is not None:  # the first likeliest class, as argmax picks it
            labels = [self.classes[row.index(max(row))]]
            probabilities = [[rounded(value) for value in row]]
        else:
            labels = self.predictions(scores).tolist()
            probabilities = np.round(scores.astype(np.float64), 6).tolist()
        names = [str(label) for label in self.classes]  # JSON object keys are text
        return Answers({"prediction": labels, "probabilities": probabilities},
                       lambda: [{"label": label, "probabilities": dict(zip(names, row,
                                                                         strict=True))}
                                for label, row in zip(labels, probabilities, strict=True)])

    def prediction_json_schema(self) -> dict[str, Any]:
        names = [str(label) for label in self.classes]
        return {"type": "object", "title": "Prediction", "required": ["label", "probabilities"],
                "properties": {
                    "label": self.label_json_schema(),
                    "probabilities": {
                        "type": "object", "required": names, "additionalProperties": False,
                        "description": "the probability of each class, by class name",
                        "properties": {name: {"type": "number", "minimum": 0, "maximum": 1}
                                       for name in names}}}}

    # --- monitoring -----------------------------------------------------------------------

    def scores_from_log(self, logged: pd.DataFrame) -> np.ndarray:
        rows = logged["probabilities"].to_numpy()
        if not len(rows):
            return np.empty((0, len(self.classes)))
        return np.stack([np.asarray(row, dtype=float) for row in rows])

    def behaviour_score(self, scores: np.ndarray) -> np.ndarray:
        # The expected class, the schema's class order read as a scale (grades A < B < C):
        # moving a feature toward a worse grade raises it.
        return scores @ np.arange(scores.shape[1], dtype=float)

    def drifting_prediction(self, scores: np.ndarray) -> tuple[pd.Series, bool]:
        return pd.Series(self.predictions(scores).astype(str), name="prediction"), False

    def evidently_performance(self, actual: pd.Series, scores: np.ndarray,
                              floors: dict[str, float]) -> Any:
        from evidently import DataDefinition, Dataset, MulticlassClassification, Report
        from evidently.metrics import Accuracy, F1Score, LogLoss, RocAuc

        frame, names = self.evidently_frame(actual, scores)
        definition = DataDefinition(classification=[MulticlassClassification(
            target="target", prediction_labels="prediction", prediction_probas=names)])
        lower = self.lower_is_better
        report = Report([Accuracy(tests=evidently_tests("accuracy", floors, lower)),
                         F1Score(tests=evidently_tests("f1_macro", floors, lower)),
                         LogLoss(tests=evidently_tests("log_loss", floors, lower)),
                         RocAuc(tests=evidently_tests("roc_auc_ovr", floors, lower))])
        return report.run(Dataset.from_pandas(frame, data_definition=definition), None)

    @property
    def evidently_metric_ids(self) -> dict[str, str]:
        return {"accuracy": "evidently:metric_v2:Accuracy",
                "f1_macro": "evidently:metric_v2:F1Score",
                "log_loss": "evidently:metric_v2:LogLoss",
                "roc_auc_ovr": "evidently:metric_v2:RocAuc"}
