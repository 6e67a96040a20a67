"""Each stage's function on small data, in process: fast checks of what the stages decide."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline

from mlpipeline.config import Params, TrainParams, load_params
from mlpipeline.evaluate import evaluate
from mlpipeline.loans import make_batch
from mlpipeline.prepare import reference_sample, time_split
from mlpipeline.schema import coerce
from mlpipeline.source import dated_batches
from mlpipeline.tasks import FAMILIES
from mlpipeline.tasks.binary import classification_metrics, curves
from mlpipeline.train import build_pipeline, fit
from tests.conftest import REPO

PARAMS: Params = load_params(REPO)


def default_pipeline() -> Any:
    train = PARAMS.train
    return build_pipeline(PARAMS.task, train.model, train.chosen_hyperparams(), train.seed)


class DummyClassifierForOnnx(DummyClassifier):
    """A classifier skl2onnx has no converter for (a subclass it does not know)."""


@pytest.fixture(scope="module")
def typed() -> pd.DataFrame:
    frames = [make_batch(i, seed=3, start_date=dt.date(2026, 1, 5), batch_days=7, rows=800)
              for i in range(3)]
    return coerce(pd.concat(frames, ignore_index=True), PARAMS.schema)


def test_batches_are_dated_by_name_oldest_first(tmp_path: Path) -> None:
    for name in ["2026-01-12.csv", "2026-01-05.csv", "2026-01-19.parquet", "notes.txt"]:
        (tmp_path / name).write_text("x\n1\n")
    assert [(d.isoformat(), p.name) for d, p in dated_batches(tmp_path)] == [
        ("2026-01-05", "2026-01-05.csv"), ("2026-01-12", "2026-01-12.csv"),
        ("2026-01-19", "2026-01-19.parquet")]


def test_ingest_refuses_an_undated_batch(tmp_path: Path) -> None:
    (tmp_path / "latest.csv").write_text("x\n1\n")
    with pytest.raises(SystemExit, match=r"cannot date latest\.csv"):
        dated_batches(tmp_path)


def test_time_split_has_no_leakage_from_the_future(typed: pd.DataFrame) -> None:
    shuffled = typed.sample(frac=1.0, random_state=0)
    train, test = time_split(shuffled, "application_date", 0.25)
    assert train["application_date"].max() < test["application_date"].min()
    assert len(train) + len(test) == len(typed)
    assert abs(len(test) / len(typed) - 0.25) < 0.01


def test_reference_sample_is_seeded_and_bounded(typed: pd.DataFrame) -> None:
    tagged = typed.assign(_batch="2026-01-05.csv", _row=range(1, len(typed) + 1))
    a, b = reference_sample(tagged, 500, seed=1), reference_sample(tagged, 500, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 500 and a["_row"].is_monotonic_increasing  # in the split's order
    # The draw is by each row's file and row, not its place: the same rows in any order.
    shuffled = reference_sample(tagged.sample(frac=1.0, random_state=0), 500, seed=1)
    assert set(shuffled["_row"]) == set(a["_row"])
    assert set(reference_sample(tagged, 500, seed=2)["_row"]) != set(a["_row"])
    assert len(reference_sample(tagged, 10_000, seed=1)) == len(typed)


@pytest.mark.parametrize("model", [*FAMILIES, "logistic_regression"])
def test_every_model_type_trains_on_raw_features_with_nulls(typed: pd.DataFrame, model: str
                                                             ) -> None:
    params = PARAMS.model_copy(update={"train": TrainParams(
        model=model, seed=1, hyperparams=PARAMS.train.hyperparams)})
    pipeline, info = fit(typed, params)
    sample = typed[PARAMS.schema.feature_names].head(20).copy()
    sample.loc[0, "region"] = "atlantis"  # unknown category: encoded as zeros, no error
    proba = pipeline.predict_proba(sample)
    assert proba.shape == (20, 2)
    assert info["train_rows"] == len(typed) and info["model"] == model


def test_training_is_seeded(typed: pd.DataFrame) -> None:
    assert PARAMS.train.chosen_hyperparams().get("n_jobs") == -1  # fitted on every core
    (a, _), (b, _) = fit(typed, PARAMS), fit(typed, PARAMS)
    X = typed[PARAMS.schema.feature_names]
    # bit for bit: the saved model scores on one thread, so no summation order varies
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a[-1].get_params()["n_jobs"] is None


def test_metrics_on_known_predictions() -> None:
    y = np.array([0, 0, 1, 1])
    perfect = classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), 0.5)
    assert perfect["roc_auc"] == 1.0 and perfect["precision"] == 1.0
    assert perfect["recall"] == 1.0 and perfect["log_loss"] < 0.25
    inverted = classification_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    assert inverted["roc_auc"] == 0.0 and inverted["precision"] == 0.0
    assert (perfect["accuracy"], inverted["accuracy"]) == (1.0, 0.0)
    assert set(perfect) == {"roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1",
                            "log_loss", "positive_rate", "rows"}


def test_evaluate_produces_metrics_predictions_and_curves(typed: pd.DataFrame) -> None:
    train, test = time_split(typed, "application_date", 0.3)
    pipeline, _ = fit(train, PARAMS)
    metrics, predictions, tables = evaluate(pipeline, test, PARAMS)
    assert 0.6 < metrics["roc_auc"] <= 1.0
    assert len(predictions) == len(test) == metrics["rows"]
    assert set(predictions["predicted"]) <= {0, 1}
    assert set(tables) == {"roc", "pr", "calibration"}
    roc = tables["roc"]
    assert roc["fpr"].is_monotonic_increasing and roc["tpr"].iloc[-1] == 1.0


@pytest.mark.parametrize("model", ["random_forest", "logistic_regression"])
def test_onnx_twin_is_verified_against_sklearn(typed: pd.DataFrame, model: str) -> None:
    from mlpipeline.onnx_export import export, frame_records, onnx_inputs, session

    train, test = time_split(typed, "application_date", 0.3)
    params = PARAMS.model_copy(update={"train": TrainParams(
        model=model, seed=1, hyperparams=PARAMS.train.hyperparams)})
    pipeline, _ = fit(train, params)
    onnx_bytes, figures = export(pipeline, PARAMS.task, test)
    assert figures["onnx"] == "verified" and onnx_bytes is not None
    assert figures["onnx_checked_rows"] == len(test) and figures["onnx_label_flips"] == 0
    # Missing values and unknown categories go through the twin as through sklearn.
    rows = frame_records(test.head(3), PARAMS.schema)
    rows[0]["credit_score"], rows[1]["region"] = None, "atlantis"
    twin = session(onnx_bytes).run(None, onnx_inputs(rows, PARAMS.schema))[1][:, 1]
    frame = pd.DataFrame(rows, columns=PARAMS.schema.feature_names)
    np.testing.assert_allclose(twin, pipeline.predict_proba(frame)[:, 1], atol=1e-6)


def test_onnx_twin_that_drifts_from_sklearn_is_not_shipped(typed: pd.DataFrame) -> None:
    """Scaling in float32 before tree thresholds shifts a few probabilities: refused."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from mlpipeline.onnx_export import export

    schema = PARAMS.schema
    pipeline = Pipeline([
        ("features", ColumnTransformer([
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
             schema.numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
             schema.categorical)])),
        ("model", RandomForestClassifier(n_estimators=50, max_depth=12, random_state=0)),
    ]).fit(typed[schema.feature_names], typed["default"])
    onnx_bytes, figures = export(pipeline, PARAMS.task, typed)
    assert onnx_bytes is None and figures["onnx"] == "rejected"
    assert figures["onnx_max_abs_diff"] > 1e-6


