"""The gate's verdict and the promotion history as plain functions: no MLflow, no files."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd
import pytest

from mlpipeline.behaviour import directional, invariance
from mlpipeline.config import GateParams, load_params
from mlpipeline.gate import (
    Comparison,
    champion_seen_until,
    compare_slices,
    format_table,
    slice_labels,
    unseen_rows,
)
from mlpipeline.gate import decide as gate_decide
from mlpipeline.registry import Promotion, champion_at
from tests.conftest import REPO

# The binary task's metric directions (log_loss: lower is better).
decide = partial(gate_decide, lower_is_better=load_params(REPO).task.lower_is_better)

GATE = GateParams(min_metrics={"roc_auc": 0.7, "precision": 0.3}, compare_metric="roc_auc",
                  tolerance=0.01)
GOOD = {"roc_auc": 0.80, "precision": 0.40, "log_loss": 0.40}


def test_first_model_clearing_the_floors_is_promoted() -> None:
    verdict = decide(GOOD, None, GATE)
    assert verdict.promote and "first model" in verdict.reason
    assert [c.name for c in verdict.checks] == ["roc_auc >= floor", "precision >= floor"]


def test_model_below_a_floor_is_never_promoted() -> None:
    verdict = decide({**GOOD, "precision": 0.25}, None, GATE)
    assert not verdict.promote
    assert "precision >= floor: 0.2500 vs 0.3000" in verdict.reason


def test_better_or_within_tolerance_is_promoted_regression_is_not() -> None:
    champion = {"roc_auc": 0.805, "precision": 0.41}
    assert decide(GOOD, champion, GATE, champion_version="4").promote  # 0.80 >= 0.795
    worse = decide({**GOOD, "roc_auc": 0.79}, champion, GATE, champion_version="4")
    assert not worse.promote
    assert "roc_auc vs champion v4: 0.7900 vs 0.7950" in worse.reason


def test_lower_is_better_metrics() -> None:
    gate = GateParams(min_metrics={"log_loss": 0.5}, compare_metric="log_loss", tolerance=0.0)
    assert decide(GOOD, {"log_loss": 0.45}, gate, champion_version="1").promote
    verdict = decide(GOOD, {"log_loss": 0.35}, gate, champion_version="1")
    assert not verdict.promote and verdict.checks[0].name == "log_loss <= floor"


def test_the_champion_itself_is_not_promoted_again() -> None:
    verdict = decide(GOOD, GOOD, GATE, champion_version="2", same_model_as_champion=True)
    assert not verdict.promote and "same trained model" in verdict.reason


def test_unscorable_champion_blocks_automatic_promotion() -> None:
    verdict = decide(GOOD, None, GATE, champion_version="2", champion_error="KeyError: 'age'")
    assert not verdict.promote and "could not be scored" in verdict.reason


def test_the_champion_is_compared_only_on_test_rows_after_its_training() -> None:
    """A champion scored on rows it trained on looks better than it is: the comparison uses
    the later rows, both models' figures on them, and says which rows they were."""
    times = pd.Series(pd.to_datetime(["2026-02-17 00:00", "2026-02-18 20:00", "2026-02-19 00:00",
                                      "2026-02-20 00:00"]))
    seen, source = champion_seen_until({"trained_until": "2026-02-18T20:00:00"}, 7)
    assert unseen_rows(times, seen).tolist() == [False, False, True, True]
    # In the UTC times of a feed that sends "Z", the same instant.
    assert unseen_rows(times.dt.tz_localize("UTC"), seen).tolist() == [False, False, True, True]
    # A version registered before `trained_until`: its window's last batch (+ its days).
    window, how = champion_seen_until({"training_window": "2026-01-05..2026-02-11"}, 7)
    assert unseen_rows(times, window).tolist() == [False, True, True, True]
    assert "training window" in how
    assert champion_seen_until({}, 7)[0] is None

    later = Comparison(2, 4, "2026-02-18T20:00:00", source, {**GOOD, "roc_auc": 0.70})
    verdict = decide(GOOD, {"roc_auc": 0.75}, GATE, champion_version="2", comparison=later)
    assert not verdict.promote  # 0.70 on those rows, not the 0.80 of the whole split
    assert ("roc_auc vs champion v2: 0.7000 vs 0.7400 (champion 0.7500 on the same 2 of 4 "
            "test rows, those after its training (to 2026-02-18T20:00:00)") in verdict.reason


