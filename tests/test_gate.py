"""The gate's verdict and the promotion history as plain functions: no MLflow, no files."""

from __future__ import annotations

import datetime as dt
from functools import partial

from mlpipeline.config import GateParams, load_params
from mlpipeline.gate import decide as gate_decide
from mlpipeline.gate import format_table
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