def test_coarse_batches_split_by_whole_batches_and_say_so(typed: pd.DataFrame) -> None:
    from mlpipeline.config import PrepareParams
    from mlpipeline.prepare import describe_split, split

    # Three batches whose rows all carry their batch's date (a yearly feed looks like this).
    coarse = typed.assign(application_date=typed["application_date"].dt.normalize()
                          .groupby(typed.index // 800).transform("min"),
                          _batch=[f"2026-01-{5 + 7 * (i // 800):02d}.csv"
                                  for i in range(len(typed))])
    time_cut = PrepareParams(test_fraction=0.2)
    train, test = split(coarse, "application_date", time_cut)
    def described(settings: PrepareParams) -> list[str]:
        return describe_split(len(train), len(test), train["application_date"].max(),
                              test["application_date"].min(), settings)

    lines = described(time_cut)
    assert len(test) == 800 and "test 800 rows (33.3%" in lines[0]
    assert "set prepare.test_batches" in lines[1]  # 33% is not the 20% asked for
    by_batch = PrepareParams(test_batches=1)
    train, test = split(coarse, "application_date", by_batch)
    assert set(test["_batch"]) == {"2026-01-19.csv"} and len(train) == 1600
    assert described(by_batch)[0].endswith(
        "last 1 batch(es)")
    with pytest.raises(SystemExit, match="holds 3 batches"):
        split(coarse, "application_date", PrepareParams(test_batches=3))


def test_plot_curves_are_thinned_whatever_the_test_size() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 70_000)
    proba = np.clip(y * 0.3 + rng.random(70_000) * 0.7, 0, 1)
    tables = curves(y, proba, bins=10, points=200)
    for name in ("roc", "pr"):
        assert 150 <= len(tables[name]) <= 200, name
    roc = tables["roc"]
    assert (roc["fpr"].iloc[0], roc["tpr"].iloc[-1]) == (0.0, 1.0)  # both ends kept


