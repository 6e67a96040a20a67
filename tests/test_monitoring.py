"""Monitoring decisions as plain functions, the Evidently reading on real reports, the CT
lock and the params.yaml editing CT relies on. The whole loop is in test_loop.py."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mlpipeline.config import load_params, set_values
from mlpipeline.prediction_log import read_log
from mlpipeline.source import synthetic_batch
from monitoring import ct, cycle_guard, decide
from monitoring.drift import evidently_report, join_counts, logged_outcomes
from tests.conftest import ENV, REPO, Project

PARAMS = load_params(REPO)


def drift_result(drifted: int, total: int = 10, share: float = 0.3) -> decide.DriftResult:
    features = [decide.FeatureDrift(f"f{i}", "ks", 0.9 if i < drifted else 0.01, 0.1, i < drifted)
                for i in range(total)]
    return decide.DriftResult(features, share, 5000, 1500)


def verdict(**overrides) -> decide.Verdict:
    arguments = dict(current_rows=1500, min_rows=500, drift=drift_result(0), perf=None,
                     batches_since_training=5, cooldown_batches=2, force=False)
    return decide.decide(**{**arguments, **overrides})


def test_no_drift_means_no_retrain() -> None:
    result = verdict()
    assert result.action == "no-retrain" and result.triggers == []
    assert "0 of 10 features drifted" in result.reasons[0]


def test_drift_share_at_the_threshold_retrains_and_names_the_features() -> None:
    assert verdict(drift=drift_result(2)).action == "no-retrain"
    result = verdict(drift=drift_result(3))
    assert result.action == "retrain" and result.triggers == ["drift"]
    assert "f0, f1, f2" in result.reasons[0]


def test_too_few_rows_is_no_retrain_with_that_reason_even_when_drifted() -> None:
    result = verdict(current_rows=120, drift=drift_result(9))
    assert result.action == "no-retrain"
    assert result.reasons == ["current window has 120 rows, fewer than monitoring.min_rows=500: "
                              "too few for a verdict"]


def test_performance_below_a_floor_is_a_second_trigger() -> None:
    floors = {"roc_auc": 0.7, "precision": 0.3}
    lower = PARAMS.task.lower_is_better
    holds = decide.performance({"roc_auc": 0.78, "precision": 0.4}, 1500, floors, lower,
                               "served")
    drops = decide.performance({"roc_auc": 0.66, "precision": 0.4}, 1500, floors, lower)
    one_class = decide.performance({"roc_auc": float("nan"), "precision": 0.4}, 1500, floors,
                                   lower)
    assert holds.below == [] and drops.below == ["roc_auc"] and one_class.below == ["roc_auc"]
    assert verdict(perf=holds).action == "no-retrain"
    assert verdict(perf=holds).reasons[-1].startswith("performance holds (served, 1500 rows)")
    result = verdict(perf=drops)
    assert result.action == "retrain" and result.triggers == ["performance"]


def test_cooldown_holds_back_a_retrain_until_enough_batches_arrived() -> None:
    blocked = verdict(drift=drift_result(5), batches_since_training=1)
    assert blocked.action == "no-retrain" and blocked.triggers == ["drift"]
    assert blocked.reasons[-1].startswith("cooldown")
    assert verdict(drift=drift_result(5), batches_since_training=2).action == "retrain"
    assert verdict(drift=drift_result(5), batches_since_training=None).action == "retrain"


def test_force_retrains_without_drift_and_inside_the_cooldown() -> None:
    result = verdict(force=True, batches_since_training=0)
    assert result.action == "retrain" and result.triggers == ["force"]


def test_same_data_guard() -> None:
    assert decide.same_data_reason("abc", "abc") is not None
    assert decide.same_data_reason("abc", "def") is None
    assert decide.same_data_reason("abc", None) is None


def test_batches_after_counts_batches_not_days() -> None:
    weekly = [dt.date(2026, 3, 2), dt.date(2026, 3, 9), dt.date(2026, 3, 16)]
    assert decide.batches_after(weekly, dt.date(2026, 3, 9)) == 1
    assert decide.batches_after(weekly, dt.date(2026, 3, 16)) == 0
    assert decide.batches_after(weekly, None) is None
    # One yearly batch is one batch (the old count divided 365 days by 7: 52).
    yearly = [dt.date(2016, 1, 1), dt.date(2017, 1, 1)]
    assert decide.batches_after(yearly, dt.date(2016, 1, 1)) == 1


def test_evidently_flags_the_shifted_features_and_only_them() -> None:
    source = PARAMS.source  # drift from batch 9 on
    reference = pd.concat([synthetic_batch(source, i) for i in range(4)], ignore_index=True)
    same, shifted = synthetic_batch(source, 4), synthetic_batch(source, 9)
    _, calm = evidently_report(reference, same, PARAMS)
    _, drifted = evidently_report(reference, shifted, PARAMS)
    assert [f.name for f in calm.features] == PARAMS.schema.feature_names
    assert not calm.detected and calm.drifted == []
    assert drifted.detected
    assert {"annual_income", "credit_score", "loan_amount", "debt_to_income"} <= set(
        drifted.drifted)
    assert not {"age", "region", "term"} & set(drifted.drifted)


def test_method_and_threshold_come_from_params() -> None:
    params = PARAMS.model_copy(update={"monitoring": PARAMS.monitoring.model_copy(
        update={"drift_method": "psi", "drift_threshold": 0.2})})
    reference, current = synthetic_batch(params.source, 0), synthetic_batch(params.source, 1)
    _, result = evidently_report(reference, current, params)
    assert {f.threshold for f in result.features} == {0.2}
    assert {f.method for f in result.features} == {"psi"}


def test_served_predictions_are_joined_with_the_outcomes_that_arrived_later() -> None:
    schema = PARAMS.schema
    batch = synthetic_batch(PARAMS.source, 0).head(3)
    batch.loc[0, "credit_score"] = float("nan")  # a missing value still matches itself
    served = batch[schema.feature_names].astype(object).where(batch.notna(), None)
    log = pd.concat([served.iloc[[0, 1, 1]], served.iloc[[1]]], ignore_index=True).assign(
        probability=[0.1, 0.15, 0.2, 0.3], model_version=["1", "1", "1", "2"])
    joined = logged_outcomes(log, batch, PARAMS.task)
    # Row 2 was never served; row 1 was answered by v1 (twice: its latest counts) and by v2.
    assert list(zip(joined["_outcome"], joined["model_version"], joined["probability"],
                    strict=True)) == [(0, "1", 0.1), (1, "1", 0.2), (1, "2", 0.3)]
    assert list(joined[schema.target]) == list(batch[schema.target].iloc[[0, 1, 1]])
    assert join_counts(joined, 3) == {"on_id": 0, "on_features": 2,
                                      "outcomes_without_prediction": 1}
    assert logged_outcomes(pd.DataFrame(), batch, PARAMS.task).empty


def test_every_version_is_credited_with_every_answer_it_gave() -> None:
    """One batch's 1,500 applications answered by v1, then 300 of them again by v2 (sent
    again after a promotion): v1 keeps its 1,500 answers, v2 has its 300, and both say that
    300 ids were answered by both."""
    from monitoring.drift import describe, judged_by_version

    schema, task = PARAMS.schema, PARAMS.task
    batch = synthetic_batch(PARAMS.source, 0)
    requests = batch[[schema.id_column, *schema.feature_names]]
    log = pd.concat([requests.assign(probability=0.2, model_version="1"),
                     requests.head(300).assign(probability=0.6, model_version="2")],
                    ignore_index=True)
    joined = logged_outcomes(log, batch, task)
    scored = judged_by_version(joined, batch, "2", task, 200, {"roc_auc": 0.7},
                               lambda: pytest.fail("v2 answered enough rows itself"))
    assert scored is not None
    by_version = scored.result.by_version
    assert {v: (e["rows"], e.get("ids_answered_by_several")) for v, e in by_version.items()} \
        == {"1": (1500, 300), "2": (300, 300)}
    assert scored.result.joined == {"on_id": 1500, "on_features": 0,
                                    "outcomes_without_prediction": 0}
    summary = {"window": {"description": "batch", "rows": 1500}, "report_html": None,
               "reference": {"champion": "2", "training_window": "w", "rows": 1},
               "decision": {"reasons": [], "action": "no-retrain"},
               "performance": scored.result.as_dict()}
    assert "v1 1500 rows served (300 also answered by another version)" in describe(summary)


def joined_answers(versions: dict[str, tuple[int, bool]]) -> pd.DataFrame:
    """Outcomes joined with served answers: per version (rows, whether its answers rank the
    outcomes well)."""
    rng = np.random.default_rng(0)
    parts = []
    for version, (rows, good) in versions.items():
        target = rng.integers(0, 2, rows)
        probability = np.where(target == 1, 0.8, 0.2) if good else rng.random(rows)
        parts.append(pd.DataFrame({"default": target, "probability": probability,
                                   "model_version": version, "joined_on": "id"}))
    joined = pd.concat(parts, ignore_index=True)
    return joined.assign(_outcome=range(len(joined)))  # each answer for another outcome


def test_a_new_champion_is_not_credited_with_its_predecessor_s_answers() -> None:
    """After a promotion the log holds v1's answers to the outcomes that arrive: 3,000 of
    v1 and 6 of v2. Those were v1's: v2 is re-scored on the outcomes and says so, v1 is
    reported as itself, and v1's poor figure neither names v2 nor retrains it."""
    from monitoring.drift import judged_by_version, version_line

    task, floors = PARAMS.task, {"roc_auc": 0.70}
    served = joined_answers({"1": (3000, False), "2": (6, True)})
    labelled = served[["default"]]
    calls: list[int] = []

    def rescored() -> np.ndarray:
        calls.append(1)
        positive = np.where(labelled["default"].to_numpy() == 1, 0.9, 0.1)
        return np.column_stack([1 - positive, positive])  # the task's layout: per class

    scored = judged_by_version(served, labelled, "2", task, 200, floors, rescored)
    assert scored is not None and calls == [1]
    result = scored.result
    assert (result.version, result.rows, result.below) == ("2", 3006, [])
    assert result.source == "champion v2 re-scored on outcomes"
    assert result.metrics["roc_auc"] == 1.0
    assert result.by_version["1"]["rows"] == 3000 and result.by_version["1"]["metrics"][
        "roc_auc"] < 0.6
    assert {k: result.by_version["2"][k] for k in ("rows", "served_rows", "source")} == {
        "rows": 3006, "served_rows": 6, "source": "champion v2 re-scored on outcomes"}
    verdict = decide.decide(current_rows=3006, min_rows=500, drift=None, perf=result,
                            batches_since_training=5, cooldown_batches=2)
    assert verdict.action == "no-retrain" and "performance" not in verdict.triggers
    assert version_line("1", result.by_version["1"], floors).startswith(
        "v1 3000 rows served: roc_auc 0.")
    assert version_line("2", result.by_version["2"], floors) == (
        "v2 6 served, re-scored on 3006 outcomes: roc_auc 1.0000")
    # With enough answers of its own, the champion is judged on those alone.
    served = joined_answers({"1": (3000, True), "2": (400, False)})
    own = judged_by_version(served, served[["default"]], "2", task, 200, floors, rescored)
    assert own is not None and calls == [1]  # not re-scored
    assert (own.result.rows, own.result.source, own.result.below) == (
        400, "served predictions joined with outcomes", ["roc_auc"])
    assert "champion v2's served predictions joined with outcomes, 400 rows" in (
        own.result.described)


