"""The drift check: production data against the champion's own training reference.

`python -m monitoring.drift [--current batch|log|OUTPUT] [--since T] [--until T]`

- Reference: the sample `prepare` drew from the champion's training split, logged with the
  champion's MLflow run; never whatever happens to be in data/prepared/.
- Current window: the newest raw batch (`batch`), or the service's prediction log over a
  time span (`log`; default the last `monitoring.log_window_hours`).
- Columns and types come from the schema in params.yaml, as for `validate` and the service.
- Evidently's DataDriftPreset runs one drift test per feature (method and threshold from
  params.yaml, or Evidently's defaults); the HTML report is Evidently's own.
- Performance: where the window carries outcomes (a raw batch does), the predictions the
  service logged for those rows are joined with them (on the id, schema.id_column, where
  request and outcome carry one; else on the feature values) and scored
  against gate.min_metrics; with no logged traffic, the champion is re-scored on them. A drop
  below a floor is a second trigger.

Writes <report_dir>/drift_report.html and drift.json (figures, window, verdict and reasons),
drift.prom for Prometheus, and adds the check to the Evidently history (monitoring.history).
Imports mlflow and evidently (~6 s each): it runs in its own process, never in the service.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.config import RAW_DIR, Params, load_params
from mlpipeline.engine import session_for, uses_spark
from mlpipeline.prediction_log import (
    QUARANTINE,
    log_types,
    not_read,
    read_log,
    sampled_log_table,
)
from mlpipeline.schema import PREDICTION_COLUMN, Schema, coerce, row_ids
from mlpipeline.source import dated_batches, read_batch
from mlpipeline.tasks import Task
from monitoring import decide, history, prom

REPORT_HTML = "drift_report.html"
REPORT_JSON = "drift.json"


def newest_batch(raw_dir: Path) -> tuple[dt.date, Path] | None:
    """The latest batch the source delivered, by the date in its name."""
    dated = dated_batches(raw_dir) if raw_dir.is_dir() else []
    return dated[-1] if dated else None


def typed_features(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Schema-typed feature columns (and the target where present) of any table."""
    numeric = {name: pd.to_numeric(frame[name], errors="coerce").astype("float64")
               for name in schema.numeric}
    categorical = {name: frame[name].where(frame[name].isna(), frame[name].astype(str))
                   for name in schema.categorical}
    return pd.DataFrame({**numeric, **categorical})[schema.feature_names]


def logged_outcomes(log: pd.DataFrame, labelled: pd.DataFrame, task: Task) -> pd.DataFrame:
    """The served predictions of the rows whose outcomes arrived: on the id where both carry
    one (schema.id_column), else on the feature values, with log rows that have no id. Every
    version that answered an outcome's row keeps its answer (its latest, when it answered
    more than once): one row per outcome and version. `joined_on` says which join found it,
    `_outcome` which outcome (its place among the labelled rows).

    An outcome whose id is not in the log is never matched on its features with a row
    logged under another id: that is another application that only looks the same.
    The answers are the task's logged score columns (e.g. `probability`) and the version."""
    schema = task.schema
    keys = schema.feature_names
    answers = [*task.log_score_columns, "model_version"]
    if log.empty or not {*keys, *answers} <= set(log.columns):
        return pd.DataFrame(columns=[*keys, schema.target, *answers, "joined_on", OUTCOME])
    served = typed_features(log, schema).assign(
        **{name: log[name].to_numpy() for name in answers}, _id=_ids(log, schema))
    outcomes = typed_features(labelled, schema).assign(
        **{schema.target: labelled[schema.target].to_numpy()}, _id=_ids(labelled, schema),
        **{OUTCOME: np.arange(len(labelled))})
    version = served["model_version"].astype(str)
    with_id = served[served["_id"].notna()].assign(_version=version).drop_duplicates(
        ["_id", "_version"], keep="last")
    by_id = outcomes[outcomes["_id"].notna()].merge(with_id[["_id", *answers]], on="_id",
                                                    how="inner")
    rest = outcomes[~outcomes["_id"].isin(by_id["_id"]) | outcomes["_id"].isna()]
    anonymous = served[served["_id"].isna()].assign(_version=version).drop_duplicates(
        [*keys, "_version"], keep="last")
    by_features = rest.merge(anonymous[[*keys, *answers]], on=keys, how="inner")
    joined = pd.concat([by_id.assign(joined_on="id"), by_features.assign(joined_on="features")],
                       ignore_index=True)
    return joined.drop(columns="_id")


