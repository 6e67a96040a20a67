"""Stage `register`: register the new model, gate it against the floors and the champion, and
promote it when it passes.

Every trained model becomes a new version with alias `challenger` (while an earlier
challenger awaits a person's decision, only once the gate passes the new one, which then
supersedes it: one decision is pending at a time). The champion is scored
again on the current test split, so the comparison is like for like. A rejected model is a
normal outcome: the stage succeeds, the champion stays exactly as it was, and
reports/gate.json says why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mlpipeline.behaviour import BehaviourResult, directional, invariance
from mlpipeline.card import model_card
from mlpipeline.config import (
    GATE_REPORT,
    METRICS,
    MODEL_FILE,
    RUN_INFO,
    TEST_SPLIT,
    TRAIN_INFO,
    Params,
    load_params,
)
from mlpipeline.engine import session_for, uses_spark
from mlpipeline.evaluate import (
    check_rows_on_spark,
    from_scores,
    read_test_split,
    scores_on_spark,
)
from mlpipeline.gate import (
    Comparison,
    SliceResult,
    champion_seen_until,
    compare_slices,
    decide,
    format_table,
    slice_labels,
    unseen_rows,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def slice_comparison(params: Params, test: pd.DataFrame, challenger: np.ndarray,
                     champion: np.ndarray | None) -> list[SliceResult]:
    """gate.compare_metric of both models' scores on each slice of the test split (the
    gate.slices columns of `test`, its labels in the same order as the scores)."""
    task, schema, gate = params.task, params.schema, params.gate
    metric = str(gate.compare_metric)
    actual = test[schema.target].reset_index(drop=True)

    def scorer(scores: np.ndarray) -> Any:
        return lambda mask: task.metrics(actual[mask], np.asarray(scores)[mask])[metric]

    binned = set(schema.numeric) - set(schema.boolean)  # a boolean slices by its two values
    labels = slice_labels(test, gate.slices, binned, gate.slice_bins)
    return compare_slices(labels, scorer(challenger),
                          scorer(champion) if champion is not None else None,
                          lower_is_better=metric in task.lower_is_better,
                          min_rows=gate.slice_min_rows, tolerance=gate.slice_tolerance)


def behaviour_checks(params: Params, test: pd.DataFrame, model: Any) -> list[BehaviourResult]:
    """The schema's directional rules and gate.invariant_features on the test split."""
    task, schema, gate = params.task, params.schema, params.gate
    features = test[schema.feature_names].reset_index(drop=True)

    def score(rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(task.behaviour_score(task.scores(model, rows)), dtype=float)

    specs = {f.name: f for f in schema.features}
    results = [directional(features, f.name, f.expect, score, step=f.step, high=f.max,
                           max_share=gate.max_violation_share)
               for f in schema.features if f.expect]
    results += [invariance(features, name, specs[name].categories, score,
                           tolerance=gate.invariance_tolerance,
                           max_share=gate.max_violation_share, seed=gate.seed)
                for name in gate.invariant_features]
    return results


@dataclass
class Evidence:
    """What the gate weighs beside the challenger's metrics."""
    champion_metrics: dict[str, float] | None  # on the compared rows; None: not scored
    champion_error: str  # why the champion could not be scored ("" when it could)
    slices: list[SliceResult]
    behaviour: list[BehaviourResult]
    comparison: Comparison | None  # which rows the two were compared on (with a champion)


def earliest_time(path: Path, column: str) -> pd.Timestamp | None:
    """The oldest time in a Parquet file's column, from its footer's statistics (None:
    unknown), so the gate knows without reading the split whether the champion saw any of
    its rows."""
    footer = pq.ParquetFile(path).metadata
    index = footer.schema.to_arrow_schema().get_field_index(column)
    found = []
    for group in range(footer.num_row_groups):
        stats = footer.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        found.append(pd.Timestamp(stats.min))
    return min(found) if found else None


def gate_evidence(params: Params, model: Any, champion: Any | None,
                  challenger_metrics: dict[str, float],
                  champion_seen: tuple[pd.Timestamp | None, str] = (None, ""),
                  spark: SparkSession | None = None) -> Evidence:
    """What the gate weighs beside the challenger's metrics: the champion's metrics on the
    test rows after its own training (`champion_seen`: the newest time it trained on, and
    where that comes from), or why it could not be scored; the challenger's on the same
    rows; both models per slice of those rows; the challenger's behaviour on the check
    rows. With engine.kind: spark the test split is scored on the cluster and only labels,
    times, slice columns and scores come back."""
    schema, task = params.schema, params.task
    seen_until, seen_source = champion_seen
    earliest = earliest_time(params.path(TEST_SPLIT), schema.time_column)
    # The challenger is scored again only where its figures on the compared rows can differ
    # from its whole test split's (reports/metrics.json), or for the slices.
    overlap = champion is not None and seen_until is not None and (
        earliest is None or not unseen_rows(pd.Series([earliest]), seen_until)[0])
    keep = list(dict.fromkeys([schema.time_column, schema.target, *params.gate.slices]))
    models = {"challenger": model} if params.gate.slices or overlap else {}
    champion_error = ""
    if not uses_spark(params):
        test, check = read_test_split(params)
        scores = {name: task.scores(m, test[schema.feature_names]) for name, m in models.items()}
        if champion is not None:
            try:
                scores["champion"] = task.scores(champion, test[schema.feature_names])
            except Exception as error:  # e.g. the schema changed under the champion
                champion_error = f"{type(error).__name__}: {error}"
        table = test[keep].reset_index(drop=True)
    else:
        with session_for(params, "register", spark) as session:
            check = check_rows_on_spark(session, params)
            if champion is not None:
                try:  # fails here, with the model's own error, as in process
                    task.scores(champion, check.head(1)[schema.feature_names])
                    models["champion"] = champion
                except Exception as error:
                    champion_error = f"{type(error).__name__}: {error}"
            table, scores = (scores_on_spark(session, params, models, check.head(1), keep)
                             if models else (pd.DataFrame(columns=keep), {}))
    comparison, champion_metrics = None, None
    compared = np.ones(len(table), dtype=bool)
    if "champion" in scores:
        compared = unseen_rows(table[schema.time_column], seen_until)
        ours = challenger_metrics
        if not compared.all() and compared.any():
            ours = metrics_on(params, table, scores["challenger"], compared)
        comparison = Comparison(int(compared.sum()), len(table),
                                "" if seen_until is None else seen_until.isoformat(),
                                seen_source, ours if compared.any() else {})
        if compared.any():
            champion_metrics = metrics_on(params, table, scores["champion"], compared)
    slices = slice_comparison(
        params, table[compared], scores["challenger"][compared],
        scores["champion"][compared] if champion_metrics is not None else None
    ) if params.gate.slices else []
    return Evidence(champion_metrics, champion_error, slices,
                    behaviour_checks(params, check, model), comparison)


def metrics_on(params: Params, table: pd.DataFrame, scores: np.ndarray, rows: np.ndarray
               ) -> dict[str, float]:
    """A model's test metrics on some rows of the test table (`rows`: a mask)."""
    schema = params.schema
    return from_scores(table[schema.target][rows], scores[rows],
                       table[schema.time_column][rows], params)[0]


def main() -> None:
    params = load_params()
    run = json.loads(params.path(RUN_INFO).read_text())
    challenger_metrics = json.loads(params.path(METRICS).read_text())

    from mlpipeline.registry import (  # mlflow: paid only by MLflow stages
        AWAITING,
        CHALLENGER,
        CHAMPION,
        Registry,
    )

    registry = Registry(params)
    champion = registry.version_by_alias(CHAMPION)
    earlier = registry.version_by_alias(CHALLENGER)
    # A challenger still awaiting a decision keeps the alias unless this one passes the gate.
    waiting_before = earlier if earlier is not None and (
        earlier.tags.get("approval") == AWAITING) else None
    version = registry.register(run, challenger=waiting_before is None)

    champion_model, load_error = None, ""
    if champion is not None:
        try:
            champion_model = registry.load_sklearn(str(champion.version))
        except Exception as error:  # e.g. its artefact is gone
            load_error = f"{type(error).__name__}: {error}"
    model = joblib.load(params.path(MODEL_FILE))
    seen = (champion_seen_until(champion.tags, params.validate_.max_batch_days or 0)
            if champion is not None else (None, ""))
    evidence = gate_evidence(params, model, champion_model, challenger_metrics, seen)
    champion_error = load_error or evidence.champion_error
    slices, behaviour, comparison = evidence.slices, evidence.behaviour, evidence.comparison
    # Training is deterministic: the same artefact bytes mean the same model as the champion.
    same_model = champion is not None and champion.tags.get("model_md5") == run["model_md5"]

    verdict = decide(challenger_metrics, evidence.champion_metrics, params.gate,
                     lower_is_better=params.task.lower_is_better,
                     champion_version=str(champion.version) if champion else None,
                     same_model_as_champion=same_model, champion_error=champion_error,
                     slices=slices, behaviour=behaviour, comparison=comparison)

    # promotion.mode manual or shadow: a passing challenger waits for a person (make approve
    # or reject), superseding any challenger still waiting; in shadow mode the replicas
    # meanwhile score every request with it too (the registry's `shadow` tag tells them).
    mode = params.promotion.mode
    awaiting = verdict.promote and mode != "auto"
    gate_reason = reason = verdict.reason
    if awaiting:
        gate_reason = (reason.replace("promoted:", "passed the gate:", 1)
                       + f"; held for a decision (promotion.mode {mode})")
        reason = (reason.replace("promoted:", "passed the gate:", 1) + "; awaiting approval "
                  f"(promotion.mode {mode}): "
                  + ("answers every request in shadow beside the champion; make "
                     "shadow-report, then " if mode == "shadow" else "")
                  + f"make approve V={version} or make reject V={version}")
    registry.tag_version(version, {"gate": "passed" if verdict.promote else "rejected",
                                   "gate_reason": gate_reason})
    if awaiting:
        registry.hold(version, shadow=mode == "shadow", replaced=waiting_before)
    elif verdict.promote and waiting_before is not None:  # promoted past it: moot
        registry.set_challenger(version)
        registry.supersede(str(waiting_before.version), by=version)
    if verdict.promote and not awaiting:
        registry.set_champion(version, "gate pass", note=verdict.reason)
    now = registry.version_by_alias(CHAMPION)

    report = {
        "model": registry.name,
        "version": version,
        "promoted": verdict.promote and not awaiting,
        "awaiting_approval": awaiting,
        "reason": reason,
        "gate_reason": gate_reason,
        "checks": verdict.as_dict()["checks"],
        "challenger_metrics": challenger_metrics,
        "champion_before": None if champion is None else {
            "version": str(champion.version),
            "metrics_on_current_test": evidence.champion_metrics},
        # Which test rows the champion and the challenger were compared on.
        "comparison": None if comparison is None else comparison.as_dict(),
        "champion_after": None if now is None else str(now.version),
        "run_id": run["run_id"],
    }
    if slices:
        report["slices"] = [{**asdict(s), "slice": s.name} for s in slices]
    report["behaviour"] = [b.as_dict() for b in behaviour]
    params.path(GATE_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    train_info = json.loads(params.path(TRAIN_INFO).read_text())
    registry.describe(version, run["run_id"], model_card(params, report, run, train_info))
    registry.record_gate(
        run["run_id"], report,
        tags={"gate": "passed" if verdict.promote else "rejected",
              "gate_reason": gate_reason, "registered_version": version})

    alias = ("alias challenger" if verdict.promote or waiting_before is None else
             f"challenger stays v{waiting_before.version}, still awaiting a decision")
    print(f"register: {registry.name} v{version} ({alias}), gate "
          f"{'PASSED' if verdict.promote else 'REJECTED'}")
    if waiting_before is not None and verdict.promote:
        print(f"register: v{waiting_before.version}, which awaited a decision, is superseded "
              f"by v{version}")
    if comparison is not None and comparison.restricted:
        print(f"register: champion v{champion.version} trained on rows up to "  # type: ignore[union-attr]
              f"{comparison.champion_trained_until} ({comparison.source}): compared on "
              + (f"the {comparison.rows} of {comparison.test_rows} test rows after that"
                 if comparison.rows else
                 f"none of the {comparison.test_rows} test rows (all are older): comparison "
                 "skipped, the challenger is not promoted automatically"))
    print(format_table(verdict))
    if slices:
        compared = [s for s in slices if s.passed is not None]
        print(f"register: {len(compared)} of {len(slices)} slices compared on "
              f"{params.gate.compare_metric}, {sum(not s.passed for s in compared)} worse "
              f"than the champion by more than {params.gate.slice_tolerance} "
              f"(table: {GATE_REPORT}, MLflow gate_slices.json)")
    for result in behaviour:
        print(f"register: {result.name}: {'pass' if result.passed else 'FAIL'}, "
              f"{result.summary}")
    before = f"v{champion.version}" if champion else "none"
    after = f"v{now.version}" if now else "none"
    print(f"register: {reason}; champion {before} -> {after} -> {GATE_REPORT}")


if __name__ == "__main__":
    main()