def test_no_test_row_after_the_champions_training_means_no_automatic_promotion() -> None:
    none_left = Comparison(0, 2400, "2026-02-18T20:26:15", "its trained_until tag", {})
    verdict = decide(GOOD, None, GATE, champion_version="2", comparison=none_left)
    assert not verdict.promote
    assert verdict.reason.startswith("kept champion v2: none of the 2400 test rows is newer "
                                     "than its training (to 2026-02-18T20:26:15")
    assert "not promoted automatically" in verdict.reason
    assert [c.name for c in verdict.checks] == ["roc_auc >= floor", "precision >= floor"]
    # A floor broken says so first: that is the verdict whatever the champion.
    below = decide({**GOOD, "precision": 0.1}, None, GATE, champion_version="2",
                   comparison=none_left)
    assert below.reason.startswith("rejected: precision >= floor")


def test_table_lists_every_check() -> None:
    table = format_table(decide({**GOOD, "precision": 0.1}, None, GATE))
    assert "precision >= floor" in table and "FAIL" in table and "pass" in table


def test_champion_at_a_time_follows_the_history() -> None:
    history = [Promotion("2026-01-01T00:00:00+00:00", None, "1", "gate pass"),
               Promotion("2026-02-01T00:00:00+00:00", "1", "3", "gate pass"),
               Promotion("2026-02-03T12:00:00+00:00", "3", "1", "rollback")]
    at = dt.datetime.fromisoformat
    assert champion_at(history, at("2025-12-31T00:00:00+00:00")) is None
    assert champion_at(history, at("2026-01-15T00:00:00+00:00")) == "1"
    assert champion_at(history, at("2026-02-02T00:00:00+00:00")) == "3"
    assert champion_at(history, at("2026-03-01T00:00:00+00:00")) == "1"
    assert Promotion.from_tag(history[1].as_tag()) == history[1]



# --- slices (gate.slices) ----------------------------------------------------------------

