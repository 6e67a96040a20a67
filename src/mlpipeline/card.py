"""The model card: what a reviewer reads before a version serves. A plain function from the
registration's figures to Markdown; `register` writes it as the version's description in the
registry (the MLflow UI shows it on the version's page) and as the run's `model_card.md`.
`make card V=n` prints it from the registry.
"""

from __future__ import annotations

from typing import Any

from mlpipeline.config import Params

# MLflow's UI draws Markdown tables without cell padding: two numbers side by side read as
# one ("0.77130.7000"). Each cell ends in two no-break spaces, which neither Markdown nor
# the browser trims, and each value is a code span: columns apart in any renderer (seen in
# Chromium on MLflow 3.17's version page).
GAP = "\u00a0\u00a0"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table: headers and the first column as text, the values as code spans,
    each followed by the gap."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = f"{value:.4f}"
        text = ("-" if value is None or value == "" else
                str(value).replace("|", "/").replace("\n", " "))
        return "`" + text.replace("`", "'") + "`" + GAP

    return ["| " + " | ".join(f"{name}{GAP}" for name in header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join([f"{row[0]}{GAP}", *(cell(v) for v in row[1:])]) + " |"
              for row in rows)]


AWAITING_LINE = "**PASSED, awaiting approval**"  # the registry rewrites it on the decision
AWAITING_PREFIX = "Awaiting a decision"  # the paragraph the decision removes


def awaiting_paragraph(mode: str, version: str) -> str:
    return (f"{AWAITING_PREFIX} (promotion.mode {mode}): "
            + ("it answers every request in shadow beside the champion; `make shadow-report`, "
               "then " if mode == "shadow" else "")
            + f"`make approve V={version}` or `make reject V={version}`.")


def compared_rows(champion: str, comparison: dict[str, Any] | None) -> str:
    """How the champion was compared, after "On the window's latest rows, never seen in
    training": on the same rows, on those after its own training, or not at all."""
    if not comparison:
        return "."
    rows, total = comparison["rows"], comparison["test_rows"]
    until = comparison["champion_trained_until"]
    if rows == total:
        return f"; the champion {champion} scored again on the same rows."
    if rows:
        return (f"; the champion {champion} scored again on the {rows} of these {total} rows "
                f"after its own training (to {until}), and this version on the same rows.")
    return (f"; the champion {champion} is not compared: none of the {total} test rows is "
            f"newer than its training (to {until}).")


