"""The synthetic source: seeded, stable batch by batch, realistic, and drifting on request."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpipeline.config import SourceParams
from mlpipeline.loans import make_batch
from mlpipeline.source import breast_cancer_batches, drift_levels, synthetic_batch

SOURCE = SourceParams(batch_rows=3000, n_batches=20)


def test_batches_are_seeded_and_independent_of_how_many_exist() -> None:
    a = synthetic_batch(SOURCE, 3)
    b = synthetic_batch(SourceParams(batch_rows=3000, n_batches=4), 3)
    pd.testing.assert_frame_equal(a, b)
    assert not synthetic_batch(SOURCE, 4)["annual_income"].equals(a["annual_income"])


def test_batch_is_realistic() -> None:
    batch = synthetic_batch(SOURCE, 0)
    assert 0.08 < batch["default"].mean() < 0.25  # imbalanced
    assert batch["credit_score"].isna().mean() > 0.01  # missing values
    assert batch["employment_years"].isna().mean() > 0.02
    dates = batch["application_date"]
    assert dates.is_monotonic_increasing
    assert dates.min() >= pd.Timestamp(SOURCE.start_date)
    assert dates.max() < pd.Timestamp(SOURCE.start_date) + pd.Timedelta(days=7)


def test_drift_scenario_switches_on_at_its_batch() -> None:
    source = SourceParams.model_validate({**SOURCE.model_dump(), "drift": {
        "covariate_from_batch": 5, "concept_from_batch": 7, "strength": 1.0}})
    assert drift_levels(source, 4) == (0.0, 0.0)
    assert drift_levels(source, 5) == (1.0, 0.0)
    assert drift_levels(source, 7) == (1.0, 1.0)


def test_covariate_drift_moves_feature_distributions() -> None:
    kw = {"seed": 7, "start_date": SOURCE.start_date, "batch_days": 7, "rows": 3000}
    before, after = make_batch(9, **kw), make_batch(9, covariate=1.0, **kw)
    assert after["annual_income"].median() < 0.8 * before["annual_income"].median()
    assert after["credit_score"].mean() < before["credit_score"].mean() - 30
    assert (after["purpose"] == "small_business").mean() > 2 * (
        before["purpose"] == "small_business").mean()


def test_concept_drift_changes_the_label_given_the_features() -> None:
    kw = {"seed": 7, "start_date": SOURCE.start_date, "batch_days": 7, "rows": 6000}
    before, after = make_batch(9, **kw), make_batch(9, concept=1.0, **kw)
    # Same applicants (features drawn identically), different outcomes.
    pd.testing.assert_series_equal(before["annual_income"], after["annual_income"])
    south = before["region"] == "south"
    lift_before = before.loc[south, "default"].mean() - before.loc[~south, "default"].mean()
    lift_after = after.loc[south, "default"].mean() - after.loc[~south, "default"].mean()
    assert abs(lift_before) < 0.05 < lift_after


def test_breast_cancer_batches_cut_by_row_order() -> None:
    source = SourceParams(kind="breast_cancer", batch_rows=100, n_batches=10)
    batches = breast_cancer_batches(source)
    assert [len(b) for b in batches] == [100, 100, 100, 100, 100, 69]
    assert list(batches[1].index[:1]) == [100]
    assert all(" " not in c for c in batches[0].columns)
    assert np.issubdtype(batches[0]["observed_at"].dtype, np.datetime64)