def test_hist_gradient_boosting_gets_a_verified_onnx_twin(typed: pd.DataFrame) -> None:
    from mlpipeline.onnx_export import export

    train, test = time_split(typed, "application_date", 0.3)
    params = PARAMS.model_copy(update={"train": TrainParams(
        model="hist_gradient_boosting", seed=1, hyperparams=PARAMS.train.hyperparams)})
    pipeline, _ = fit(train, params)
    onnx_bytes, figures = export(pipeline, PARAMS.task, test)
    assert figures["onnx"] == "verified", figures.get("onnx_reason")
    assert onnx_bytes is not None


def test_failed_onnx_conversion_is_one_short_line(typed: pd.DataFrame) -> None:
    from mlpipeline.onnx_export import REASON_CHARS, export

    class Unconvertible(DummyClassifierForOnnx):
        pass

    pipeline = default_pipeline().fit(typed[PARAMS.schema.feature_names], typed["default"])
    pipeline.steps[-1] = ("model", Unconvertible().fit(typed[PARAMS.schema.numeric],
                                                       typed["default"]))
    onnx_bytes, figures = export(pipeline, PARAMS.task, typed)
    assert onnx_bytes is None and figures["onnx"] == "unavailable"
    assert "\n" not in figures["onnx_reason"]
    assert len(figures["onnx_reason"]) <= REASON_CHARS + 40
    assert figures["onnx_error_text"].startswith(figures["onnx_reason"].split(":")[0])


def test_train_max_rows_trains_on_the_newest_rows(typed: pd.DataFrame) -> None:
    params = PARAMS.model_copy(update={"train": PARAMS.train.model_copy(
        update={"max_rows": 500})})
    shuffled = typed.sample(frac=1.0, random_state=0)
    pipeline, info = fit(shuffled, params)
    assert (info["train_rows"], info["train_rows_available"]) == (500, len(typed))
    newest = typed.sort_values("application_date").tail(500)
    again, _ = fit(newest, PARAMS)  # the same rows, whatever their order: the same model
    X = typed[PARAMS.schema.feature_names].head(50)
    np.testing.assert_allclose(pipeline.predict_proba(X), again.predict_proba(X))