def test_outcomes_join_on_the_id_when_applications_share_every_feature_value() -> None:
    """Pairs of applications with the same features and opposite outcomes: on the id each
    outcome meets its own answer (ROC AUC 1); on the feature values both would meet the
    latest one (ROC AUC 0.5). Rows without an id fall back to the features."""
    from mlpipeline.tasks.binary import classification_metrics

    schema, target, key = PARAMS.schema, PARAMS.schema.target, PARAMS.schema.id_column
    first = synthetic_batch(PARAMS.source, 0).head(200)
    twin = first.assign(application_id=first[key] + "-twin")
    outcomes = pd.concat([first.assign(**{target: 0}), twin.assign(**{target: 1})],
                         ignore_index=True)
    served = outcomes[[key, *schema.feature_names]].assign(
        probability=outcomes[target].map({0: 0.1, 1: 0.9}), model_version="1")
    log = served.sample(frac=1, random_state=0)  # answered in another order than the outcomes

    def roc_auc(joined: pd.DataFrame) -> float:
        return classification_metrics(joined[target].to_numpy(),
                                      joined["probability"].to_numpy(), 0.5)["roc_auc"]

    joined = logged_outcomes(log, outcomes, PARAMS.task)
    assert len(joined) == 400 and set(joined["joined_on"]) == {"id"}
    assert roc_auc(joined) == 1.0
    by_features = logged_outcomes(log.drop(columns=key), outcomes.drop(columns=key),
                                  PARAMS.task)
    assert roc_auc(by_features) == 0.5  # what the feature-value join alone would report

    # One outcome without an id, whose request came without one: found on its features.
    # One whose id was never logged: not matched to its twin's answer, counted as unmatched.
    lone = outcomes.iloc[[0]].assign(application_id=None, purpose="medical")
    lost = outcomes.iloc[[1]].assign(application_id="never-served")
    more_log = pd.concat([log, lone.drop(columns=[target, key]).assign(
        probability=0.3, model_version="1")], ignore_index=True)
    joined = logged_outcomes(more_log, pd.concat([outcomes, lone, lost]), PARAMS.task)
    assert join_counts(joined, 402) == {"on_id": 400, "on_features": 1,
                                        "outcomes_without_prediction": 1}
    assert joined[joined["joined_on"] == "features"]["probability"].tolist() == [0.3]


