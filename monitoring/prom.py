"""The batch side's latest figures for Prometheus, with no server of its own.

The drift check and the CT cycle each leave a text file in Prometheus' exposition format
(node_exporter's textfile-collector convention: point `--collector.textfile.directory` at
the folder): `reports/monitoring/drift.prom` and `reports/ct/ct.prom`. Building the figures
is a plain function of the summary each already writes; writing is atomic
(prometheus_client's `write_to_textfile`), so a scrape never reads half a file.

Counters (`_total`) continue from the previous file, so they count every cycle since the
project started, as a long-running exporter's would.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

DRIFT_FILE = "drift.prom"
CT_FILE = "ct.prom"


def drift_metrics(summary: dict[str, Any]) -> CollectorRegistry:
    """A drift check's summary (monitoring.drift) as gauges."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float, **labels: str) -> None:
        metric = Gauge(name, doc, list(labels), registry=registry)
        (metric.labels(**labels) if labels else metric).set(value)

    gauge("model_drift_check_timestamp_seconds", "When the last drift check ran (Unix time)",
          _unix(summary["time"]))
    gauge("model_drift_window_rows", "Rows in the current window the last check compared",
          summary["window"]["rows"], window=summary["window"]["kind"])
    gauge("model_champion_version", "Registered version of the champion the check used",
          float(summary["reference"]["champion"] or 0), model=summary["reference"]["model"])
    decision = Gauge("model_drift_decision", "The last check's decision (1 = this one)",
                     ["action"], registry=registry)
    for action in ("retrain", "no-retrain"):
        decision.labels(action).set(float(summary["decision"]["action"] == action))
    drift = summary["drift"]
    if drift is not None:  # None: too few rows for a verdict
        gauge("model_drift_detected", "1 if the share of drifted features reached the "
              "threshold", float(drift["detected"]))
        gauge("model_drift_drifted_features_ratio", "Share of features whose drift test failed",
              drift["share"])
        score = Gauge("model_drift_feature_score", "Each feature's drift score (the value "
                      "of the feature's test)", ["feature", "method"], registry=registry)
        drifted = Gauge("model_drift_feature_drifted", "1 if the feature's drift test failed",
                        ["feature"], registry=registry)
        for feature in drift["features"]:
            score.labels(feature["name"], feature["method"]).set(feature["score"])
            drifted.labels(feature["name"]).set(float(feature["drifted"]))
        outputs = {name: drift.get(name) for name in ("target", "prediction")
                   if drift.get(name)}
        if outputs:  # the model's side: outcomes and predictions against the reference's
            output_score = Gauge("model_drift_output_score", "Drift score of the target "
                                 "(outcomes) or of the predictions", ["output", "method"],
                                 registry=registry)
            output_drifted = Gauge("model_drift_output_drifted", "1 if the target's or the "
                                   "predictions' drift test failed", ["output"],
                                   registry=registry)
            for name, output in outputs.items():
                output_score.labels(name, output["method"]).set(output["score"])
                output_drifted.labels(name).set(float(output["drifted"]))
    performance = summary["performance"]
    if performance is not None:  # the champion on labelled outcomes
        version = str(performance.get("version") or summary["reference"]["champion"])
        live = Gauge("model_champion_live_metric", "The champion's metric on the outcomes "
                     "that arrived (the task's: roc_auc, f1_macro, rmse...), from its own "
                     "answers or re-scored", ["metric", "version"], registry=registry)
        floor = Gauge("model_champion_live_metric_floor", "The gate's floor for that metric "
                      "(a ceiling for a lower-is-better one)", ["metric"], registry=registry)
        for name, value in performance["metrics"].items():
            live.labels(name, version).set(value)
        for name, value in performance["floors"].items():
            floor.labels(name).set(value)
        Gauge("model_champion_live_rows", "Labelled rows the live metrics were computed on",
              ["version"], registry=registry).labels(version).set(performance["rows"])
        by_version = performance.get("by_version") or {}
        if by_version:  # every version whose answers the outcomes found
            answered = Gauge("model_version_live_rows", "Outcomes joined with the answers of "
                             "each version that served them", ["version"], registry=registry)
            metric = Gauge("model_version_live_metric", "Each version's metric on the outcomes "
                           "of the answers it served (from monitoring.min_labelled_rows on; "
                           "the champion re-scored when it served fewer)",
                           ["version", "metric"], registry=registry)
            for name, entry in by_version.items():
                answered.labels(name).set(entry.get("served_rows", entry["rows"]))
                for metric_name, value in entry["metrics"].items():
                    metric.labels(name, metric_name).set(value)
        joined = performance.get("joined")
        if joined:  # served predictions: how the outcomes found them
            rows = Gauge("model_outcomes_joined_rows", "Outcomes joined with a served "
                         "prediction, by the join that found it (id, features)", ["join"],
                         registry=registry)
            rows.labels("id").set(joined["on_id"])
            rows.labels("features").set(joined["on_features"])
            gauge("model_outcomes_without_prediction_rows", "Outcomes that found no served "
                  "prediction", joined["outcomes_without_prediction"])
    return registry


def ct_metrics(summary: dict[str, Any], previous: dict[str, float]) -> CollectorRegistry:
    """A CT cycle's summary (monitoring.ct) as gauges, and counters continued from
    `previous` (the last file's samples, by name and labels)."""
    registry = CollectorRegistry()
    status = summary["status"]
    Gauge("model_ct_last_cycle_timestamp_seconds", "When the last CT cycle started (Unix time)",
          registry=registry).set(_unix(summary["time"]))
    Gauge("model_ct_last_cycle_duration_seconds", "How long the last CT cycle took",
          registry=registry).set(summary.get("seconds") or 0.0)
    Gauge("model_ct_last_cycle_success", "1 if the last CT cycle ended without an error",
          registry=registry).set(float(status == "ok"))
    # Not model_champion_version: drift.prom describes that one (the champion a check used),
    # and a textfile collector refuses a metric described twice across its files.
    Gauge("model_ct_champion_version", "Registered version of the champion after the last "
          "CT cycle", registry=registry).set(float(summary.get("champion_after") or 0))
    cycles = Counter("model_ct_cycles", "CT cycles run, by how they ended", ["status"],
                     registry=registry)
    for name in ("ok", "failed"):
        key = f'model_ct_cycles_total{{status="{name}"}}'
        cycles.labels(name).inc(previous.get(key, 0.0) + float(status == name))
    promotions = Counter("model_ct_promotions", "CT cycles that promoted a new champion",
                         registry=registry)
    promotions.inc(previous.get("model_ct_promotions_total", 0.0)
                   + float(bool(summary.get("promoted"))))
    return registry


def read_samples(path: Path) -> dict[str, float]:
    """The samples of a textfile written before, as `name{label="value"}` -> value."""
    if not path.is_file():
        return {}
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def write(registry: CollectorRegistry, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)  # to a temporary name, then renamed


def _unix(iso_time: str) -> float:
    when = dt.datetime.fromisoformat(iso_time)
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
