"""The shadow report (`make shadow-report`): how the challenger answering in shadow
(promotion.mode shadow) compares with the champion on the same live requests.

Each shadow answer is paired with the champion's answer to the same record (same request id,
same position in the request). From the pairs: agreement (classification: the share of equal
labels and the correlation of the scores; regression: the mean absolute difference of the
predictions). Where outcomes have arrived (the newest batch, joined by id as the drift check
joins them), both models' real metrics on the same requests. `pair_answers` and
`shadow_evidence` are plain functions; reading the log and the batch happens in `main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.config import Params, load_params
from mlpipeline.prediction_log import SHADOW, log_types, read_log
from mlpipeline.tasks import Task
from monitoring.drift import batch_window, logged_outcomes

REPORT = "shadow.json"  # in monitoring.report_dir


def pair_answers(log: pd.DataFrame, task: Task) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(champion rows, their shadow's rows, champion requests without a shadow answer), the
    two tables aligned row for row, for the newest shadow version in the log."""
    if log.empty or "role" not in log.columns or not (log["role"] == SHADOW).any():
        return pd.DataFrame(), pd.DataFrame(), 0
    log = log.assign(_at=log.groupby(["request_id", "role"], dropna=False).cumcount())
    shadowed = log[log["role"] == SHADOW]
    version = shadowed.sort_values("served_at")["model_version"].iloc[-1]
    shadowed = shadowed[shadowed["model_version"] == version]
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


def describe(evidence: dict[str, Any]) -> str:
    if not evidence["shadow_version"]:
        return ("shadow: no shadow answers in the prediction log (promotion.mode shadow, and "
                "a challenger awaiting approval, make the replicas answer in shadow)")
    lines = [f"shadow: v{evidence['shadow_version']} beside champion "
             f"v{evidence['champion_version']} on {evidence['requests']} requests "
             f"({evidence['rows']} rows); {evidence['requests_without_shadow_answer']} "
             "requests without a shadow answer",
             "  agreement: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                         evidence["agreement"].items())]
    labelled = evidence["labelled"]
    if labelled:
        metric = labelled["compare_metric"]
        lines.append(f"  on {labelled['rows']} labelled rows: {metric} champion "
                     f"{labelled['champion'][metric]:.4f}, shadow "
                     f"{labelled['shadow'][metric]:.4f}")
    else:
        lines.append("  no outcomes joined yet: agreement only")
    return "\n".join(lines)


def shadow_report(params: Params) -> dict[str, Any]:
    task = params.task
    log = read_log(params.path(params.serving.prediction_log_dir), shadow=True,
                   types=log_types(params.schema))
    champion, shadow, missing = pair_answers(log, task)
    try:
        labelled: pd.DataFrame | None = batch_window(params).frame
    except SystemExit:  # no batch with outcomes yet
        labelled = None
    if labelled is not None and params.schema.target in labelled.columns:
        labelled = labelled[labelled[params.schema.target].notna()]
    else:
        labelled = None
    evidence = shadow_evidence(champion, shadow, missing, task, labelled,
                               str(params.gate.compare_metric))
    folder = params.path(params.monitoring.report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT).write_text(json.dumps(evidence, indent=2) + "\n")
    return evidence


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.shadow",
                                     description="The shadow model beside the champion.")
    parser.parse_args(argv)
    params = load_params()
    evidence = shadow_report(params)
    print(describe(evidence))
    print(f"shadow: -> {params.monitoring.report_dir}/{REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
