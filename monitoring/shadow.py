"""The shadow report (`make shadow-report`): how the challenger answering in shadow (the
waiting version the registry tags `shadow: true`) compares with the champion on the same
live requests, and what the next CT cycle will do with it.

Each shadow answer is paired with the champion's answer to the same record (same request id,
same position in the request). From the pairs: agreement (classification: the share of equal
labels and the correlation of the scores; regression: the mean absolute difference of the
predictions). Where outcomes have arrived (every batch landed after the version's training
window, joined by id as the drift check joins them), both models' real metrics on the same
requests: all the evidence since the shadow began, not one batch's. `pair_answers`,
`shadow_evidence` and `decide.shadow_verdict` are plain functions; reading the registry, the
log and the batches happens in `shadow_report`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.config import RAW_DIR, Params, load_params
from mlpipeline.prediction_log import SHADOW, log_types, read_log
from mlpipeline.schema import coerce
from mlpipeline.source import dated_batches, read_batch
from mlpipeline.tasks import Task
from monitoring import decide
from monitoring.drift import logged_outcomes

REPORT = "shadow.json"  # in monitoring.report_dir


def pair_answers(log: pd.DataFrame, task: Task, version: str | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(champion rows, their shadow's rows, champion requests without a shadow answer), the
    two tables aligned row for row, for shadow `version` (default: the newest in the log)."""
    if log.empty or "role" not in log.columns or not (log["role"] == SHADOW).any():
        return pd.DataFrame(), pd.DataFrame(), 0
    log = log.assign(_at=log.groupby(["request_id", "role"], dropna=False).cumcount())
    shadowed = log[log["role"] == SHADOW]
    if version is None:
        version = shadowed.sort_values("served_at")["model_version"].iloc[-1]
    shadowed = shadowed[shadowed["model_version"].astype(str) == str(version)]
    if shadowed.empty:
        return pd.DataFrame(), pd.DataFrame(), 0
    served = log[log["role"] != SHADOW]
    # Its time in shadow: from the first request it answered too (answered just after).
    first = served.loc[served["request_id"].isin(shadowed["request_id"]), "served_at"].min()
    served = served[served["served_at"] >= first]
    pairs = served.merge(shadowed[["request_id", "_at", *task.log_score_columns,
                                   "model_version"]],
                         on=["request_id", "_at"], how="inner", suffixes=("", "_shadow"))
    missing = served["request_id"].nunique() - pairs["request_id"].nunique()
    champion = pairs.drop(columns=[c for c in pairs.columns if c.endswith("_shadow")])
    shadow = champion.assign(**{c: pairs[f"{c}_shadow"].to_numpy()
                                for c in [*task.log_score_columns, "model_version"]})
    return champion.drop(columns="_at"), shadow.drop(columns="_at"), int(missing)


def shadow_evidence(champion: pd.DataFrame, shadow: pd.DataFrame, missing: int, task: Task,
                    labelled: pd.DataFrame | None, compare_metric: str) -> dict[str, Any]:
    """Agreement over every paired request; both models' metrics on the labelled ones."""
    if champion.empty:
        return {"shadow_version": None, "requests": 0, "rows": 0,
                "requests_without_shadow_answer": missing, "agreement": {}, "labelled": None}
    ours, theirs = task.scores_from_log(champion), task.scores_from_log(shadow)
    agreement: dict[str, float] = {}
    if task.name == "regression":
        agreement["mean_absolute_difference"] = round(float(np.abs(ours - theirs).mean()), 6)
    else:
        agreement["label_agreement"] = round(float(
            (task.predictions(ours) == task.predictions(theirs)).mean()), 6)
        a, b = task.behaviour_score(ours), task.behaviour_score(theirs)
        agreement["score_correlation"] = (round(float(np.corrcoef(a, b)[0, 1]), 6)
                                          if a.std() > 0 and b.std() > 0 else 1.0)
    result: dict[str, Any] = {
        "champion_version": str(champion["model_version"].iloc[-1]),
        "shadow_version": str(shadow["model_version"].iloc[0]),
        "requests": int(champion["request_id"].nunique()), "rows": len(champion),
        "requests_without_shadow_answer": missing, "agreement": agreement, "labelled": None}
    if labelled is not None and not labelled.empty:
        # Both tables differ only in their answers: the outcomes join the same rows to each.
        target = task.schema.target
        served, shadowed = (logged_outcomes(champion, labelled, task),
                            logged_outcomes(shadow, labelled, task))
        if len(served) and len(served) == len(shadowed):
            result["labelled"] = {
                "rows": len(served), "compare_metric": compare_metric,
                "champion": task.metrics(served[target], task.scores_from_log(served)),
                "shadow": task.metrics(shadowed[target], task.scores_from_log(shadowed))}
    return result