def history_summary(time: str, kind: str, rows: int, action: str, batch: str | None = None,
                  until: str | None = None) -> dict:
    """A drift check's summary, as monitoring.drift writes it (the parts the history uses)."""
    return {"time": time, "window": {"kind": kind, "description": f"{kind} window",
                                     "rows": rows, "batch": batch, "until": until},
            "reference": {"model": "loan-default", "champion": "3",
                          "training_window": "2026-01-05..2026-02-23"},
            "decision": {"action": action, "reasons": ["a reason"]}}


def test_each_check_adds_its_tagged_snapshot_to_the_evidently_history(tmp_path: Path) -> None:
    """Read back through Evidently's own API: one snapshot per check with its tags, dated by
    its data, the champion's real figures as Evidently computes them, the dashboard."""
    from evidently.core.report import Snapshot

    from mlpipeline.tasks.binary import classification_metrics
    from monitoring import drift, history

    params = PARAMS.model_copy(update={"root": tmp_path})
    reference, current = synthetic_batch(params.source, 0), synthetic_batch(params.source, 9)
    drift_snapshot, _ = evidently_report(reference, current, params)
    actual = current[params.schema.target].to_numpy()
    probability = (0.6 * actual + 0.4 * pd.Series(range(len(actual))) / len(actual)).to_numpy()
    scores = np.column_stack([1 - probability, probability])
    performance = params.task.evidently_performance(pd.Series(actual), scores,
                                                    params.gate.min_metrics)
    ours = classification_metrics(actual, probability, params.evaluate.threshold)
    checked = {**history_summary("2026-11-30T10:00:00+00:00", "batch", 1500, "retrain",
                                 batch="2026-03-09"),
               "performance": {"metrics": ours, "floors": dict(params.gate.min_metrics),
                               "ceilings": []}}  # as monitoring.drift's summary holds it
    history.record(params, checked, {"drift": drift_snapshot, "performance": performance})
    for hour, rows, until in ((11, 10, "2026-03-16T00:00:00+00:00"),
                              (12, 0, "2026-03-23T00:00:00+00:00")):
        window = drift.Window("log", "log", current.head(rows), until=until)
        summary = history_summary(f"2026-11-30T{hour}:00:00+00:00", "log", rows, "no-retrain",
                                  until=until)
        kept = drift.keep_history(params, summary, None, window, None)
        assert kept["workspace"] == "reports/monitoring/evidently" and kept["parts"] == ["rows"]

    runs = history.read_history(params)
    assert [(r.timestamp.date().isoformat(), history.tag_values(r.tags, "part"),
             history.tag_value(r.tags, "decision")) for r in runs] == [
        ("2026-03-09", ["drift", "performance"], "retrain"),
        ("2026-03-16", ["rows"], "no-retrain"), ("2026-03-23", ["rows"], "no-retrain")]
    assert {"check:2026-11-30T10:00:00+00:00", "window:batch", "champion:v3",
            "batch:2026-03-09"} <= set(runs[0].tags)
    assert runs[0].metadata["decision"] == "retrain"

    def values(run: object) -> dict[str, float]:
        return {m["metric_name"].split("(")[0]: m["value"]
                for m in Snapshot.load_model(run).dict()["metrics"]}

    figures = values(runs[0])
    assert figures["RocAuc"] == pytest.approx(ours["roc_auc"], abs=1e-6)
    assert figures["Precision"] == pytest.approx(ours["precision"], abs=1e-6)
    assert figures["Recall"] == pytest.approx(ours["recall"], abs=1e-6)
    assert figures["RowCount"] == 1500 and "DriftedColumnsCount" in figures
    def lines(run: object) -> dict[str, float]:  # the thresholds each check records
        return {m["config"]["column"]: m["value"] for m in Snapshot.load_model(run).dict()[
            "metrics"] if m["config"]["type"] == history.THRESHOLD}

    recorded = {"drift_share": 0.3, "floor_roc_auc": 0.7, "floor_precision": 0.3}
    # With outcomes, the champion's margin to each floor too: the zero of a bar is the floor.
    margins = {"headroom_roc_auc": pytest.approx(ours["roc_auc"] - 0.7, abs=1e-9),
               "headroom_precision": pytest.approx(ours["precision"] - 0.3, abs=1e-9)}
    assert [lines(run) for run in runs] == [{**recorded, **margins}, recorded, recorded]
    assert values(runs[1])["RowCount"] == 10 and values(runs[2])["RowCount"] == 0
    tests = Snapshot.load_model(runs[0]).dict()["tests"]
    floors = sorted(t["name"] for t in tests if "Greater or Equal" in t["name"])
    assert floors == ["Precision metric: Greater or Equal 0.300",
                      "RocAuc metric: Greater or Equal 0.700"]

    # Two more checks of batch 2026-03-09 (`make drift` after a cycle): each its own point
    # on the dashboard's axis, after the first, in the order made; the count survives the
    # loss of its index (read back from the snapshots' tags).
    again = history_summary("2026-11-30T13:00:00+00:00", "batch", 1500, "no-retrain",
                            batch="2026-03-09")
    history.record(params, again, {"drift": drift_snapshot})
    (params.path(params.monitoring.history_dir) / history.ORDER_FILE).unlink()
    history.record(params, {**again, "time": "2026-11-30T14:00:00+00:00"},
                   {"drift": drift_snapshot})
    times = [(r.timestamp.isoformat(), history.tag_value(r.tags, "check"))
             for r in history.read_history(params)]
    assert times[:3] == [("2026-03-09T00:00:00", "2026-11-30T10:00:00+00:00"),
                         ("2026-03-09T00:01:00", "2026-11-30T13:00:00+00:00"),
                         ("2026-03-09T00:02:00", "2026-11-30T14:00:00+00:00")]

    _, project = history.open_project(params)
    panels = {p.title: p.values for p in project.dashboard.model().panels}
    assert list(panels)[1:] == [
        "Share of drifted features", "Rows per window",
        "Drift score: numeric features (1 of 2)", "Drift score: numeric features (2 of 2)",
        "Drift score: categorical features", "Prediction and target drift",
        "Champion's real performance on labelled batches", "Margin to the gate's floors"]
    # No two lines of a panel share a colour: the UI's palette has six.
    assert all(len(lines) <= history.PALETTE_COLOURS for lines in panels.values())
    features = [v.metric_labels["column"] for title, lines in panels.items()
                if title.startswith("Drift score") for v in lines]
    assert sorted(features) == sorted(params.schema.feature_names)
    # The retrain share is a line; the floors are the zero of bars (not lines among the
    # metrics' lines); the check holds each one's value.
    drawn = {v.legend: v.metric_labels["column"] for lines in panels.values() for v in lines
             if v.metric == history.THRESHOLD}
    assert drawn == {"retrain at 0.3": "drift_share",
                     "roc_auc over its floor": "headroom_roc_auc",
                     "precision over its floor": "headroom_precision"}
    kinds = {p.title: p.plot_params["plot_type"] for p in project.dashboard.model().panels}
    assert kinds["Margin to the gate's floors"] == "bar"
    assert kinds["Champion's real performance on labelled batches"] == "line"
    assert set(drawn.values()) <= set(lines(runs[0]))

    # A dashboard made by an earlier version (other panels) gets today's when opened.
    project.dashboard.clear_dashboard()
    _, project = history.open_project(params)
    assert [p.title for p in project.dashboard.model().panels][1:] == list(panels)[1:]

    # A workspace that cannot be written costs the history, not the check.
    (tmp_path / "blocked").write_text("a file where the workspace should be\n")
    blocked = params.model_copy(update={"monitoring": params.monitoring.model_copy(
        update={"history_dir": "blocked/evidently"})})
    kept = drift.keep_history(blocked, summary, None, window, None)
    assert kept["workspace"] == "blocked/evidently" and kept["error"]