def model_card(params: Params, report: dict[str, Any], run: dict[str, Any],
               train_info: dict[str, Any]) -> str:
    """Markdown for one registered version: purpose, data, metrics, slices, behaviour, the
    gate's verdict, shadow evidence and lineage. `report` is reports/gate.json's content,
    `run` reports/run.json's, `train_info` models/train_info.json's."""
    schema, task = params.schema, params.task
    version = report["version"]
    verdict = (AWAITING_LINE if report.get("awaiting_approval") else
               "**PASSED**" if report["promoted"] else "**REJECTED**")
    labels = f" ({', '.join(map(str, schema.classes))})" if schema.classes else ""
    before = report.get("champion_before")
    compared = f"v{before['version']}" if before else "(none yet)"
    lines = [f"# {report['model']} v{version}", "",
             "## Purpose", "",
             params.card.purpose or f"Predicts `{schema.target}` ({task.name}{labels}).", "",
             f"Owner: {params.card.owner}." if params.card.owner else "",
             f"Model: {train_info.get('model')} ({task.name}). Answer: {task.decision}.", "",
             "## Data", "",
             *markdown_table(["", "value"], [
                 ["training window", run.get("training_window")],
                 ["training rows", train_info.get("train_rows")],
                 ["test rows", int(report["challenger_metrics"].get("rows") or 0)],
                 ["training split (DVC md5)", run.get("data_version")],
                 ["raw batches (DVC md5)", run.get("raw_data_version")]]), "",
             "## Test metrics", "",
             "On the window's latest rows, never seen in training" + compared_rows(
                 compared, report.get("comparison")), ""]
    champion = (before or {}).get("metrics_on_current_test") or {}
    metrics = {k: v for k, v in report["challenger_metrics"].items() if k != "rows"}
    comparison = report.get("comparison") or {}
    if comparison.get("rows") and comparison["rows"] < comparison["test_rows"]:
        ours = comparison["challenger"]
        lines += [*markdown_table(["metric", "this version", "this version, same rows",
                                   "champion"],
                                  [[k, v, ours.get(k), champion.get(k)]
                                   for k, v in metrics.items()]), ""]
    else:
        lines += [*markdown_table(["metric", "this version", "champion"],
                                  [[k, v, champion.get(k)] for k, v in metrics.items()]), ""]
    lines += ["## Gate", "", f"{verdict}: {report.get('gate_reason', report['reason'])}", "",
              *([awaiting_paragraph(params.promotion.mode, version), ""]
                if report.get("awaiting_approval") else []),
              *markdown_table(["check", "value", "threshold", "result"],
                              [[c["name"], c["value"], c["threshold"],
                                "pass" if c["passed"] else "FAIL"] for c in report["checks"]]), ""]
    if report.get("slices"):
        lines += [f"### Slices ({params.gate.compare_metric}, tolerance "
                  f"{params.gate.slice_tolerance})", "",
                  *markdown_table(["slice", "rows", "this version", "champion", "result"],
                                  [[s["slice"], s["rows"], s["challenger"], s["champion"],
                                    {True: "pass", False: "FAIL"}.get(s["passed"], s["note"])]
                                   for s in report["slices"]]), ""]
    else:  # say so: a reviewer must not read a missing section as slices that passed
        lines += ["### Slices", "", "Not checked (gate.slices is empty).", ""]
    if report.get("behaviour"):
        lines += ["### Behaviour", "",
                  *markdown_table(["check", "expectation", "rows moved", "broke it", "result"],
                                  [[b["check"] + " " + b["feature"], b["expectation"], b["rows"],
                                    f"{b['share']:.1%}", "pass" if b["passed"] else "FAIL"]
                                   for b in report["behaviour"]]), ""]
    lines += ["## Shadow evidence", "",
              "None yet: this version has not answered live requests beside the champion.", "",
              "## Lineage", "",
              *markdown_table(["", "value"], [
                  ["git commit", f"{run.get('git_commit')}"
                   + (" (uncommitted changes)" if run.get("git_dirty") == "true" else "")],
                  ["MLflow run", run.get("run_id")],
                  ["params hash", run.get("params_hash")],
                  ["model artefact (md5)", run.get("model_md5")],
                  ["hyper-parameters", ", ".join(f"{k}={v}" for k, v in
                                                 (train_info.get("hyperparams") or {}).items())],
                  ["hyper-parameters from", train_info.get("hyperparams_source")
                   or "params.yaml"],
                  *([["search (MLflow run)", run["tune_run_id"]]]
                    if run.get("tune_run_id") else [])]),
              ""]
    return "\n".join(line for line in lines if line is not None).replace("\n\n\n", "\n\n")


SHADOW_HEADING = "## Shadow evidence"


def with_shadow_evidence(card: str, evidence: dict[str, Any]) -> str:
    """The card with its shadow section replaced by `evidence` (monitoring.shadow's)."""
    agreement = ", ".join(f"{k.replace('_', ' ')} {v:.4f}"
                          for k, v in evidence["agreement"].items())
    lines = [SHADOW_HEADING, "",
             f"Beside champion v{evidence['champion_version']} on {evidence['requests']} live "
             f"requests ({evidence['rows']} rows; "
             f"{evidence['requests_without_shadow_answer']} without a shadow answer): "
             f"{agreement}.", ""]
    labelled = evidence.get("labelled")
    if labelled:
        lines += [f"On the {labelled['rows']} of them whose outcomes arrived:", "",
                  *markdown_table(["metric", "this version", "champion"],
                                  [[k, v, labelled["champion"].get(k)]
                                   for k, v in labelled["shadow"].items() if k != "rows"]), ""]
    else:
        lines += ["No outcomes joined yet.", ""]
    section = "\n".join(lines)
    if SHADOW_HEADING not in card:
        return card.rstrip() + "\n\n" + section
    before, rest = card.split(SHADOW_HEADING, 1)
    following = rest.find("\n## ")  # the next section (lineage) stays as it was
    return before + section + ("\n" + rest[following + 1:] if following >= 0 else "")
