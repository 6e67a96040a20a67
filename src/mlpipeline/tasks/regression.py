"""Regression: a numeric target (`schema.target`, optionally bounded by `schema.target_min`
and `target_max`).

Metrics: rmse, mae, r2 and mape (a fraction: 0.12 is 12%; rows whose target is 0 have no
percentage error and are skipped, counted in `mape_zero_targets`); plots: predicted against
actual, the residuals, and the mean outcome per decile of the prediction. The service answers
`value` per record and keeps a histogram of the values it predicts.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mlpipeline.tasks.base import (
    Answers,
    PredictMethodError,
    Task,
    evidently_tests,
    new_figure,
    one_row,
    round_figures,
    rounded,
)

METRICS = {"rmse": True, "mae": True, "r2": False, "mape": True}
# The ONNX twin may differ from scikit-learn by this share of the target's spread (its
# standard deviation): float32 arithmetic, far below any error the model makes.
RELATIVE_TOLERANCE = 1e-5


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import (
        mean_absolute_error,
        mean_absolute_percentage_error,
        mean_squared_error,
        r2_score,
    )

    nonzero = actual != 0
    mape = (mean_absolute_percentage_error(actual[nonzero], predicted[nonzero])
            if nonzero.any() else float("nan"))
    return round_figures({
        "rmse": np.sqrt(mean_squared_error(actual, predicted)),
        "mae": mean_absolute_error(actual, predicted),
        "r2": r2_score(actual, predicted) if len(actual) > 1 else float("nan"),
        "mape": mape,
        "mape_zero_targets": float((~nonzero).sum()),  # rows mape skips
        "target_mean": float(np.mean(actual)) if len(actual) else float("nan"),
        "rows": float(len(actual)),
    })


class Regression(Task):
    name = "regression"
    default_metric = "rmse"
    key_metrics: ClassVar[tuple[str, ...]] = ("rmse", "mae", "r2", "mape")
    log_score_columns: ClassVar[tuple[str, ...]] = ("prediction",)
    estimators: ClassVar[dict[str, str]] = {
        "random_forest": "sklearn.ensemble:RandomForestRegressor",
        "linear": "sklearn.linear_model:Ridge",
        "hist_gradient_boosting": "sklearn.ensemble:HistGradientBoostingRegressor",
        "xgboost": "xgboost:XGBRegressor",
        "lightgbm": "lightgbm:LGBMRegressor",
        "dummy": "sklearn.dummy:DummyRegressor",  # predicts the training mean
    }

    @property
    def metric_directions(self) -> dict[str, bool]:
        return METRICS

    @property
    def decision(self) -> str:
        return f"the predicted {self.schema.target}"

    def metrics(self, actual: pd.Series | np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return regression_metrics(np.asarray(actual, dtype=float), scores)

    def target_summary(self, target: pd.Series) -> dict[str, Any]:
        return {"train_target_mean": round(float(target.mean()), 6),
                "train_target_std": round(float(target.std()), 6)}

    # --- scoring --------------------------------------------------------------------------

    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict(features), dtype=float)

    def onnx_options(self, model: Any) -> dict[int, dict[str, Any]]:
        return {}

    def onnx_scores(self, outputs: list[np.ndarray], model: Any) -> np.ndarray:
        return outputs[0].reshape(-1).astype(float)  # (n, 1) values

    def predictions(self, scores: np.ndarray) -> np.ndarray:
        return scores

    def onnx_parity(self, twin: np.ndarray, reference: np.ndarray, actual: pd.Series
                    ) -> tuple[dict[str, Any], str | None]:
        """Every value within RELATIVE_TOLERANCE of the target's standard deviation."""
        scale = float(np.std(np.asarray(actual, dtype=float))) if len(actual) > 1 else 0.0
        tolerance = RELATIVE_TOLERANCE * (scale or 1.0)
        max_diff = float(np.max(np.abs(twin - reference))) if len(reference) else 0.0
        figures = {"onnx_max_abs_diff": max_diff, "onnx_tolerance": tolerance}
        if max_diff > tolerance:
            return figures, (f"differs from scikit-learn: max |dy| {max_diff:.3g} > "
                             f"{tolerance:.3g} ({RELATIVE_TOLERANCE:g} of the target's "
                             "standard deviation)")
        return figures, None

    # --- evaluation reports ---------------------------------------------------------------

    def prediction_table(self, actual: pd.Series, scores: np.ndarray) -> pd.DataFrame:
        actual = np.asarray(actual, dtype=float)
        return pd.DataFrame({"actual": actual, "predicted": scores.round(6),
                             "residual": (actual - scores).round(6)})

    def plot_tables(self, actual: pd.Series, scores: np.ndarray, bins: int, points: int
                    ) -> dict[str, pd.DataFrame]:
        """The mean outcome per quantile bin of the prediction: a calibration plot for
        values (a line along the diagonal when the model is unbiased at every level)."""
        table = pd.DataFrame({"predicted": scores, "actual": np.asarray(actual, dtype=float)})
        bin_of = pd.qcut(table["predicted"].rank(method="first"), q=min(bins, len(table)),
                         labels=False)
        by_bin = table.groupby(bin_of)
        return {"calibration": pd.DataFrame({
            "mean_predicted": by_bin["predicted"].mean().to_numpy(),
            "mean_actual": by_bin["actual"].mean().to_numpy()})}

    def dvc_plots(self) -> list[dict[str, Any]]:
        return [
            {"Predicted vs actual": {"template": "scatter", "x": "actual",
                                     "y": {"predictions.csv": "predicted"}}},
            {"Residuals": {"template": "scatter", "x": "predicted",
                           "y": {"predictions.csv": "residual"}}},
            {"Calibration": {"template": "simple", "x": "mean_predicted",
                             "y": {"plots/calibration.csv": "mean_actual"}}},
        ]

    def figures(self, plot_tables: dict[str, pd.DataFrame], predictions: pd.DataFrame
                ) -> dict[str, Any]:
        sample = predictions.sample(n=min(len(predictions), 5000), random_state=0)
        low, high = sample[["actual", "predicted"]].min().min(), \
            sample[["actual", "predicted"]].max().max()
        scatter, ax = new_figure()
        ax.scatter(sample["actual"], sample["predicted"], s=4, alpha=0.4)
        ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=0.8)
        ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual")
        residuals, ax = new_figure()
        ax.scatter(sample["predicted"], sample["residual"], s=4, alpha=0.4)
        ax.axhline(0, linestyle="--", color="grey", linewidth=0.8)
        ax.set(xlabel="predicted", ylabel="actual - predicted", title="Residuals")
        calibration, ax = new_figure()
        table = plot_tables["calibration"]
        ax.plot(table["mean_predicted"], table["mean_actual"], marker=".")
        ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=0.8)
        ax.set(xlabel="mean predicted", ylabel="mean actual", title="Calibration")
        return {"plots/predicted_vs_actual.png": scatter, "plots/residuals.png": residuals,
                "plots/calibration.png": calibration}

    # --- serving --------------------------------------------------------------------------

    def answers(self, scores: np.ndarray) -> Answers:
        row = one_row(scores)
        values = ([rounded(row[0])] if row is not None
                  else np.round(scores.astype(np.float64), 6).tolist())
        return Answers({"prediction": values}, lambda: [{"value": v} for v in values])

    def proba_rows(self, scores: np.ndarray, model: Any) -> list[list[float]]:
        raise PredictMethodError("params.predict_method 'predict_proba': a regression model "
                                 "predicts values and has no class probabilities; use "
                                 "'predict'")

    def prediction_json_schema(self) -> dict[str, Any]:
        return {"type": "object", "title": "Prediction", "required": ["value"],
                "properties": {"value": {"type": "number",
                                         "description": f"the predicted {self.schema.target}"}}}

    def count(self, sink: Any, predictions: list[Any], version: str) -> None:
        sink.observe_values(predictions, version)

    def value_buckets(self, target: pd.Series) -> list[float]:
        """The training target's deciles (4 significant digits): at training time each
        bucket of the service's histogram holds about a tenth of the predictions."""
        deciles = np.quantile(np.asarray(target, dtype=float), np.linspace(0.1, 0.9, 9))
        return sorted({float(f"{value:.4g}") for value in deciles})

    # --- monitoring -----------------------------------------------------------------------

    def scores_from_log(self, logged: pd.DataFrame) -> np.ndarray:
        return logged["prediction"].to_numpy(dtype=float)

    def behaviour_score(self, scores: np.ndarray) -> np.ndarray:
        return scores  # the predicted value

    def drifting_prediction(self, scores: np.ndarray) -> tuple[pd.Series, bool]:
        return pd.Series(scores, name="prediction"), True

    def evidently_performance(self, actual: pd.Series, scores: np.ndarray,
                              floors: dict[str, float]) -> Any:
        from evidently import DataDefinition, Dataset, Regression, Report
        from evidently.metrics import MAE, MAPE, RMSE, R2Score

        frame = pd.DataFrame({"target": np.asarray(actual, dtype=float), "prediction": scores})
        definition = DataDefinition(regression=[Regression(target="target",
                                                           prediction="prediction")])
        lower = self.lower_is_better
        report = Report([
            RMSE(tests=evidently_tests("rmse", floors, lower)),
            MAE(mean_tests=evidently_tests("mae", floors, lower)),
            R2Score(tests=evidently_tests("r2", floors, lower)),
            # Evidently reports MAPE in percent; rows with a zero target dropped, as here.
            MAPE(mean_tests=evidently_tests("mape", floors, lower, scale=100),
                 zero_handling="drop")])
        with warnings.catch_warnings():  # its error plots score single rows: no R2 there
            warnings.filterwarnings("ignore", message="R\\^2 score is not well-defined")
            return report.run(Dataset.from_pandas(frame, data_definition=definition), None)

    @property
    def evidently_metric_ids(self) -> dict[str, str]:
        return {"rmse": "evidently:metric_v2:RMSE", "mae": "evidently:metric_v2:MAE",
                "r2": "evidently:metric_v2:R2Score", "mape": "evidently:metric_v2:MAPE"}