def describe(report: dict[str, Any]) -> str:
    """What `make shadow-report` prints: the current shadow, its evidence, what the next CT
    cycle will decide and what a person can do."""
    current, state = report.get("current"), report.get("state")
    if not report["shadow_version"]:
        if current:
            return (f"shadow: v{current} waits in shadow; none of its answers are logged yet "
                    "(replicas start within one poll period)\n"
                    f"  next CT cycle: {report['verdict']['action']}: "
                    f"{report['verdict']['reason']}")
        return ("shadow: no challenger is in shadow (the registry has no waiting challenger "
                "tagged `shadow: true`; under promotion.mode shadow, `register` tags the one "
                "the gate passes) and no shadow answers are logged")
    lines = []
    if not current:
        lines.append(f"shadow: no challenger is in shadow now; the newest shadow answers in "
                     f"the log are v{report['shadow_version']}'s, {state or 'decided'}")
    lines += [f"shadow: v{report['shadow_version']} beside champion "
              f"v{report['champion_version']} on {report['requests']} requests "
              f"({report['rows']} rows); {report['requests_without_shadow_answer']} "
              "requests without a shadow answer",
              "  agreement: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                          report["agreement"].items())]
    labelled = report["labelled"]
    if labelled:
        metric = labelled["compare_metric"]
        lines.append(f"  on {labelled['rows']} labelled rows: {metric} champion "
                     f"{labelled['champion'][metric]:.4f}, shadow "
                     f"{labelled['shadow'][metric]:.4f}")
    else:
        lines.append("  no outcomes joined yet: agreement only")
    if current:
        verdict = report["verdict"]
        lines += [f"  next CT cycle: {verdict['action']}: {verdict['reason']}",
                  f"  or decide now: make approve V={current} NOTE=\"...\", or make reject "
                  f"V={current} NOTE=\"...\""]
    return "\n".join(lines)


def current_shadow(registry: Any) -> Any | None:
    """The registry's shadow: the waiting challenger tagged `shadow: true` (None: none)."""
    from mlpipeline.registry import CHALLENGER, in_shadow

    waiting = registry.version_by_alias(CHALLENGER)
    return waiting if in_shadow(waiting) else None


def outcomes_after(params: Params, after: dt.date | None) -> pd.DataFrame | None:
    """The labelled rows of every landed batch dated after `after` (all when None): the
    outcomes of requests a shadow answered, whichever batch brought them."""
    raw = params.path(RAW_DIR)
    target = params.schema.target
    frames = []
    for day, file in dated_batches(raw) if raw.is_dir() else []:
        if after is None or day > after:
            frame = coerce(read_batch(file), params.schema)
            if target in frame.columns:
                frames.append(frame[frame[target].notna()])
    return pd.concat(frames, ignore_index=True) if frames else None


def shadow_report(params: Params, registry: Any) -> dict[str, Any]:
    """The evidence on the registry's shadow (else on the log's newest one, named as no
    longer current) and, for a current shadow, the verdict the next CT cycle will reach."""
    from mlpipeline.registry import window_end

    task = params.task
    waiting = current_shadow(registry)
    current = str(waiting.version) if waiting is not None else None
    log = read_log(params.path(params.serving.prediction_log_dir), shadow=True,
                   types=log_types(params.schema))
    champion, shadow, missing = pair_answers(log, task, current)
    version = current or (str(shadow["model_version"].iloc[0]) if len(shadow) else None)
    described = (waiting if waiting is not None or version is None
                 else registry.client.get_model_version(registry.name, version))
    evidence = shadow_evidence(champion, shadow, missing, task,
                               outcomes_after(params, window_end(described)) if version
                               else None, str(params.gate.compare_metric))
    report: dict[str, Any] = {**evidence, "current": current, "state": None, "verdict": None}
    if current is None and described is not None:
        tags = described.tags
        report["state"] = (f"superseded by v{tags['superseded_by']}" if tags.get("superseded_by")
                           else tags.get("approval"))
    if current is not None:
        gate = params.gate
        metric = str(gate.compare_metric)
        verdict = (decide.shadow_verdict(
            evidence, min_rows=params.promotion.shadow_min_rows, metric=metric,
            tolerance=gate.tolerance, lower_is_better=metric in task.lower_is_better)
            if evidence["shadow_version"] == current else
            decide.ShadowVerdict(decide.KEEP, current,
                                 f"v{current} kept in shadow: none of its answers logged yet"))
        report["verdict"] = verdict.as_dict()
    folder = params.path(params.monitoring.report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.shadow",
                                     description="The shadow model beside the champion.")
    parser.parse_args(argv)
    params = load_params()
    from mlpipeline.registry import Registry  # mlflow: paid by this command only

    registry = Registry(params)
    report = shadow_report(params, registry)
    if report["current"] and report["shadow_version"]:  # the evidence into its model card
        registry.record_shadow_evidence(report["current"], report)
    print(describe(report))
    print(f"shadow: -> {params.monitoring.report_dir}/{REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