OUTCOME = "_outcome"  # logged_outcomes: which labelled row a joined answer is for


def join_counts(joined: pd.DataFrame, outcomes: int) -> dict[str, int]:
    """How the outcomes found their predictions, for the report: each outcome once, however
    many versions answered it."""
    found = joined.drop_duplicates(OUTCOME)
    on_id = int((found["joined_on"] == "id").sum())
    return {"on_id": on_id, "on_features": len(found) - on_id,
            "outcomes_without_prediction": outcomes - len(found)}


def _ids(frame: pd.DataFrame, schema: Schema) -> pd.Series:
    if schema.id_column is None or schema.id_column not in frame.columns:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    return row_ids(frame[schema.id_column])


@dataclass
class Window:
    kind: str  # batch | log
    description: str
    frame: pd.DataFrame  # typed features; the target too for a labelled batch
    batch: str | None = None  # the batch's first day (kind=batch)
    until: str | None = None  # the log window's end (kind=log)
    served: pd.DataFrame | None = None  # kind=log: the logged rows, answers included
    rows: int | None = None  # rows in the window, when `frame` is a sample of them

    @property
    def size(self) -> int:
        return len(self.frame) if self.rows is None else self.rows


def batch_window(params: Params) -> Window:
    found = newest_batch(params.path(RAW_DIR))
    if found is None:
        raise SystemExit(f"drift: no batch in {RAW_DIR}/: run the pipeline first (make demo)")
    day, file = found
    frame = coerce(read_batch(file), params.schema)
    return Window("batch", f"batch {day} ({file.name})", frame, batch=day.isoformat())


def log_window(params: Params, since: dt.datetime | None, until: dt.datetime | None,
               request_id: str | None = None, described: str | None = None) -> Window:
    until = until or dt.datetime.now(dt.UTC)
    since = since or until - dt.timedelta(hours=params.monitoring.log_window_hours)
    schema, task = params.schema, params.task
    with contextlib.ExitStack() as stack:  # on Spark the log is read and sampled there
        spark = stack.enter_context(session_for(params, "drift")) if uses_spark(params) else None
        table, rows = sampled_log_table(
            params.path(params.serving.prediction_log_dir), since, until,
            [*schema.feature_names, *task.log_score_columns], log_types(schema),
            params.monitoring.max_rows, request_id, spark)
    log = pd.DataFrame() if table is None else table.to_pandas()
    frame = (typed_features(log, schema) if not log.empty
             else pd.DataFrame(columns=schema.feature_names))
    return Window("log", described or f"prediction log {since.isoformat(timespec='seconds')}"
                                      f" .. {until.isoformat(timespec='seconds')}", frame,
                  until=until.isoformat(timespec="seconds"), served=log, rows=rows)


def job_window(params: Params, output: Path) -> Window:
    """The records one batch job scored (`make score`'s OUTPUT), read back from the
    prediction log by the job's id, in the span its manifest gives."""
    manifest_file = output / "manifest.json"
    if not manifest_file.is_file():
        raise SystemExit(f"drift: --current {output}: no manifest.json there; give batch, log "
                         "or the OUTPUT folder of a `make score` job")
    manifest = json.loads(manifest_file.read_text())
    job = manifest["prediction_log"]["request_id"]
    since = _time(manifest["started_at"])
    until = _time(manifest["ended_at"]) + dt.timedelta(seconds=1)  # the end, in seconds
    window = log_window(params, since, until, job, f"batch job {job} ({output})")
    if window.size == 0 and manifest["rows"]["scored"]:
        raise SystemExit(f"drift: the prediction log ({params.serving.prediction_log_dir}) has "
                         f"none of job {job}'s {manifest['rows']['scored']} records: a log "
                         "elsewhere, or removed by serving.log_retention_days")
    return window


