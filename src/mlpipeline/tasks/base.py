"""The interface every task implements, and what the three share.

A task is bound to one schema (its target, classes and features) and, for a binary task, the
decision threshold. The stages, the service and monitoring hold a task and ask it; none of
them asks which task it is. The heavy libraries (scikit-learn, matplotlib, Evidently) are
imported inside the methods that use them: the service and every stage build a task when
they read params.yaml.

Scores are the model's raw output in the task's own layout: one column per class in the
schema's class order (classification), or one value per row (regression). Everything else,
the decision, the metrics, the served answer, is computed from scores.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mlpipeline.schema import Schema

# The model families every task offers (train.model). `logistic_regression` is the name the
# linear family had when only binary classification existed; classification tasks take it.
FAMILIES = ("random_forest", "linear", "hist_gradient_boosting", "xgboost", "lightgbm", "dummy")
# Families from outside scikit-learn (mlpipeline.tasks.boosters: their estimators, the
# defaults they are fitted with, their value checks and ONNX converters).
BOOSTERS = ("xgboost", "lightgbm")
# Families whose inputs are standardised. Trees are left unscaled, which keeps their ONNX
# twin exact: both runtimes compare the same float32 inputs with the same thresholds.
SCALED = {"linear", "logistic_regression"}


class PredictMethodError(ValueError):
    """A scoring method the served model does not have (predict_proba of a regression)."""


@dataclass(frozen=True)
class Answers:
    """One request's answers: `log` holds the prediction log's columns (`prediction` and what
    the task keeps beside it); `records()` what /predict answers per record (built only when
    asked: /invocations answers the bare predictions)."""

    log: dict[str, list[Any]]
    make_records: Callable[[], list[dict[str, Any]]]

    @property
    def predictions(self) -> list[Any]:
        return self.log["prediction"]

    def records(self) -> list[dict[str, Any]]:
        return self.make_records()


class Task(ABC):
    name: ClassVar[str]
    default_metric: ClassVar[str]  # the gate's compare_metric when params.yaml names none
    key_metrics: ClassVar[tuple[str, ...]]  # shown first: `make models`, the service's /model
    # The prediction log's columns that hold the scores, read back by monitoring.
    log_score_columns: ClassVar[tuple[str, ...]]
    # family -> "module:Class" of its scikit-learn estimator
    estimators: ClassVar[dict[str, str]]

    def __init__(self, schema: Schema, threshold: float = 0.5) -> None:
        self.schema = schema
        self.threshold = threshold

    # --- metrics and the gate -------------------------------------------------------------

    @property
    @abstractmethod
    def metric_directions(self) -> dict[str, bool]:
        """Every metric the gate can use -> True when lower is better."""

    @property
    def lower_is_better(self) -> frozenset[str]:
        return frozenset(name for name, lower in self.metric_directions.items() if lower)

    def unknown_metrics(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if name not in self.metric_directions]

    def metric_list(self) -> str:
        return ", ".join(f"{name} ({'lower' if lower else 'higher'} is better)"
                         for name, lower in self.metric_directions.items())

    @abstractmethod
    def metrics(self, actual: pd.Series | np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """The report's and the gate's figures for one set of scores (rounded: stable files)."""

    @property
    def decision(self) -> str:
        """How a prediction is decided from the scores, in words (the service's /model)."""
        return "the likeliest class"

    def headline(self, metrics: dict[str, float]) -> str:
        return ", ".join(f"{name} {metrics[name]:.4f}" for name in self.key_metrics)

    # --- training -------------------------------------------------------------------------

    def estimator(self, family: str, hyperparams: dict[str, Any], seed: int) -> Any:
        """The family's scikit-learn estimator with params.yaml's hyper-parameters; a key or
        value it does not take fails here, naming it and the valid ones. A booster's values
        are not fitted again here (load_params did, for train.hyperparams and tune.space's
        ends): a tiny fit per key would cost each search trial ~0.25 s."""
        problems = self.hyperparam_problems({family: hyperparams},
                                            check_values=family not in BOOSTERS)
        if problems:
            raise ValueError("; ".join(problems))
        cls = self._estimator_class(family)
        hyper = dict(hyperparams)
        if family in BOOSTERS:
            from mlpipeline.tasks.boosters import DEFAULTS

            hyper = {**DEFAULTS[family], **hyper}
        if "random_state" in cls().get_params():
            hyper.setdefault("random_state", seed)
        return cls(**hyper)

    def hyperparam_problems(self, hyperparams: dict[str, dict[str, Any]],
                            where: str = "train.hyperparams",
                            check_values: bool = True) -> list[str]:
        """One line per hyper-parameter (<where>.<family>.<key>) that this task's
        estimator for the family does not take, naming the valid keys or values, as
        scikit-learn's own constraints say; a block for a family the task lacks too.
        `check_values=False`: the keys only."""
        from sklearn.utils._param_validation import InvalidParameterError

        problems = []
        for family, values in hyperparams.items():
            if family not in self.estimators:
                problems.append(f"{where}.{family}: not a model family of task "
                                f"{self.name}: use one of {', '.join(self.estimators)}")
                continue
            cls = self._estimator_class(family)
            valid = sorted(cls().get_params())
            for key, value in (values or {}).items():
                name = f"{where}.{family}.{key}"
                if key not in valid:
                    problems.append(f"{name}: not a parameter of {cls.__name__} (task "
                                    f"{self.name}); valid: {', '.join(valid)}")
                    continue
                if not check_values:
                    continue
                if family in BOOSTERS:  # no constraints to read: a few rows fitted with it
                    from mlpipeline.tasks.boosters import value_problem

                    problem = value_problem(cls, key, value, classifier=self.name != "regression")
                    if problem:
                        problems.append(f"{name}: {problem}")
                    continue
                try:  # one key at a time: each problem is named, not only the first
                    cls(**{key: value})._validate_params()
                except InvalidParameterError as error:
                    problems.append(f"{name}: {error}")
        return problems

    def _estimator_class(self, family: str) -> Any:
        if family not in self.estimators:
            raise ValueError(f"train.model {family!r} is not a model family for task "
                             f"{self.name}: use one of {', '.join(self.estimators)}")
        module, name = self.estimators[family].split(":")
        return getattr(importlib.import_module(module), name)

    @abstractmethod
    def target_summary(self, target: pd.Series) -> dict[str, Any]:
        """What the training split's target looks like, for models/train_info.json."""

    # --- scoring --------------------------------------------------------------------------

    @abstractmethod
    def scores(self, model: Any, features: pd.DataFrame) -> np.ndarray:
        """A scikit-learn model's scores on a table of features."""

    @abstractmethod
    def onnx_options(self, model: Any) -> dict[int, dict[str, Any]]:
        """skl2onnx's converter options for the pipeline's last step."""

    @abstractmethod
    def onnx_scores(self, outputs: list[np.ndarray], model: Any) -> np.ndarray:
        """The scores from an ONNX session's outputs (`model`: the pipeline it was made from,
        for its class order)."""

    @abstractmethod
    def onnx_parity(self, twin: np.ndarray, reference: np.ndarray, actual: pd.Series
                    ) -> tuple[dict[str, Any], str | None]:
        """(figures, None) when the twin may replace scikit-learn, else (figures, why not)."""

    def scorer(self, model: Any, session: Any = None) -> Callable[[dict[str, list[Any]]],
                                                                    np.ndarray]:
        """Scores for validated columns (lists by feature name, None where missing): with
        the ONNX twin when there is one, else with scikit-learn."""
        names = self.schema.feature_names
        if session is None:
            return lambda columns: self.scores(model, pd.DataFrame(columns, columns=names))
        from mlpipeline.onnx_export import onnx_feeder

        # Built once per loaded model, not per request: the feed's column lists, the class
        # order (the request path's share of a one-record request was a tenth here).
        feed, to_scores, run = onnx_feeder(self.schema), self.onnx_scorer(model), session.run
        return lambda columns: to_scores(run(None, feed(columns)))

    def onnx_scorer(self, model: Any) -> Callable[[list[np.ndarray]], np.ndarray]:
        """`onnx_scores` for one model, with what it needs looked up once."""
        return lambda outputs: self.onnx_scores(outputs, model)

    @abstractmethod
    def predictions(self, scores: np.ndarray) -> np.ndarray:
        """The decision: a label per row (the threshold, or the likeliest class) or a value."""

    # --- evaluation reports ---------------------------------------------------------------

    @abstractmethod
    def prediction_table(self, actual: pd.Series, scores: np.ndarray) -> pd.DataFrame:
        """reports/predictions.csv without the time column: `actual`, `predicted`, ..."""

    @abstractmethod
    def plot_tables(self, actual: pd.Series, scores: np.ndarray, bins: int, points: int
                    ) -> dict[str, pd.DataFrame]:
        """Small tables under reports/plots/ (committed to git: thinned)."""

    @abstractmethod
    def dvc_plots(self) -> list[dict[str, Any]]:
        """`dvc plots` definitions over those tables and predictions.csv, with paths relative
        to reports/ (evaluate writes them to reports/dvc.yaml)."""

    @abstractmethod
    def figures(self, plot_tables: dict[str, pd.DataFrame], predictions: pd.DataFrame
                ) -> dict[str, Any]:
        """The same plots as matplotlib figures for the MLflow run, by artefact path."""

    # --- serving --------------------------------------------------------------------------

    @abstractmethod
    def answers(self, scores: np.ndarray) -> Answers:
        """What the service logs and answers for one request's scores."""

    @abstractmethod
    def proba_rows(self, scores: np.ndarray, model: Any) -> list[list[float]]:
        """`predict_proba` as `mlflow models serve` answers it: one row per record, one column
        per class in the model's `classes_` order. Raises PredictMethodError if there is none."""

    @abstractmethod
    def prediction_json_schema(self) -> dict[str, Any]:
        """The JSON schema of one record's answer on /predict (for the OpenAPI document)."""

    @abstractmethod
    def count(self, sink: Any, predictions: list[Any], version: str) -> None:
        """Count served predictions in the service's metrics: `sink.count_labels` (a counter
        per class) or `sink.observe_values` (a histogram)."""

    def value_buckets(self, target: pd.Series) -> list[float]:
        """Bucket bounds for a histogram of predicted values (regression); none otherwise."""
        return []

    # --- monitoring -----------------------------------------------------------------------

    @abstractmethod
    def scores_from_log(self, logged: pd.DataFrame) -> np.ndarray:
        """The scores the service logged (its `log_score_columns`), as `scores` returns them."""

    @abstractmethod
    def behaviour_score(self, scores: np.ndarray) -> np.ndarray:
        """One number per row that the gate's behavioural checks (mlpipeline.behaviour) move:
        a higher value is a higher outcome."""

    @abstractmethod
    def drifting_prediction(self, scores: np.ndarray) -> tuple[pd.Series, bool]:
        """What prediction drift compares: (values, numeric?)."""

    @abstractmethod
    def evidently_performance(self, actual: pd.Series, scores: np.ndarray,
                              floors: dict[str, float]) -> Any:
        """Evidently's own metrics for this task on outcomes and scores, each gate floor an
        Evidently test on its metric (an Evidently Snapshot)."""

    @property
    @abstractmethod
    def evidently_metric_ids(self) -> dict[str, str]:
        """Our metric name -> the Evidently metric that computes it (for the dashboard)."""


# One record's answers without array operations (most requests carry one record).
# np.round(x, 6) scales by 1e6, rounds half to even and scales back, as Python's round() does
# for a finite x whose scaled value is still an exact integer in a float (|x| < 1e9).
ROUNDING_SCALE = 1e6
ROUNDING_LIMIT = 1e9


def one_row(scores: np.ndarray) -> list[float] | None:
    """The scores of a one-record answer as Python floats (one per class, or the value), or
    None where the array path must decide: several records, or a value not finite or past
    ROUNDING_LIMIT."""
    if len(scores) != 1:
        return None
    row = scores[0].tolist()
    row = row if isinstance(row, list) else [row]
    if all(math.isfinite(value) and abs(value) < ROUNDING_LIMIT for value in row):
        return row
    return None


def rounded(value: float) -> float:
    """np.round(value, 6) of one value one_row gave."""
    return round(value * ROUNDING_SCALE) / ROUNDING_SCALE


def round_figures(figures: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in figures.items()}


def thin(table: pd.DataFrame, points: int) -> pd.DataFrame:
    """About `points` rows of a curve, evenly spread along it, first and last kept: a ROC curve
    has a point per distinct score, which at 70,000 test rows is a megabyte in git."""
    if len(table) <= points:
        return table.reset_index(drop=True)
    keep = np.unique(np.linspace(0, len(table) - 1, points).round().astype(int))
    return table.iloc[keep].reset_index(drop=True)


def new_figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(4.5, 4))


def evidently_tests(metric: str, floors: dict[str, float], lower: frozenset[str],
                    scale: float = 1.0) -> list[Any] | None:
    """The gate's floor on `metric` as an Evidently test (lte for lower-is-better metrics);
    `scale` converts our unit to Evidently's (MAPE: a fraction here, percent there)."""
    from evidently.tests import gte, lte

    if metric not in floors:
        return None
    bound = floors[metric] * scale
    return [lte(bound) if metric in lower else gte(bound)]