def slice_case(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """2,000 test rows, 150 of them in region west; the champion scores well everywhere, the
    challenger as well except in the west, where its scores are noise."""
    rng = np.random.default_rng(seed)
    rows = 2000
    test = pd.DataFrame({
        "region": np.where(np.arange(rows) < 150, "west",
                           rng.choice(["north", "south", "east"], rows)),
        "credit_score": rng.normal(680, 60, rows).round(),
    })
    actual = rng.integers(0, 2, rows)
    champion = np.clip(0.5 * actual + rng.normal(0.25, 0.2, rows), 0, 1)
    challenger = champion.copy()
    west = (test["region"] == "west").to_numpy()
    challenger[west] = rng.uniform(0, 1, west.sum())
    return test, actual, champion, challenger


def roc_auc_on(actual: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    from sklearn.metrics import roc_auc_score

    return lambda mask: roc_auc_score(actual[mask], scores[mask])


def test_a_challenger_within_the_overall_tolerance_but_worse_on_one_slice_is_rejected() -> None:
    from sklearn.metrics import roc_auc_score

    test, actual, champion, challenger = slice_case()
    overall = {"roc_auc": roc_auc_score(actual, challenger), "precision": 0.4}
    at_champion = {"roc_auc": roc_auc_score(actual, champion), "precision": 0.4}
    gate = GATE.model_copy(update={"tolerance": 0.05, "slices": ["region", "credit_score"],
                                   "slice_tolerance": 0.05})
    assert decide(overall, at_champion, gate, champion_version="3").promote  # the average holds

    labels = slice_labels(test, gate.slices, {"credit_score"}, gate.slice_bins)
    slices = compare_slices(labels, roc_auc_on(actual, challenger),
                            roc_auc_on(actual, champion), lower_is_better=False,
                            min_rows=gate.slice_min_rows, tolerance=gate.slice_tolerance)
    verdict = decide(overall, at_champion, gate, champion_version="3", slices=slices)
    assert not verdict.promote
    (west,) = [s for s in slices if s.passed is False]
    assert (west.name, west.rows) == ("region=west", 150)
    assert west.challenger < 0.6 < 0.9 < west.champion
    assert (f"roc_auc on region=west: {west.challenger:.4f} vs {west.threshold:.4f} "
            f"(champion {west.champion:.4f} on the same 150 rows") in verdict.reason
    # credit_score in four quantile bins, each compared; the other regions pass
    bins = [s for s in slices if s.feature == "credit_score"]
    assert len(bins) == 4 and all(s.passed for s in bins) and sum(s.rows for s in bins) == 2000
    # Without the west, every compared slice holds: the table counts them as slices.
    held = [s for s in slices if s.passed is not False]
    table = format_table(decide(overall, at_champion, gate, champion_version="3", slices=held))
    [row] = [line for line in table.splitlines() if "every slice" in line]
    compared = sum(s.passed is True for s in held)
    assert row.split()[-3:] == [str(compared)] * 2 + ["pass"]  # e.g. 7, not 7.0000
    assert all(s.passed for s in slices if s.feature == "region" and s.value != "west")


def test_small_and_undefined_slices_are_listed_not_compared() -> None:
    test, actual, champion, _ = slice_case()
    test.loc[:49, "region"] = "central"  # 50 rows: under slice_min_rows
    test.loc[:, "credit_score"] = test["credit_score"].where(test.index >= 120)  # missing
    one_class = actual.copy()
    one_class[test["credit_score"].isna().to_numpy()] = 1  # the missing slice: one class
    labels = slice_labels(test, ["region", "credit_score"], {"credit_score"}, 4)
    slices = {s.name: s for s in compare_slices(
        labels, roc_auc_on(one_class, champion), roc_auc_on(one_class, champion),
        lower_is_better=False, min_rows=100, tolerance=0.0)}
    assert slices["region=central"].passed is None
    assert "fewer than gate.slice_min_rows (100)" in slices["region=central"].note
    missing = slices["credit_score=(missing)"]
    assert (missing.rows, missing.passed) == (120, None) and "undefined" in missing.note
    no_champion = compare_slices(labels, roc_auc_on(actual, champion), None,
                                 lower_is_better=False, min_rows=100, tolerance=0.0)
    assert {s.note for s in no_champion if s.rows >= 100} == {"no champion to compare with"}
    assert decide(GOOD, None, GATE, slices=no_champion).promote  # nothing to compare: floors


def test_a_lower_is_better_metric_fails_a_slice_when_it_rises() -> None:
    """Regression's rmse (and multiclass log_loss): the slice bound is a ceiling."""
    test, _, _, _ = slice_case()
    rng = np.random.default_rng(1)
    actual = rng.normal(1000, 200, len(test))
    champion = actual + rng.normal(0, 50, len(test))
    challenger = champion.copy()
    west = (test["region"] == "west").to_numpy()
    challenger[west] += 300

    def rmse(scores: np.ndarray) -> Callable[[np.ndarray], float]:
        return lambda mask: float(np.sqrt(np.mean((scores[mask] - actual[mask]) ** 2)))

    labels = slice_labels(test, ["region"], set(), 4)
    slices = compare_slices(labels, rmse(challenger), rmse(champion), lower_is_better=True,
                            min_rows=100, tolerance=40.0)
    (worse,) = [s for s in slices if s.passed is False]
    assert worse.name == "region=west" and worse.challenger > worse.threshold
    assert worse.threshold == round(worse.champion + 40.0, 6)


def test_a_slice_feature_must_be_in_the_schema() -> None:
    import yaml

    from mlpipeline.config import Params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["gate"]["slices"] = ["regoin"]
    with pytest.raises(ValueError, match=r"gate\.slices: 'regoin' is not a feature"):
        Params.model_validate({**raw, "root": REPO})


# --- behavioural checks (mlpipeline.behaviour) --------------------------------------------

LOANS = pd.DataFrame({"credit_score": [500.0, 600.0, 700.0, 840.0, np.nan] * 20,
                      "region": ["north", "south", "east", "west", "central"] * 20})


def test_a_score_that_falls_with_credit_passes_the_decreasing_rule() -> None:
    result = directional(LOANS, "credit_score", "decreasing",
                         lambda rows: 1 - rows["credit_score"].to_numpy() / 1000,
                         step=50, high=850, max_share=0.1)
    # The missing scores cannot move; 840 moves only to the schema's max, 850.
    assert (result.rows, result.violations, result.passed) == (80, 0, True)


def test_a_score_that_rises_with_credit_breaks_the_decreasing_rule_on_every_row() -> None:
    result = directional(LOANS, "credit_score", "decreasing",
                         lambda rows: rows["credit_score"].to_numpy() / 1000,
                         step=50, high=850, max_share=0.1)
    assert (result.violations, result.share, result.passed) == (80, 1.0, False)
    assert "80 of 80 rows (100.0%) broke 'decreasing (credit_score +50)'" in result.summary


def test_a_flat_score_is_no_violation() -> None:
    result = directional(LOANS, "credit_score", "increasing",
                         lambda rows: np.full(len(rows), 0.3), step=None, high=None,
                         max_share=0.0)
    assert result.violations == 0 and result.passed


def test_invariance_counts_the_rows_another_value_moves_too_far() -> None:
    def score(rows: pd.DataFrame) -> np.ndarray:  # south adds 0.2, the others nothing
        return 0.1 + 0.2 * (rows["region"] == "south").to_numpy()

    regions = ["north", "south", "east", "west", "central"]
    moved = invariance(LOANS, "region", regions, score, tolerance=0.05, max_share=0.1, seed=7)
    # Every south row gets another region (moves 0.2); a quarter of the others become south.
    assert 30 <= moved.violations <= 50 and not moved.passed
    within = invariance(LOANS, "region", regions, score, tolerance=0.25, max_share=0.1, seed=7)
    assert within.violations == 0 and within.passed


def test_a_directional_violation_blocks_promotion_naming_the_feature_and_the_share() -> None:
    broken = directional(LOANS, "credit_score", "decreasing",
                         lambda rows: rows["credit_score"].to_numpy() / 1000,
                         step=50, high=850, max_share=0.1)
    verdict = decide(GOOD, None, GATE, behaviour=[broken])
    assert not verdict.promote
    assert "directional credit_score violations: 1.0000 vs 0.1000" in verdict.reason
    assert "80 of 80 rows (100.0%)" in verdict.reason
    kept = decide(GOOD, None, GATE, behaviour=[directional(
        LOANS, "credit_score", "increasing", lambda rows: rows["credit_score"].to_numpy(),
        step=50, high=850, max_share=0.1)])
    assert kept.promote and kept.checks[-1].name == "directional credit_score violations"


def test_expect_needs_a_number_and_invariant_features_must_be_in_the_schema() -> None:
    import yaml

    from mlpipeline.config import Params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["gate"]["invariant_features"] = ["regoin"]
    with pytest.raises(ValueError, match=r"gate\.invariant_features: 'regoin' is not a"):
        Params.model_validate({**raw, "root": REPO})
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    region = next(f for f in raw["schema"]["features"] if f["name"] == "region")
    region["expect"] = "increasing"
    with pytest.raises(ValueError, match="categorical feature 'region' cannot have `expect`"):
        Params.model_validate({**raw, "root": REPO})
