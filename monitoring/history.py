"""Every drift check's figures, kept over time in a local Evidently workspace, and the
dashboard over them.

`python -m monitoring.history ui` (`make dashboard`) opens Evidently's own UI on 127.0.0.1
and keeps it live: a check made while it runs shows on the next page load;
`python -m monitoring.history list` prints the checks it holds.

Each check (by hand, in a CT cycle, on a batch or on the prediction log) adds one snapshot
to the project named after the registered model, holding:
- its drift results (Evidently's DataDriftPreset plus the window's row count), or, when the
  window is too small for a verdict, the row count alone;
- on a window with outcomes, the champion's real performance by Evidently's metrics for the
  task (ROC AUC, precision, recall; accuracy, F1, log loss, ROC AUC; RMSE, MAE, R2, MAPE),
  each floor of `gate.min_metrics` an Evidently test on its metric.
One snapshot per check, not one per report: the dashboard's series are read per snapshot,
and a line broken by the other report's empty points draws nothing. The snapshot carries the
check's tags (check time, batch date, window kind, champion version, decision, the parts it
holds) and is dated by the data it describes (the batch's first day, or the end of a log
window), so the dashboard's time axis is the data's weeks. A second check of the same data
(a cycle that retrained, then `make drift`) is dated a minute after the first, a third two
minutes: the dashboard draws each check at its own point, in the order they were made
(`data-times.json` beside the projects counts the checks per data time).

The workspace is a folder (`monitoring.history_dir`, git-ignored). Imports evidently: it runs
in the drift check's process, never in the service.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mlpipeline.config import Params, load_params
from mlpipeline.schema import PREDICTION_COLUMN

# Evidently's metric ids, as dashboards name them.
SHARE_DRIFTED = "evidently:metric_v2:DriftedColumnsCount"
VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
ROW_COUNT = "evidently:metric_v2:RowCount"
# Evidently's dashboards draw metrics only: each check also records the thresholds, and the
# champion's margin to each floor, as the mean of a one-row table, so a panel draws them.
THRESHOLD = "evidently:metric_v2:MeanValue"
# The UI draws a panel's lines in a palette of six colours, then starts again: a panel holds
# at most six features, so none shares its colour with another.
PALETTE_COLOURS = 6
CHECK_TAG = "check:"  # the tag every snapshot of one check shares: check:<ISO time>
SNAPSHOTS_DIR = "snapshots"  # Evidently's folder of a project's snapshots in a workspace


def check_tags(summary: dict[str, Any]) -> list[str]:
    """The tags of one check's snapshots, from the check's summary (monitoring.drift)."""
    window = summary["window"]
    tags = [f"{CHECK_TAG}{summary['time']}", f"window:{window['kind']}",
            f"champion:v{summary['reference']['champion']}",
            f"decision:{summary['decision']['action']}"]
    if window.get("batch"):
        tags.append(f"batch:{window['batch']}")
    return tags


def check_metadata(summary: dict[str, Any]) -> dict[str, str]:
    decision = summary["decision"]
    return {"window": summary["window"]["description"],
            "rows": str(summary["window"]["rows"]),
            "model": summary["reference"]["model"],
            "champion_training_window": summary["reference"]["training_window"],
            "decision": decision["action"], "reasons": " | ".join(decision["reasons"])}


def data_time(summary: dict[str, Any]) -> dt.datetime:
    """When the checked data is from: the batch's first day, or the log window's end."""
    window = summary["window"]
    when = dt.datetime.fromisoformat(window["batch"] or window["until"])
    return when.replace(tzinfo=None)  # Evidently stores naive times


DATA_TAG = "data:"  # a snapshot's data time before its place in the order (data:<ISO>)
ORDER_FILE = "data-times.json"  # beside the projects (Evidently lists UUID folders only)


def check_time_in_order(folder: Path, data: dt.datetime, known: Any) -> dt.datetime:
    """The time a new check of data from `data` is drawn at: `data`, plus a minute for each
    earlier check of the same data, so every check is a point of its own on the dashboard's
    axis (a band per time) and they follow in the order made. The counts per data time are
    kept in ORDER_FILE; `known()` gives the snapshots' tags to count from when it is missing
    (a workspace made before it). Under a file lock: two checks at once get two times."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    index = folder / ORDER_FILE
    with (folder / f".{ORDER_FILE}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            counts = json.loads(index.read_text())
        except (OSError, ValueError):
            counts = {}
            for tags, timestamp in known():
                key = tag_value(tags, DATA_TAG.rstrip(":")) or timestamp.isoformat()
                counts[key] = counts.get(key, 0) + 1
        key = data.isoformat()
        earlier = counts.get(key, 0)
        counts[key] = earlier + 1
        hidden = index.with_name(f".{ORDER_FILE}.tmp")
        hidden.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")
        os.replace(hidden, index)
    return data + dt.timedelta(minutes=earlier)


def thresholds(params: Params) -> dict[str, float]:
    """The flat lines on the dashboard, by the column that records each: the drift share
    that retrains (monitoring.drift_share) and the gate's floor on each drawn metric."""
    drawn = params.task.evidently_metric_ids
    return {"drift_share": params.monitoring.drift_share,
            **{f"floor_{name}": float(floor) for name, floor in params.gate.min_metrics.items()
               if name in drawn}}


def headroom(performance: dict[str, Any] | None, drawn: Collection[str]) -> dict[str, float]:
    """How far the champion's figure is on the good side of each floor (a ceiling, for a
    lower-is-better metric), by the column that records it: below zero, it broke it."""
    if not performance:
        return {}
    ceilings = set(performance.get("ceilings") or [])
    return {f"headroom_{name}": (floor - value if name in ceilings else value - floor)
            for name, floor in performance["floors"].items()
            if name in drawn and (value := performance["metrics"].get(name)) is not None}


def thresholds_snapshot(values: dict[str, float]) -> Any:
    """One check's record of the thresholds: the mean of each one-row column."""
    import pandas as pd
    from evidently import Report
    from evidently.metrics import MeanValue

    frame = pd.DataFrame({column: [value] for column, value in values.items()})
    return Report([MeanValue(column=column) for column in values]).run(frame, None)


def feature_groups(params: Params) -> list[tuple[str, list[str]]]:
    """The features by type, each type split into near-even groups of at most PALETTE_COLOURS:
    (title, names). Types apart, as their drift tests score on different scales."""
    groups = []
    for kind in ("numeric", "boolean", "categorical"):
        names = [f.name for f in params.schema.features if f.type == kind]
        count = -(-len(names) // PALETTE_COLOURS)  # ceiling division
        for index in range(count):
            part = names[index * len(names) // count:(index + 1) * len(names) // count]
            title = f"Drift score: {kind} features" + (f" ({index + 1} of {count})"
                                                       if count > 1 else "")
            groups.append((title, part))
    return groups


def dashboard_panels(params: Params) -> list[Any]:
    """The project's dashboard: drift share with its retrain line, each feature's drift
    score, rows per window, prediction and target drift, and the champion's real performance
    with the gate's floors."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel, text_panel

    def line(legend: str, column: str) -> Any:
        return PanelMetric(legend=legend, metric=THRESHOLD, metric_labels={"column": column})

    task = params.task
    share = params.monitoring.drift_share
    # Floors are not lines among the metrics' lines (alike in the UI, which draws every line
    # the same way, and one at the axis's edge cannot be seen): each is the zero of a bar.
    def margin(name: str) -> str:
        side = "under its ceiling" if name in task.lower_is_better else "over its floor"
        return f"{name} {side}"

    headrooms = [line(margin(name), f"headroom_{name}")
                 for name in params.gate.min_metrics if name in task.evidently_metric_ids]
    outputs = {"prediction": PREDICTION_COLUMN, "target": params.schema.target}
    features = [line_plot_panel(title, size="half", values=[
        PanelMetric(legend=name, metric=VALUE_DRIFT, metric_labels={"column": name})
        for name in names], description="the value of each feature's drift test")
        for title, names in feature_groups(params)]
    return [
        text_panel(f"{params.mlflow.registered_model}: every drift check, by the date of its "
                   "data", description="Each point is one check (make drift, a CT cycle); "
                   "a later check of the same data is a minute after the one before; "
                   "its snapshot's tags name the champion and the decision (Reports tab)."),
        line_plot_panel("Share of drifted features", size="half", values=[PanelMetric(
            legend="share", metric=SHARE_DRIFTED, metric_labels={"value_type": "share"}),
            line(f"retrain at {share}", "drift_share")],
            description="a check above the line retrains (monitoring.drift_share)"),
        bar_plot_panel("Rows per window", size="half", values=[
            PanelMetric(legend="rows", metric=ROW_COUNT)]),
        *features,
        line_plot_panel("Prediction and target drift", size="half", values=[
            PanelMetric(legend=name, metric=VALUE_DRIFT, metric_labels={"column": column})
            for name, column in outputs.items()],
            description="the served predictions against the champion's own on its reference; "
                        "the outcomes against its training target"),
        line_plot_panel("Champion's real performance on labelled batches", size="half",
                        values=[PanelMetric(legend=name, metric=metric)
                                for name, metric in task.evidently_metric_ids.items()],
                        description="on the outcomes that arrived, joined with its answers"),
        bar_plot_panel("Margin to the gate's floors", size="half", values=headrooms,
                       description="the metric minus its floor (gate.min_metrics; the "
                                   "ceiling minus it, for a lower-is-better one): a bar below "
                                   "zero broke it, failing the check's tests (Tests tab)"),
    ]


def rows_snapshot(window: Any) -> Any:
    """The window's row count alone (an Evidently Dataset): a check with too few rows for a
    drift verdict, zero included. A Dataset, because Report.run refuses an empty DataFrame
    and zero rows is a fact to keep."""
    from evidently import Report
    from evidently.metrics import RowCount

    return Report([RowCount()]).run(window, None)


def record(params: Params, summary: dict[str, Any], parts: dict[str, Any]) -> str:
    """Add one check as one snapshot: its reports' results (by part: drift, rows,
    performance) and the thresholds the dashboard draws, tagged and dated. Returns the
    snapshot's id."""
    from evidently.core.report import Snapshot

    workspace, project = open_project(params)
    drawn = params.task.evidently_metric_ids
    lines = thresholds_snapshot({**thresholds(params), **headroom(summary.get("performance"),
                                                                  drawn)}).to_snapshot_model()
    lines.widgets = []  # drawn on the dashboard; no finding of the check's report
    model = merged_models([*(snapshot.to_snapshot_model() for snapshot in parts.values()),
                           lines])
    data = data_time(summary)
    model.tags = [*check_tags(summary), *(f"part:{part}" for part in parts),
                  f"{DATA_TAG}{data.isoformat()}"]
    model.metadata = check_metadata(summary)

    def known() -> list[tuple[list[str], dt.datetime]]:
        return [(run.tags, run.timestamp) for run in read_history(params)]

    model.timestamp = check_time_in_order(params.path(params.monitoring.history_dir), data,
                                          known)
    ref = workspace.add_run(project.id, Snapshot.load_model(model),
                            name=f"check of {summary['window']['description']}")
    return str(ref.id)


def merged(snapshots: list[Any]) -> Any:
    """Evidently snapshots (of reports run on the same data) as one Snapshot."""
    from evidently.core.report import Snapshot

    if len(snapshots) == 1:
        return snapshots[0]
    return Snapshot.load_model(merged_models([s.to_snapshot_model() for s in snapshots]))


def merged_models(models: list[Any]) -> Any:
    """Evidently snapshots (SnapshotModel) as one: their metric results, tests and widgets.
    Their metrics differ (the performance report has no row count), so no result is lost."""
    first, *rest = models
    for model in rest:
        if first.metric_results.keys() & model.metric_results.keys():
            raise ValueError("two reports of one check computed the same metric")
        first.metric_results = {**first.metric_results, **model.metric_results}
        first.top_level_metrics = [*first.top_level_metrics, *model.top_level_metrics]
        first.widgets = [*first.widgets, *model.widgets]
        first.tests_widgets = [*first.tests_widgets, *model.tests_widgets]
    return first


def tag_values(tags: list[str], key: str) -> list[str]:
    return [t.split(":", 1)[1] for t in tags if t.startswith(f"{key}:")]


def snapshot_workspace(path: str) -> Any:
    """Evidently's local Workspace for projects and snapshots only.

    `Workspace(path)` also builds a dataset manager that parses every snapshot of the
    workspace when it opens (about 1 MB and 70 ms each here): months of checks made every
    check slower. Projects, dashboards and runs go through `Workspace.state`, which reads a
    file when asked; this keeps that and skips the dataset manager (no dataset is stored)."""
    from evidently.legacy.utils import NumpyEncoder
    from evidently.ui.storage.local.base import LocalState
    from evidently.ui.workspace import Workspace

    class AtomicState(LocalState):
        def write_snapshot(self, project_id: Any, snapshot_id: Any, snapshot: Any) -> None:
            # Evidently writes the file in place: a check killed (or failing) mid-write left a
            # half snapshot, and `evidently ui` parses every one and does not start. Written
            # whole to a hidden file beside it (not a snapshot name), then renamed.
            final = Path(self.path, self._snapshot_path(project_id, snapshot_id))
            final.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(snapshot.dict(), cls=NumpyEncoder)
            hidden = final.with_name(f".{final.name}.tmp")
            hidden.write_text(text)
            os.replace(hidden, final)

    class SnapshotWorkspace(Workspace):
        def __init__(self, folder: str) -> None:  # no super().__init__: see above
            self.path = folder
            self.state = AtomicState(folder)

    Path(path).mkdir(parents=True, exist_ok=True)
    return SnapshotWorkspace(path)


def open_project(params: Params) -> tuple[Any, Any]:
    """The workspace and the model's project in it, created with its dashboard if new."""
    workspace = snapshot_workspace(str(params.path(params.monitoring.history_dir)))
    name = params.mlflow.registered_model
    found = [p for p in workspace.list_projects() if p.name == name]
    project = found[0] if found else workspace.create_project(
        name, description="drift checks and the champion's real performance "
                          "(monitoring.history)")
    panels = dashboard_panels(params)
    # A workspace made by an earlier version of this code (or other params) gets today's panels.
    if [_panel_key(p) for p in project.dashboard.model().panels] != list(map(_panel_key, panels)):
        project.dashboard.clear_dashboard()
        for panel in panels:
            project.dashboard.add_panel(panel)
    return workspace, project


def _panel_key(panel: Any) -> tuple[Any, ...]:
    return (panel.title, panel.subtitle, panel.size, panel.plot_params,
            [(v.legend, v.metric, v.metric_labels) for v in panel.values])


def read_history(params: Params) -> list[Any]:
    """Every readable snapshot the workspace holds for the model (Evidently's SnapshotModel),
    oldest data first. One left half-written by a killed check is skipped, named on stderr."""
    if not params.path(params.monitoring.history_dir).is_dir():
        return []
    workspace, project = open_project(params)
    runs = []
    for run in workspace.list_runs(project.id):
        try:
            runs.append(workspace.get_run(project.id, run))
        except ValueError as error:  # truncated JSON, or not a snapshot
            print(f"history: snapshot {run} skipped, unreadable: {str(error)[:80]}",
                  file=sys.stderr)
    return sorted((r for r in runs if r is not None), key=lambda r: (r.timestamp, r.tags))


def tag_value(tags: list[str], key: str) -> str | None:
    return next(iter(tag_values(tags, key)), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monitoring.history",
                                     description="The drift checks' history in Evidently.")
    sub = parser.add_subparsers(dest="command", required=True)
    ui = sub.add_parser("ui", help="open Evidently's UI on the workspace (127.0.0.1)")
    ui.add_argument("--port", type=int, help="default: monitoring.dashboard_port")
    sub.add_parser("list", help="the checks the workspace holds")
    args = parser.parse_args(argv)
    params = load_params()
    folder = params.path(params.monitoring.history_dir)
    if args.command == "list":
        runs = read_history(params)
        if not runs:
            print(f"history: no check yet in {folder}: make drift, make ct or make demo add one")
        for run in runs:
            print(f"{run.timestamp:%Y-%m-%d}  {tag_value(run.tags, 'window'):<5} champion "
                  f"{tag_value(run.tags, 'champion'):<4} {tag_value(run.tags, 'decision'):<10} "
                  f"{'+'.join(tag_values(run.tags, 'part'))}")
        return
    _, project = open_project(params)  # the dashboard exists before the first check, too
    port = args.port or params.monitoring.dashboard_port
    # The project's own page (its dashboard), not the project list one click before it.
    print(f"history: the dashboard on http://127.0.0.1:{port}/projects/{project.id} "
          f"(Evidently UI, workspace {folder}); Ctrl-C stops", flush=True)
    evidently = Path(sys.executable).with_name("evidently")
    server = subprocess.Popen([str(evidently), "ui", "--workspace", str(folder),
                               "--host", "127.0.0.1", "--port", str(port)])
    threading.Thread(target=follow_checks, args=(folder, f"http://127.0.0.1:{port}", server),
                     daemon=True).start()
    try:
        sys.exit(server.wait())
    except KeyboardInterrupt:  # Ctrl-C reached the UI too: let it finish its shutdown
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.terminate()
            server.wait()
        sys.exit(0)


def snapshot_counts(folder: Path) -> dict[str, int]:
    """Snapshot files per project folder of the workspace (hidden half-written ones aside)."""
    counts = {}
    for snapshots in folder.glob(f"*/{SNAPSHOTS_DIR}"):
        counts[snapshots.parent.name] = sum(
            1 for f in snapshots.iterdir() if f.suffix == ".json" and not f.name.startswith("."))
    return counts


def follow_checks(folder: Path, ui_url: str, ui: subprocess.Popen,
                  every_seconds: float = 1.0) -> None:
    """Keep a running UI up to date: a check made meanwhile (another process, a CT cycle)
    is a new file Evidently's own folder watcher misses (it reads a rename by its source
    name, and our snapshots are renamed into place whole), so its project is reloaded
    through the UI's API whenever its count of snapshots changes."""
    seen = snapshot_counts(folder)
    while ui.poll() is None:
        time.sleep(every_seconds)
        now = snapshot_counts(folder)
        for project_id in (p for p, n in now.items() if seen.get(p) != n):
            try:
                urllib.request.urlopen(f"{ui_url}/api/projects/{project_id}/reload",
                                       timeout=30).close()
            except OSError:  # not up yet, or stopping: the next round tries again
                continue
            seen[project_id] = now[project_id]


if __name__ == "__main__":
    main()