def test_a_check_is_recorded_beside_a_damaged_snapshot_without_reading_the_others(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Recording a check opens the workspace without parsing the snapshots already in it
    (Evidently's Workspace parses all of them, ~70 ms each: months of checks slowed every
    check), so one left half-written by a killed check neither stops the next check nor
    the history list."""
    from monitoring import drift, history

    params = PARAMS.model_copy(update={"root": tmp_path})
    current = synthetic_batch(params.source, 0)

    def check(day: int) -> dict:
        until = f"2026-03-{day:02d}T00:00:00+00:00"
        window = drift.Window("log", "log", current.head(day), until=until)
        summary = history_summary(f"2026-11-30T{day:02d}:00:00+00:00", "log", day,
                                  "no-retrain", until=until)
        return drift.keep_history(params, summary, None, window, None)

    assert "error" not in check(2)
    _, project = history.open_project(params)
    snapshots = params.path(params.monitoring.history_dir) / str(project.id) / "snapshots"
    (good,) = snapshots.glob("*.json")
    damaged = snapshots / "01930000-0000-7000-8000-000000000000.json"
    damaged.write_text(good.read_text()[:500])  # a write cut short
    kept = check(9)
    assert "error" not in kept, kept
    runs = history.read_history(params)
    assert [history.tag_value(r.tags, "window") for r in runs] == ["log", "log"]
    assert [r.timestamp.day for r in runs] == [2, 9]
    assert f"snapshot {damaged.stem} skipped, unreadable" in capsys.readouterr().err


def test_a_snapshot_that_fails_mid_write_leaves_nothing_the_dashboard_cannot_read(
        tmp_path: Path) -> None:
    """Evidently's UI parses every snapshot when it starts and stops at a damaged one: a check
    that dies while writing its snapshot must leave no file under a snapshot's name."""
    from evidently.ui.service.storage.local import create_local_project_manager

    from monitoring import history

    params = PARAMS.model_copy(update={"root": tmp_path})
    workspace, project = history.open_project(params)

    class CutShort:  # serialises partway, then fails (as a full disk or a kill would)
        def dict(self) -> dict:
            return {"metadata": {"window": "log"}, "metric_results": {"x": object()}}

    with pytest.raises(TypeError):
        workspace.state.write_snapshot(project.id, "01930000-0000-7000-8000-00000000000a",
                                       CutShort())
    folder = params.path(params.monitoring.history_dir)
    assert not list((folder / str(project.id)).glob("snapshots/*.json"))
    create_local_project_manager(str(folder), False)  # what `evidently ui` loads first


def test_log_parts_with_an_all_missing_column_read_as_one_frame(tmp_path) -> None:
    part = tmp_path / "date=2026-03-02"
    part.mkdir()
    pq.write_table(pa.table({"age": [30.0, 41.0], "purpose": pa.array([None, None])}),
                   part / "part-1.parquet")  # a flush where every purpose was missing
    pq.write_table(pa.table({"age": [52.0], "purpose": ["car"]}), part / "part-2.parquet")
    log = read_log(tmp_path)
    assert list(log["age"]) == [30.0, 41.0, 52.0]
    assert list(log["purpose"]) == [None, None, "car"]


def test_a_report_without_a_feature_verdict_is_an_error() -> None:
    with pytest.raises(ValueError, match="no verdict for"):
        decide.column_drift({"metrics": [], "tests": []}, ["age"])


def test_set_values_moves_values_and_keeps_comments() -> None:
    text = ('source:\n  n_batches: 8      # the clock\n  seed: 7\nwindow:\n'
            '  start: "2026-01-05"\n  end: "2026-02-23"\n')
    out = set_values(text, {"source.n_batches": 10, "window.end": "2026-03-09"})
    assert out == ('source:\n  n_batches: 10     # the clock\n  seed: 7\nwindow:\n'
                   '  start: "2026-01-05"\n  end: "2026-03-09"\n')
    with pytest.raises(KeyError, match=r"window\.middle"):
        set_values(text, {"window.middle": 1})


def test_window_slides_by_whole_batches_keeping_its_count() -> None:
    weekly = [dt.date(2026, 1, 5) + dt.timedelta(days=7 * i) for i in range(10)]
    assert decide.slide_window(weekly, dt.date(2026, 1, 5), dt.date(2026, 2, 23),
                               dt.date(2026, 3, 9)) == (dt.date(2026, 1, 19), dt.date(2026, 3, 9))
    # Yearly batches across a leap year: sliding by the 366 days between 2016-01-01 and
    # 2017-01-01 would start at 2016-01-02 and lose a batch; by batches it keeps two.
    yearly = [dt.date(year, 1, 1) for year in range(2013, 2018)]
    assert decide.slide_window(yearly, dt.date(2015, 1, 1), dt.date(2016, 1, 1),
                               dt.date(2017, 1, 1)) == (dt.date(2016, 1, 1), dt.date(2017, 1, 1))
    # Irregular and monthly batches keep their count as well.
    monthly = [dt.date(2026, m, 1) for m in range(1, 7)] + [dt.date(2026, 6, 20)]
    assert decide.slide_window(monthly, dt.date(2026, 2, 1), dt.date(2026, 4, 1),
                               dt.date(2026, 6, 20)) == (dt.date(2026, 5, 1), dt.date(2026, 6, 20))


def test_failed_cycle_summary_names_the_step() -> None:
    summary = {"time": "t", "status": "failed", "failed_step": "retrain",
               "error": "`dvc repro` exited with 1", "champion_before": "2",
               "champion_after": "2", "window_before": "a..b", "window_after": "a..b",
               "seconds": 3.0}
    markdown = ct.to_markdown(summary)
    assert "failed at step 'retrain'" in markdown and "v2 (unchanged)" in markdown


def test_a_cycle_that_leaves_a_challenger_waiting_says_awaiting_approval() -> None:
    summary = {"time": "t", "status": "ok", "failed_step": None, "error": None,
               "champion_before": "1", "champion_after": "1", "window_before": "a..b",
               "window_after": "a..c", "seconds": 3.0,
               "decision": {"action": "retrain", "reasons": ["drift"], "triggers": ["drift"]},
               "gate": {"version": "2", "promoted": False, "awaiting_approval": True,
                        "reason": "passed the gate: ...; awaiting approval (promotion.mode "
                                  "manual): make approve V=2 or make reject V=2"}}
    markdown = ct.to_markdown(summary)
    assert "| gate | v2 PASSED, awaiting approval: passed the gate" in markdown
    assert "make approve V=2" in markdown


def test_the_cycle_s_last_line_names_the_reason_that_decided_it() -> None:
    base = {"champion_before": "1", "champion_after": "1", "seconds": 2.0,
            "awaiting_approval": None}
    idle = ct.console_line({**base, "decision": decide.nothing_landed(
        dt.date(2026, 2, 23)).as_dict()}, Path("reports/ct"))
    assert idle.startswith("ct: no-retrain (no batch landed after the champion's training "
                           "data (its window ends 2026-02-23)); champion v1 -> v1")
    drift = decide.Verdict("retrain", ["drift: 6 of 13 features drifted"], ["drift"])
    same = decide.held_back(drift, "the training split is the champion's own data")
    line = ct.console_line({**base, "decision": same.as_dict()}, Path("reports/ct"))
    assert "no-retrain (the training split is the champion's own data)" in line
    # The cooldown decided, not the drift it held back; a retrain names what asked for it.
    held = decide.decide(current_rows=1500, min_rows=500, drift=drift_result(6), perf=None,
                         batches_since_training=1, cooldown_batches=2)
    line = ct.console_line({**base, "decision": held.as_dict()}, Path("reports/ct"))
    assert line.startswith("ct: no-retrain (cooldown: the last training run ended 1 batch(es) "
                           "ago, ct.cooldown_batches=2); champion v1")
    perf = decide.performance({"roc_auc": 0.6}, 1500, {"roc_auc": 0.7}, set(), "served")
    asked = decide.decide(current_rows=1500, min_rows=500, drift=drift_result(1), perf=perf,
                          batches_since_training=5, cooldown_batches=2)
    line = ct.console_line({**base, "decision": asked.as_dict()}, Path("reports/ct"))
    assert line.startswith("ct: retrain (performance below floor (served, 1500 rows): "
                           "roc_auc 0.6000 (floor 0.7)); champion v1"), line


def test_a_second_cycle_waits_for_the_first(project: Project) -> None:
    with (project.root / cycle_guard.LOCK_FILE).open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = project.run(sys.executable, "-m", "monitoring.ct", check=False)
    assert result.returncode == cycle_guard.LOCK_BUSY
    assert "another CT cycle holds .ct.lock" in result.stderr
    assert load_params(project.root).source.n_batches == 8  # nothing moved


@pytest.mark.slow  # a CT cycle's `dvc repro validate`, then its restore: ~15 s
def test_a_store_that_cannot_be_opened_fails_step_1_and_puts_back_what_it_moved(
        project: Project) -> None:
    """The registry opens on a thread while step 1's `dvc repro validate` runs: when it cannot
    be opened, the cycle fails at that step and the data and params are as before."""
    (project.root / "a-file").write_text("not a folder: no database can be made in it\n")
    project.set_params(lambda p: p["mlflow"].update(
        tracking_uri=f"sqlite:///{project.root}/a-file/mlflow.db"))
    project.commit("an MLflow store that cannot be opened")
    params = project.read("params.yaml")
    result = project.run(sys.executable, "-m", "monitoring.ct", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Running stage 'validate'" in result.stdout  # it ran while the store was opening
    summary = json.loads(project.read("reports/ct/summary.json"))
    assert (summary["status"], summary["failed_step"]) == ("failed", "new batch")
    assert "cannot use the MLflow store" in summary["error"]
    assert summary["restore_problems"] == []  # the champion could not have moved
    assert project.read("params.yaml") == params  # the source clock did not move
    # As a fresh clone was: the committed lock, and no data (none of it in the DVC cache).
    assert project.git("diff", "HEAD", "--", "dvc.lock").stdout == ""
    assert not (project.root / "data/raw").exists()
    assert not (project.root / ".ct-journal").exists()


def test_the_ct_workflow_step_exits_75_when_a_cycle_holds_the_lock(tmp_path: Path) -> None:
    """The command ct.yml runs, run here as Actions runs it (bash -e), against this checkout
    while a cycle holds its lock: the job sees 75, not make's blanket 2."""
    workflow = yaml.safe_load((REPO / ".github/workflows/ct.yml").read_text())
    [step] = [s for job in workflow["jobs"].values() for s in job["steps"]
              if s.get("id") == "ct"]
    env = {**ENV, "GITHUB_OUTPUT": str(tmp_path / "out"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    with (REPO / cycle_guard.LOCK_FILE).open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=REPO, env=env,
                                    capture_output=True, text=True)
            make = subprocess.run(["make", "ct"], cwd=REPO, env=env, capture_output=True,
                                  text=True)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    assert result.returncode == cycle_guard.LOCK_BUSY, result.stderr[-2000:]
    assert "another CT cycle holds .ct.lock" in result.stderr
    # GNU make exits 2 for any failed recipe; it still names the cycle's code.
    assert make.returncode == 2 and "Error 75" in make.stderr


def check_summary(drifted: int, action: str) -> dict:
    """A drift check's summary as monitoring.drift writes it (the fields prom reads)."""
    perf = decide.performance({"roc_auc": 0.66, "precision": 0.41, "recall": 0.52}, 1500,
                              {"roc_auc": 0.70, "precision": 0.30}, {"log_loss"}, "served",
                              {"on_id": 1490, "on_features": 10,
                               "outcomes_without_prediction": 3}, "3",
                              {"2": {"rows": 1200, "metrics": {"roc_auc": 0.61},
                                     "source": "served"},
                               "3": {"rows": 1500, "metrics": {"roc_auc": 0.66},
                                     "source": "served"}})
    return {"time": "2026-03-09T10:00:00+00:00", "window": {"kind": "batch", "rows": 1500},
            "reference": {"model": "loan-default", "champion": "3"},
            "drift": drift_result(drifted).as_dict(), "performance": perf.as_dict(),
            "decision": {"action": action}}


def test_drift_check_figures_parse_as_prometheus_text_named_by_its_conventions(
        tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from monitoring import prom

    path = tmp_path / prom.DRIFT_FILE
    prom.write(prom.drift_metrics(check_summary(4, "retrain")), path)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(path.read_text())
               for s in family.samples}
    assert samples[("model_drift_drifted_features_ratio", ())] == 0.4
    assert samples[("model_drift_detected", ())] == 1.0
    assert samples[("model_drift_decision", (("action", "retrain"),))] == 1.0
    assert samples[("model_drift_decision", (("action", "no-retrain"),))] == 0.0
    assert samples[("model_drift_feature_score", (("feature", "f0"), ("method", "ks")))] == 0.9
    assert samples[("model_champion_version", (("model", "loan-default"),))] == 3.0
    assert samples[("model_champion_live_metric", (("metric", "roc_auc"), ("version", "3")))
                   ] == 0.66
    assert samples[("model_champion_live_rows", (("version", "3"),))] == 1500
    assert samples[("model_version_live_rows", (("version", "2"),))] == 1200
    assert samples[("model_version_live_metric", (("metric", "roc_auc"), ("version", "2")))
                   ] == 0.61
    assert samples[("model_champion_live_metric_floor", (("metric", "roc_auc"),))] == 0.70
    assert samples[("model_outcomes_joined_rows", (("join", "id"),))] == 1490
    assert samples[("model_outcomes_joined_rows", (("join", "features"),))] == 10
    assert samples[("model_outcomes_without_prediction_rows", ())] == 3
    assert samples[("model_drift_check_timestamp_seconds", ())] == dt.datetime(
        2026, 3, 9, 10, tzinfo=dt.UTC).timestamp()
    # Conventions: snake_case with a namespace, base units (_seconds), _ratio for a share.
    names = {name for name, _ in samples}
    assert all(n.startswith("model_") and n == n.lower() for n in names)
    assert not any(n.endswith(("_ms", "_percent", "_minutes")) for n in names)


def test_ct_counters_go_on_from_the_last_textfile(tmp_path: Path) -> None:
    from monitoring import prom

    path = tmp_path / prom.CT_FILE
    cycles = [{"status": "ok", "promoted": True, "champion_after": "2"},
              {"status": "ok", "promoted": False, "champion_after": "2"},
              {"status": "failed", "promoted": False, "champion_after": "2"}]
    for cycle in cycles:
        summary = {"time": "2026-03-09T10:00:00+00:00", "seconds": 42.5, **cycle}
        prom.write(prom.ct_metrics(summary, prom.read_samples(path)), path)
    samples = prom.read_samples(path)
    assert samples['model_ct_cycles_total{status="ok"}'] == 2
    assert samples['model_ct_cycles_total{status="failed"}'] == 1
    assert samples["model_ct_promotions_total"] == 1
    assert samples["model_ct_last_cycle_success"] == 0
    assert samples["model_ct_last_cycle_duration_seconds"] == 42.5
    assert samples["model_ct_champion_version"] == 2


def test_the_batch_side_textfiles_describe_each_metric_once(tmp_path: Path) -> None:
    """A textfile collector reads every .prom file of its folder as one exposition: a metric
    described in two files (two HELP lines) makes it reject them."""
    from prometheus_client.parser import text_string_to_metric_families

    from monitoring import prom

    prom.write(prom.drift_metrics(check_summary(4, "retrain")), tmp_path / prom.DRIFT_FILE)
    prom.write(prom.ct_metrics({"time": "2026-03-09T10:00:00+00:00", "seconds": 40.0,
                                "status": "ok", "promoted": True, "champion_after": "4"}, {}),
               tmp_path / prom.CT_FILE)
    together = "".join(p.read_text() for p in sorted(tmp_path.glob("*.prom")))
    described = [line.split()[2] for line in together.splitlines()
                 if line.startswith("# HELP ")]
    assert len(described) == len(set(described)), sorted(described)
    families = [f.name for f in text_string_to_metric_families(together)]
    assert len(families) == len(set(families))
    assert {"model_champion_version", "model_ct_champion_version"} <= set(families)


@pytest.mark.slow  # a fresh interpreter imports Evidently and MLflow (~8 s)
def test_the_ct_cycle_warms_the_drift_checks_imports_while_dvc_runs() -> None:
    """The head start imports modules that exist (a renamed one would silently warm
    nothing); in a fresh process, the thread leaves every one of them loaded."""
    import subprocess
    import sys

    from monitoring.ct import DRIFT_CHECK_IMPORTS

    probe = ("import sys, monitoring.ct as ct; ct.warm_imports().join(); "
             "print(' '.join(n for n in ct.DRIFT_CHECK_IMPORTS if n not in sys.modules))")
    missing = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True).stdout.split()
    assert missing == [] and "evidently.presets" in DRIFT_CHECK_IMPORTS


def test_the_shadow_report_pairs_every_answer_and_scores_both_models_on_the_outcomes() -> None:
    """Each champion answer meets its shadow answer (same request, same position); the
    outcomes, joined on the id, give both models' real metrics on the same rows."""
    from mlpipeline.tasks.binary import classification_metrics
    from monitoring.shadow import pair_answers, shadow_evidence

    schema, target = PARAMS.schema, PARAMS.schema.target
    batch = synthetic_batch(PARAMS.source, 0).head(400)
    rng = np.random.default_rng(0)
    good = np.clip(batch[target] * 0.6 + rng.uniform(0, 0.4, len(batch)), 0, 1)  # the shadow
    bad = rng.uniform(0, 1, len(batch))  # the champion: a coin
    start = pd.Timestamp("2026-03-02", tz="UTC")
    served = batch[[schema.id_column, *schema.feature_names]].assign(
        request_id=[f"r{i // 2}" for i in range(len(batch))],  # two records per request
        served_at=start + pd.to_timedelta(np.arange(len(batch)), "s"))
    log = pd.concat([served.assign(probability=bad, model_version="1", role="champion"),
                     served.assign(probability=good, model_version="2", role="shadow")],
                    ignore_index=True)
    # Requests interleave in the parts (each request's records stay in their order).
    order = dict(zip(log["request_id"].unique(), rng.permutation(log["request_id"].nunique()),
                     strict=True))
    log = log.sort_values("request_id", key=lambda ids: ids.map(order), kind="stable")
    unanswered = served.iloc[[0]].assign(request_id="late", probability=0.5,
                                         model_version="1", role="champion")
    champion, shadow, missing = pair_answers(pd.concat([log, unanswered]), PARAMS.task)
    assert (len(champion), missing) == (400, 1)
    assert (champion[schema.id_column] == shadow[schema.id_column]).all()  # aligned

    evidence = shadow_evidence(champion, shadow, missing, PARAMS.task,
                               batch[[schema.id_column, *schema.feature_names, target]],
                               "roc_auc")
    assert (evidence["shadow_version"], evidence["requests"]) == ("2", 200)
    assert 0.3 < evidence["agreement"]["label_agreement"] < 0.8
    labelled = evidence["labelled"]
    assert labelled["rows"] == 400
    truth = batch[target].to_numpy()
    assert labelled["shadow"]["roc_auc"] == pytest.approx(
        classification_metrics(truth, good.to_numpy(), 0.5)["roc_auc"], abs=1e-6)
    assert labelled["champion"]["roc_auc"] == pytest.approx(
        classification_metrics(truth, bad, 0.5)["roc_auc"], abs=1e-6)
    assert labelled["shadow"]["roc_auc"] > 0.9 > labelled["champion"]["roc_auc"]


@pytest.mark.slow  # Evidently's UI takes ~20 s to start
def test_make_dashboard_prints_the_project_dashboard_address_and_shows_later_checks(
        trained_project: Project, tmp_path: Path) -> None:
    """The dashboard is live: a `make drift` while it runs is one more snapshot in the UI's
    own API, with no restart."""
    from monitoring.history import open_project
    from serving.launch import free_port, wait_http_ok

    project = Project(tmp_path / "copy")
    shutil.copytree(trained_project.root, project.root, symlinks=True)
    _, evidently_project = open_project(load_params(project.root))
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "monitoring.history", "ui", "--port",
                           str(port)], cwd=project.root, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    api = f"http://127.0.0.1:{port}/api/projects/{evidently_project.id}/snapshots"

    def snapshots() -> int:
        with urllib.request.urlopen(api, timeout=10) as answer:
            return len(json.loads(answer.read()))

    try:
        assert ui.stdout is not None
        line = ui.stdout.readline()
        url = f"http://127.0.0.1:{port}/projects/{evidently_project.id}"
        assert f"history: the dashboard on {url} " in line
        wait_http_ok(url, ui, timeout=60)  # Evidently's UI answers on that address
        before = snapshots()
        project.run(sys.executable, "-m", "monitoring.drift")  # what `make drift` runs
        deadline = time.monotonic() + 30
        while (now := snapshots()) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert now == before + 1, f"the running UI lists {now} snapshots, {before} before"
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