def feature_dataset(frame: pd.DataFrame, schema: Schema) -> Any:
    """A table's schema-typed features as an Evidently Dataset (zero rows included)."""
    return drift_dataset(typed_features(frame, schema), schema.numeric, schema.categorical)


def drift_dataset(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> Any:
    from evidently import DataDefinition, Dataset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    with warnings.catch_warnings():  # zero rows: Evidently's column stats divide by zero
        warnings.simplefilter("ignore", RuntimeWarning)
        return Dataset.from_pandas(frame[[*numeric, *categorical]], data_definition=definition)


def evidently_report(reference: pd.DataFrame, current: pd.DataFrame, params: Params,
                     predictions: tuple[pd.Series, bool] | None = None,
                     window_rows: int | None = None) -> tuple[Any, decide.DriftResult]:
    """Feature drift (Evidently's DataDriftPreset), target drift where both tables hold the
    target, and prediction drift when `predictions` (the served or re-scored predictions
    of the window, and whether they are numbers) and the reference's own are given. A
    window over monitoring.max_rows is tested on a seeded sample; `window_rows` is its size
    when `current` is already one."""
    from evidently import Report
    from evidently.metrics import RowCount, ValueDrift
    from evidently.presets import DataDriftPreset

    schema, settings = params.schema, params.monitoring
    test = {"method": settings.drift_method, "threshold": settings.drift_threshold}
    preset = DataDriftPreset(columns=schema.feature_names, drift_share=settings.drift_share,
                             **test)
    rows = window_rows or len(current)
    current = sampled(current, settings.max_rows)
    if predictions is not None:
        predictions = (sampled(predictions[0], settings.max_rows), predictions[1])
    features = typed_features(current, schema)
    baseline = typed_features(reference, schema)
    numeric, categorical = list(schema.numeric), list(schema.categorical)
    target = schema.target
    metrics: list[Any] = [preset, RowCount()]  # rows: for the history
    if target in current.columns and target in reference.columns:
        features[target] = current[target].to_numpy()
        baseline[target] = reference[target].to_numpy()
        (numeric if schema.numeric_target else categorical).append(target)
        metrics.append(ValueDrift(column=target, **test))
    snapshot = Report(metrics, include_tests=True).run(
        drift_dataset(features, numeric, categorical),
        drift_dataset(baseline, numeric, categorical))
    found = decide.column_drift(snapshot.dict(), [*schema.feature_names,
                                                  *([target] if target in numeric + categorical
                                                    else [])])
    outputs = {"target": found[target]} if target in found else {}
    snapshots = [snapshot]
    if (predictions is not None and PREDICTION_COLUMN in reference.columns
            and len(predictions[0]) >= settings.min_rows):
        values, is_number = predictions
        kind = ([PREDICTION_COLUMN], []) if is_number else ([], [PREDICTION_COLUMN])
        served = pd.DataFrame({PREDICTION_COLUMN: values.to_numpy()})
        own = reference[[PREDICTION_COLUMN]]
        drifted = Report([ValueDrift(column=PREDICTION_COLUMN, **test)], include_tests=True).run(
            drift_dataset(served, *kind), drift_dataset(own, *kind))
        outputs["prediction"] = decide.column_drift(drifted.dict(), [PREDICTION_COLUMN])[
            PREDICTION_COLUMN]
        snapshots.append(drifted)
    return history.merged(snapshots), decide.DriftResult(
        [found[name] for name in schema.feature_names], settings.drift_share, len(reference),
        rows, outputs, tested_rows=len(current))


def sampled(table: Any, rows: int) -> Any:
    """A seeded random sample of `rows` rows (a DataFrame's or a Series'), or all of them."""
    return table if len(table) <= rows else table.sample(n=rows, random_state=0)


@dataclass
class ChampionInfo:
    version: str
    run_id: str
    training_window: str
    data_version: str


def run_check(params: Params, current: str | None = None, since: dt.datetime | None = None,
              until: dt.datetime | None = None, force: bool = False) -> dict[str, Any]:
    """The whole check; returns (and writes) the JSON summary."""
    current = current or params.monitoring.current
    window = (batch_window(params) if current == "batch"
              else log_window(params, since, until) if current == "log"
              else job_window(params, Path(current)))

    from mlpipeline.registry import Registry

    registry = Registry(params)
    info, reference = champion_reference(registry)
    settings = params.monitoring
    scored = performance_check(params, window, registry, info)
    perf = scored.result if scored else None
    drift_result, snapshot = None, None
    if window.size >= settings.min_rows:
        snapshot, drift_result = evidently_report(reference, window.frame, params,
                                                  served_predictions(params.task, window, scored),
                                                  window.size)
    batch_dates = [day for day, _ in dated_batches(params.path(RAW_DIR))]
    since_training = decide.batches_after(batch_dates, registry.last_training_end())
    verdict = decide.decide(current_rows=window.size, min_rows=settings.min_rows,
                            drift=drift_result, perf=perf,
                            batches_since_training=since_training,
                            cooldown_batches=params.ct.cooldown_batches, force=force)

    out_dir = params.path(settings.report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / REPORT_HTML
    html.unlink(missing_ok=True)  # never leave an old report beside a new verdict
    if snapshot is not None:
        snapshot.save_html(str(html))
    summary = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "window": {"kind": window.kind, "description": window.description,
                   "rows": window.size, "batch": window.batch, "until": window.until},
        "reference": {"model": registry.name, "champion": info.version, "run_id": info.run_id,
                      "training_window": info.training_window, "rows": len(reference)},
        "drift": drift_result.as_dict() if drift_result else None,
        "performance": perf.as_dict() if perf else None,
        "batches_since_training": since_training,
        "decision": verdict.as_dict(),
        "report_html": str(html.relative_to(params.root)) if snapshot is not None else None,
        "champion_data_version": info.data_version,
        "prediction_log": log_contents(params),
    }
    summary["history"] = keep_history(params, summary, snapshot, window, scored)
    (out_dir / REPORT_JSON).write_text(json.dumps(summary, indent=2, default=float) + "\n")
    prom.write(prom.drift_metrics(summary), out_dir / prom.DRIFT_FILE)  # for Prometheus
    return summary


def log_contents(params: Params) -> dict[str, Any]:
    """What in the prediction log folder no reader read (left in place, named and counted);
    what could not be read was moved to its quarantine, named as it went."""
    folder = params.serving.prediction_log_dir
    unread = not_read(params.path(folder))
    return {"dir": str(folder), "quarantine": f"{folder}/{QUARANTINE}",
            "not_read_count": len(unread), "not_read": unread}


def keep_history(params: Params, summary: dict[str, Any], drift_snapshot: Any, window: Window,
                 scored: Scored | None) -> dict[str, Any]:
    """The check's snapshots into the Evidently workspace (monitoring.history). A broken
    workspace costs the history, never the check: the error goes in the summary."""
    try:
        snapshots = {"drift": drift_snapshot} if drift_snapshot is not None else {
            "rows": history.rows_snapshot(feature_dataset(window.frame, params.schema))}
        if scored is not None:
            snapshots["performance"] = params.task.evidently_performance(
                scored.actual, scored.scores, params.gate.min_metrics)
        snapshot_id = history.record(params, summary, snapshots)
    except Exception as error:  # Evidently and the file system raise many kinds
        print(f"drift: WARNING: the check was not added to the history: {error}")
        return {"workspace": params.monitoring.history_dir, "error": str(error)}
    return {"workspace": params.monitoring.history_dir, "snapshot": snapshot_id,
            "parts": list(snapshots)}


def champion_reference(registry: Any) -> tuple[ChampionInfo, pd.DataFrame]:
    """The champion and the reference sample logged with its own MLflow run."""
    from mlpipeline.registry import CHAMPION

    champion = registry.version_by_alias(CHAMPION)
    if champion is None:
        raise SystemExit("drift: the registry has no champion to compare with: "
                         "run the pipeline first (make demo)")
    info = ChampionInfo(str(champion.version), champion.run_id,
                        champion.tags.get("training_window", ""),
                        champion.tags.get("data_version", ""))
    with tempfile.TemporaryDirectory() as tmp:
        local = registry.download_run_file(info.run_id, "reference/reference.parquet", tmp)
        return info, pd.read_parquet(local)


@dataclass
class Scored:
    """The champion's answers on outcomes that arrived, and what they score."""

    result: decide.PerformanceResult
    actual: pd.Series  # the outcomes
    scores: np.ndarray  # the champion's scores for them (the task's layout)


def performance_check(params: Params, window: Window, registry: Any, info: ChampionInfo
                      ) -> Scored | None:
    """The champion's real performance on the window's outcomes, when it carries them: from
    its own served answers, or (too few of them) the champion re-scored; every other version
    the outcomes found answers of, as itself (`by_version`)."""
    schema, task = params.schema, params.task
    if schema.target not in window.frame.columns:
        return None
    labelled = window.frame[window.frame[schema.target].notna()]
    # Every day of the log: outcomes arrive long after the answers. Only the join's columns.
    needed = [*schema.feature_names, *schema.optional_columns, *task.log_score_columns,
              "model_version"]
    served = logged_outcomes(read_log(params.path(params.serving.prediction_log_dir),
                                      columns=needed, types=log_types(schema)), labelled, task)

    def rescored() -> np.ndarray:
        return task.scores(registry.load_sklearn(info.version), labelled[schema.feature_names])

    return judged_by_version(served, labelled, info.version, task,
                             params.monitoring.min_labelled_rows, params.gate.min_metrics,
                             rescored)


SERVED = "served predictions joined with outcomes"


def judged_by_version(served: pd.DataFrame, labelled: pd.DataFrame, champion: str,
                      task: Task, min_rows: int, floors: dict[str, float],
                      rescored: Callable[[], np.ndarray]) -> Scored | None:
    """The champion's figures from the answers it gave itself: after a promotion the log
    holds its predecessor's answers, which must not be credited to it (nor retrain it).
    With fewer than `min_rows` of its own, it is re-scored on the outcomes (`rescored`) and
    says so. Each version's served answers are scored as that version's (metrics from
    `min_rows` rows on)."""
    target = task.schema.target
    versions = served["model_version"].astype(str)
    # An outcome that several versions answered (a request sent again after a promotion)
    # counts for each of them: said per version, so the rows add up.
    several = served[OUTCOME].map(versions.groupby(served[OUTCOME]).nunique()) > 1 \
        if OUTCOME in served.columns else pd.Series(False, index=served.index)
    by_version: dict[str, dict[str, Any]] = {}
    for version, rows in served.groupby(versions, sort=True):
        metrics = (task.metrics(rows[target], task.scores_from_log(rows))
                   if len(rows) >= min_rows else {})
        by_version[str(version)] = {"rows": len(rows), "metrics": metrics, "source": SERVED}
        if several[rows.index].any():
            by_version[str(version)]["ids_answered_by_several"] = int(
                several[rows.index].sum())
    own = served[versions == champion]
    if len(own) >= min_rows:
        actual, scores, source = own[target], task.scores_from_log(own), SERVED
        joined: dict[str, int] | None = join_counts(served, len(labelled))
    elif len(labelled) >= min_rows:
        actual, scores = labelled[target], rescored()
        source, joined = f"champion v{champion} re-scored on outcomes", None
        shared = by_version.get(champion, {}).get("ids_answered_by_several")
        by_version[champion] = {"rows": len(labelled), "served_rows": len(own),
                                "source": source, "metrics": task.metrics(actual, scores),
                                **({"ids_answered_by_several": shared} if shared else {})}
    else:
        return None
    metrics = by_version[champion]["metrics"]
    result = decide.performance(metrics, len(actual), floors, task.lower_is_better, source,
                                joined, champion, by_version)
    return Scored(result, actual.reset_index(drop=True), scores)


def served_predictions(task: Task, window: Window, scored: Scored | None
                       ) -> tuple[pd.Series, bool] | None:
    """The window's predictions for prediction drift: the log's answers (kind=log), else
    the champion's answers on the batch's outcomes (served, or re-scored)."""
    if window.served is not None and not window.served.empty \
            and set(task.log_score_columns) <= set(window.served.columns):
        return task.drifting_prediction(task.scores_from_log(window.served))
    if scored is not None:
        return task.drifting_prediction(scored.scores)
    return None


def describe(summary: dict[str, Any]) -> str:
    """Two or three lines a person can follow."""
    window, reference, verdict = summary["window"], summary["reference"], summary["decision"]
    lines = [f"drift: {window['description']}, {window['rows']} rows vs the reference of "
             f"champion v{reference['champion']} ({reference['training_window']}, "
             f"{reference['rows']} rows)"]
    lines += [f"  - {reason}" for reason in verdict["reasons"]]
    performance = summary["performance"]
    if performance and performance.get("by_version"):
        lines.append("  - outcomes by the version that answered: " + "; ".join(
            version_line(version, entry, performance["floors"])
            for version, entry in performance["by_version"].items()))
    log = summary.get("prediction_log") or {}
    if log.get("not_read"):
        shown = ", ".join(log["not_read"][:5]) + (", ..." if len(log["not_read"]) > 5 else "")
        lines.append(f"  - prediction log: {log['not_read_count']} file(s) or folder(s) in "
                     f"{log['dir']} not read, left in place (neither a part-*.parquet nor a "
                     f"day-*.parquet of a date=YYYY-MM-DD folder): {shown}")
    lines.append(f"drift: decision {verdict['action'].upper()}"
                 + (f"; report {summary['report_html']}" if summary["report_html"] else ""))
    return "\n".join(lines)


def version_line(version: str, entry: dict[str, Any], floors: dict[str, float]) -> str:
    """`v1 3000 rows served: roc_auc 0.6742` (the floored metrics, where there are enough
    rows), or the champion's re-scored figure with how many answers it served itself; how
    many of its rows another version answered too."""
    shown = ", ".join(f"{name} {entry['metrics'][name]:.4f}" for name in floors
                      if name in entry["metrics"])
    if "served_rows" in entry:
        rows = f"{entry['served_rows']} served, re-scored on {entry['rows']} outcomes"
    else:
        rows = f"{entry['rows']} rows served"
    if entry.get("ids_answered_by_several"):
        rows += f" ({entry['ids_answered_by_several']} also answered by another version)"
    return f"v{version} {rows}" + (f": {shown}" if shown else " (too few for metrics)")


def _time(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monitoring.drift",
                                     description="Compare production data with the champion's "
                                                 "training reference.")
    parser.add_argument("--current", help="batch (the newest raw batch), log (the prediction "
                        "log; monitoring.current names the default) or a `make score` "
                        "job's OUTPUT folder (the records it scored)")
    parser.add_argument("--since", type=_time, help="log window start (ISO time, UTC)")
    parser.add_argument("--until", type=_time, help="log window end (ISO time, UTC)")
    args = parser.parse_args(argv)
    params = load_params()
    summary = run_check(params, args.current, args.since, args.until)
    print(describe(summary))
    print(f"drift: summary -> {Path(params.monitoring.report_dir) / REPORT_JSON}")


if __name__ == "__main__":
    main()
