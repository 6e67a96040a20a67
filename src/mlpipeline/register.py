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
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pandas as pd

from mlpipeline.behaviour import BehaviourResult, directional, invariance
from mlpipeline.card import model_card
from mlpipeline.config import (
    GATE_REPORT,
    METRICS,
    MODEL_FILE,
    RUN_INFO,
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
    SliceResult,
    compare_slices,
    decide,
    format_table,
    slice_labels,
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


def gate_evidence(params: Params, model: Any, champion: Any | None,
                  spark: SparkSession | None = None
                  ) -> tuple[dict[str, float] | None, str, list[SliceResult],
                             list[BehaviourResult]]:
    """What the gate weighs beside the challenger's metrics: the champion's metrics on the
    current test split (or why it could not be scored), both models per slice, the
    challenger's behaviour on the check rows. With engine.kind: spark the test split is
    scored on the cluster and only labels, slice columns and scores come back."""
    schema, task = params.schema, params.task
    keep = list(dict.fromkeys([schema.time_column, schema.target, *params.gate.slices]))
    models = {"challenger": model} if params.gate.slices else {}
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
    champion_metrics = None if "champion" not in scores else from_scores(
        table[schema.target], scores["champion"], table[schema.time_column], params)[0]
    slices = slice_comparison(params, table, scores["challenger"], scores.get("champion")
                              ) if params.gate.slices else []
    return champion_metrics, champion_error, slices, behaviour_checks(params, check, model)


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
    champion_metrics, champion_error, slices, behaviour = gate_evidence(
        params, model, champion_model)
    champion_error = load_error or champion_error
    # Training is deterministic: the same artefact bytes mean the same model as the champion.
    same_model = champion is not None and champion.tags.get("model_md5") == run["model_md5"]

    verdict = decide(challenger_metrics, champion_metrics, params.gate,
                     lower_is_better=params.task.lower_is_better,
                     champion_version=str(champion.version) if champion else None,
                     same_model_as_champion=same_model, champion_error=champion_error,
                     slices=slices, behaviour=behaviour)

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
            "version": str(champion.version), "metrics_on_current_test": champion_metrics},
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
