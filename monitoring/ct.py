"""One continuous-training cycle: `python -m monitoring.ct [--force] [--current batch|log]`.

Steps, each named in the output and in the summary:
1. new batch    `dvc repro validate` versions and checks what landed in the landing folder
                (`source.kind: files`; a simulated source's clock, `source.n_batches`, first
                advances by one); the batches dated after the champion's training window
                are the new ones (a full `dvc repro` when there is no champion yet, e.g. on a
                fresh CI runner with the embedded store)
2. drift check  the prediction log compacted (one file per day, the retention applied), then
                monitoring.drift: the new data against the champion's training reference,
                the champion's real performance on the new outcomes, the guards
   shadow       when the registry has a challenger in shadow (`shadow: true`): it is promoted
                when its answers, joined with the outcomes, hold against the champion's on
                at least promotion.shadow_min_rows labelled requests (gate.compare_metric,
                gate.tolerance), rejected when worse there, else kept (monitoring.shadow)
3. move window  retrain only: the training window slides by whole batches (keeping its
                number of batches) so that it ends at the newest batch
4. same data    retrain only: no retrain when the new training split is the champion's own
5. retrain      `dvc repro`: train, evaluate, gate and, if the gate passes, promote
                (pending changes to params or code are trained here too)

A file lock keeps two cycles from running at once (exit 75 when busy). Before it changes
anything, a cycle writes a journal (monitoring/journal.py): the tracked files as they were and
the champion. If a step fails, params.yaml, dvc.lock, the tracked reports and the data are
put back (`dvc checkout`), the champion is moved back if it moved, and the summary says which
step failed. If the process is killed instead, the next cycle finds the journal, says so and
restores the same way before it starts. The summary is written as JSON and as Markdown (for
a GitHub Actions job summary) under `ct.summary_dir`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipeline.config import (
    GATE_REPORT,
    PARAMS_FILE,
    PLOTS_DIR,
    RAW_DIR,
    TRAIN_SPLIT,
    TUNE_REPORT,
    TUNE_TIMING,
    Params,
    find_root,
    load_params,
    set_values,
)
from mlpipeline.lineage import file_md5
from mlpipeline.prediction_log import compact, log_types
from mlpipeline.source import dated_batches
from monitoring import decide, drift, journal, prom
from monitoring.cycle_guard import (
    LOCK_BUSY,
    LockBusy,
    RegistryOpening,
    champion_version,
    cycle_lock,
    restore_champion,
)
from monitoring.journal import TRACKED, Journal


class StepFailed(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step, self.detail = step, detail


def _env() -> dict[str, str]:
    # dvc.yaml runs `python -m ...`: it must be this interpreter, whoever started us.
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


# DVC's advice, repeated after every stage or every repro: a cycle (and the demo's run of
# cycles) says each once. Under core.autostage the lock file is staged, and a cycle pushes
# the data itself when a remote is configured.
DVC_HINTS = ("Updating lock file", "Use `dvc push`")
_said_hints: set[str] = set()


def run_dvc(root: Path, *args: str) -> int:
    """DVC with its output shown (each of its hints once per process); the exit code. Tests
    may hand run_cycle another runner."""
    process = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=root, env=_env(),
                               stdout=subprocess.PIPE, text=True, bufsize=1)
    assert process.stdout is not None
    for line in process.stdout:
        hint = next((h for h in DVC_HINTS if line.startswith(h)), None)
        if hint in _said_hints:
            continue
        if hint:
            _said_hints.add(hint)
        sys.stdout.write(line)
        sys.stdout.flush()
    return process.wait()


DvcRunner = Callable[..., int]


@dataclass
class NewBatch:
    """Step 1's result: the newest batch, and those dated after the champion's training."""

    date: dt.date
    file: str
    landed: list[dt.date]
    trained_to: dt.date | None
    batch_dates: list[dt.date]

    def as_dict(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "file": self.file, "new": bool(self.landed),
                "since_champion": len(self.landed)}


@dataclass
class Cycle:
    """What the steps share: the project, its params, the registry, the journal, the summary."""

    root: Path
    params: Params
    opening: RegistryOpening
    journal: Journal
    summary: dict[str, Any]
    run_dvc: DvcRunner
    step: str = "new batch"
    remote: bool = False
    registry: Any = None  # once connect() has it

    def connect(self) -> str | None:
        """The registry (opening on a thread since the cycle began); the champion before the
        cycle goes to the summary and the journal, before any step that can move it."""
        if self.registry is None:
            registry = self.opening.get()
            before = champion_version(registry)
            self.registry = registry
            self.summary["champion_before"] = before
            self.journal.record_champion(before)
        return self.summary["champion_before"]

    def enter(self, step: str, line: str) -> None:
        self.step = step
        self.journal.at(step)  # before the step changes anything
        print(f"ct: {line}")

    def dvc(self, *args: str) -> None:
        code = self.run_dvc(self.root, *args)
        if code != 0:
            raise StepFailed(self.step, f"`dvc {' '.join(args)}` exited with {code}")

    def set_params(self, updates: dict[str, Any]) -> None:
        path = self.root / PARAMS_FILE
        path.write_text(set_values(path.read_text(), updates))
        self.params = load_params(self.root)


def configure_remote(cycle: Cycle) -> bool:
    """Use the DVC remote named by DVC_REMOTE_URL (a CI secret) when set; pull what it has.
    DVC_REMOTE_ENDPOINT_URL points an s3:// remote at an S3-compatible store (MinIO); the
    credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as boto3 reads them."""
    url = os.environ.get("DVC_REMOTE_URL")
    if not url:
        return False
    cycle.dvc("remote", "add", "--local", "--force", "--default", "ct", url)
    if endpoint := os.environ.get("DVC_REMOTE_ENDPOINT_URL"):
        cycle.dvc("remote", "modify", "--local", "ct", "endpointurl", endpoint)
    if cycle.run_dvc(cycle.root, "pull", "--quiet") != 0:  # a new, empty remote
        print("ct: the DVC remote does not have everything yet; missing data is rebuilt")
    return True


def new_batch(cycle: Cycle) -> NewBatch:
    """Step 1: version and check every batch (a bad one stops the cycle here)."""
    source = cycle.params.source
    if source.kind == "files":
        cycle.enter("new batch", f"[1/5] new batch: what landed in {source.path}/")
    else:  # a simulated source: its clock is what delivers the next batch
        cycle.enter("new batch", f"[1/5] new batch: source clock {source.n_batches} -> "
                                 f"{source.n_batches + 1}")
        cycle.set_params({"source.n_batches": source.n_batches + 1})
    warm_imports()
    cycle.dvc("repro", "validate")  # meanwhile the registry opens on a thread
    before = cycle.connect()
    if not before:  # a store with no champion yet (a fresh CI runner on the embedded
        cycle.dvc("repro")  # defaults): the whole pipeline now, not after the verdict
    from mlpipeline.registry import CHAMPION, window_end  # mlflow: not for --help

    dated = dated_batches(cycle.params.path(RAW_DIR))
    trained_to = window_end(cycle.registry.version_by_alias(CHAMPION)) if before else None
    landed = [day for day, _ in dated if trained_to is None or day > trained_to]
    return NewBatch(dated[-1][0], dated[-1][1].name, landed, trained_to,
                    [day for day, _ in dated])


# What the drift check imports: ~5 s of a no-retrain cycle (Evidently; MLflow's model loader
# and skops, its model format) when they come after the stages instead of beside them.
DRIFT_CHECK_IMPORTS = ("evidently", "evidently.metrics", "evidently.presets", "mlflow.sklearn",
                       "skops.io")


def warm_imports() -> threading.Thread:
    """Import the drift check's libraries on a thread while `dvc repro` runs in its own
    process (this process only waits for it). Python's import lock makes the drift check wait
    for a module still being imported; a failure here is left for the drift check to report."""
    def load() -> None:
        for name in DRIFT_CHECK_IMPORTS:
            try:
                importlib.import_module(name)
            except Exception:  # only a head start: the drift check reports it
                return
    thread = threading.Thread(target=load, name="warm-imports", daemon=True)
    thread.start()
    return thread


def check_drift(cycle: Cycle, batch: NewBatch, current: str | None,
                since: dt.datetime | None, force: bool) -> tuple[decide.Verdict, dict]:
    """Step 2: the drift check and the verdict."""
    cycle.enter("drift check", "[2/5] drift check")
    log, retention = cycle.params.path(cycle.params.serving.prediction_log_dir), \
        cycle.params.serving.log_retention_days
    compacted = compact(log, retention, types=log_types(cycle.params.schema))
    print(f"ct: {compacted.describe(log, retention)}")  # what the check reads
    check = drift.run_check(cycle.params, current, since=since, force=force)
    verdict = decide.Verdict(**check["decision"])
    if not batch.landed and not force:
        verdict = decide.nothing_landed(batch.trained_to)
    cycle.summary.update(drift=check["drift"], performance=check["performance"],
                         window=check["window"], reference=check["reference"],
                         report_html=check["report_html"], decision=verdict.as_dict())
    print(drift.describe(check))
    return verdict, check


def judge_shadow(cycle: Cycle) -> None:
    """The waiting challenger the registry has in shadow is promoted on enough labelled live
    evidence (all of it since the shadow began), rejected when worse there, else kept; its
    card gets the evidence."""
    from monitoring.shadow import current_shadow, describe, shadow_report

    waiting = current_shadow(cycle.registry)
    if waiting is None:
        return
    version = str(waiting.version)
    cycle.enter("shadow", f"shadow: v{version}'s answers beside the champion's")
    report = shadow_report(cycle.params, cycle.registry)
    print(describe(report))
    verdict = decide.ShadowVerdict(**report["verdict"])
    if report["shadow_version"] == version:
        cycle.registry.record_shadow_evidence(version, report)
    if verdict.action == decide.PROMOTE:
        cycle.registry.approve(version, verdict.reason, reason="shadow evidence")
    elif verdict.action == decide.REJECT:
        cycle.registry.reject(version, verdict.reason)
    cycle.summary["shadow"] = {"evidence": report, **verdict.as_dict()}
    print(f"ct: {verdict.reason}")


def move_window(cycle: Cycle, batch: NewBatch, verdict: decide.Verdict,
                champion_data_version: str | None) -> bool:
    """Steps 3 and 4: slide the window to the newest batch; False when the new training split
    is the champion's own data (then the old window comes back)."""
    window = cycle.params.window
    start, end = decide.slide_window(batch.batch_dates, window.start, window.end, batch.date)
    cycle.enter("move window", f"[3/5] move window: {window.start}..{window.end} -> "
                               f"{start}..{end}")
    cycle.set_params({"window.start": start.isoformat(), "window.end": end.isoformat()})
    cycle.dvc("repro", "prepare")
    cycle.enter("same data", "[4/5] same-data guard")
    same = decide.same_data_reason(file_md5(cycle.root / TRAIN_SPLIT), champion_data_version)
    print(f"ct: {same or 'the training split is new'}")
    if not same:
        return True
    cycle.summary["decision"] = decide.held_back(verdict, same).as_dict()
    cycle.set_params({"window.start": window.start.isoformat(),
                      "window.end": window.end.isoformat()})
    cycle.dvc("repro", "prepare")  # the old window's, from the run cache
    return False


def retrain(cycle: Cycle) -> None:
    """Step 5: train, evaluate, gate and, if the gate passes, promote."""
    cycle.enter("retrain", "[5/5] retrain: dvc repro (tune, train, evaluate, gate, promote)")
    started = time.time()
    cycle.dvc("repro")
    cycle.summary["tune"] = search_summary(cycle.root, started)
    cycle.summary["gate"] = json.loads((cycle.root / GATE_REPORT).read_text())


def search_summary(root: Path, since: float) -> dict[str, Any] | None:
    """The retrain's search (tune.trials > 0): trials, best value and its seconds when it
    ran in this cycle (None when DVC's run cache gave its result back)."""
    try:
        report = json.loads((root / TUNE_REPORT).read_text())
        timing = json.loads((root / TUNE_TIMING).read_text())
    except (OSError, ValueError):
        return None
    if not report.get("trials"):
        return None
    ran = timing.get("finished_at", 0) >= since and \
        timing.get("tune_md5") == file_md5(root / TUNE_REPORT)
    return {"trials": report["trials"], "failed": report["failed"],
            "metric": report["metric"], "best_value": report["best"]["value"],
            "seconds": timing["seconds"] if ran else None,
            "run_id": timing.get("run_id") if ran else None}


def run_cycle(root: Path, *, force: bool = False, current: str | None = None,
              since: dt.datetime | None = None, dvc_runner: DvcRunner = run_dvc
              ) -> dict[str, Any]:
    """One cycle; returns the summary (also written to ct.summary_dir)."""
    started = time.monotonic()
    opening = RegistryOpening(load_params(root))  # a store that fails stops step 1
    recovered = journal.recover(root, lambda version, note: restore_champion(
        opening.get(), version, note))
    if recovered and recovered["problems"]:  # never build on a half-restored state
        raise SystemExit("ct: stopped: fix what could not be restored, then run again")
    params = load_params(root)  # read after any recovery: the restored file
    summary = start_summary(params, force, recovered)
    cycle = Cycle(root, params, opening, Journal.begin(root, None), summary, dvc_runner)
    try:
        cycle.remote = configure_remote(cycle)
        batch = new_batch(cycle)
        summary["new_batch"] = batch.as_dict()
        verdict, check = check_drift(cycle, batch, current, since, force)
        judge_shadow(cycle)  # the registry says whether a challenger is in shadow
        if verdict.retrain and move_window(cycle, batch, verdict,
                                           check["champion_data_version"]):
            retrain(cycle)
        if cycle.remote:
            cycle.enter("push data", "pushing the data to the DVC remote")
            cycle.dvc("push")
    except (Exception, SystemExit, KeyboardInterrupt) as error:
        fail(cycle, error)
        if isinstance(error, KeyboardInterrupt):
            finish(cycle, started)
            raise
    return finish(cycle, started)


def start_summary(params: Params, force: bool, recovered: dict[str, Any] | None
                  ) -> dict[str, Any]:
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "status": "ok", "failed_step": None, "error": None, "forced": force,
        "recovered": recovered,
        "champion_before": None,  # Cycle.connect() reads it
        "window_before": f"{params.window.start}..{params.window.end}",
    }


def fail(cycle: Cycle, error: BaseException) -> None:
    """Put back what the cycle changed; never raises, so a summary is always written."""
    failure = error if isinstance(error, StepFailed) else StepFailed(cycle.step, _text(error))
    summary = cycle.summary
    summary.update(status="failed", failed_step=failure.step, error=failure.detail)
    problems = cycle.journal.restore_files()
    if summary["champion_before"]:
        try:
            restore_champion(cycle.registry, summary["champion_before"],
                             f"CT cycle failed at step '{failure.step}'")
        except Exception as registry_error:  # e.g. the store itself is what failed
            problems.append(f"champion: {_text(registry_error)[:300]}")
    summary["restore_problems"] = problems


def finish(cycle: Cycle, started: float) -> dict[str, Any]:
    summary = cycle.summary
    try:
        cycle.connect()  # if the cycle failed before it needed the registry
        summary["champion_after"] = champion_version(cycle.registry)
    except (Exception, SystemExit) as error:  # the store is down: say so, not guess
        summary["champion_after"] = None
        if summary["champion_before"] is not None:  # else it never opened: nothing moved
            summary.setdefault("restore_problems", []).append(
                f"champion: could not read the alias: {_text(error)[:300]}")
    if not summary.get("restore_problems"):
        cycle.journal.end()  # else the next cycle retries the restore
    params = load_params(cycle.root)
    summary["promoted"] = summary["status"] == "ok" and \
        summary["champion_after"] != summary["champion_before"]
    summary["window_after"] = f"{params.window.start}..{params.window.end}"
    gate = summary.get("gate") or {}
    # promotion.mode manual or shadow: the version awaiting approval (or rejection)
    summary["awaiting_approval"] = gate["version"] if gate.get("awaiting_approval") else None
    summary["seconds"] = round(time.monotonic() - started, 1)
    write_summary(params.path(params.ct.summary_dir), summary)
    return summary


def _text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def to_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown for people (and for $GITHUB_STEP_SUMMARY)."""
    decision = summary.get("decision") or {}
    title = (f"failed at step '{summary['failed_step']}'" if summary["status"] == "failed"
             else decision.get("action", "?"))
    lines = [f"## CT cycle {summary['time']}: {title}", "", "| | |", "|---|---|"]

    def row(name: str, value: Any) -> None:
        lines.append(f"| {name} | {str(value).replace('|', '/')} |")

    if summary.get("recovered"):
        gone = summary["recovered"]
        row("recovered", f"the cycle started {gone['started']} was killed at step "
                         f"'{gone['step']}'; its changes were undone first")
    if summary["status"] == "failed":
        row("error", summary["error"])
        row("restored", "params.yaml, dvc.lock, tracked reports, data (dvc checkout)")
    if "new_batch" in summary:
        batch = summary["new_batch"]
        row("new batch", f"{batch['date']} ({batch['file']})"
                         + ("" if batch["new"] else ", no new data"))
    if summary.get("window"):
        row("current window", f"{summary['window']['description']}, "
                              f"{summary['window']['rows']} rows")
    if summary.get("reference"):
        ref = summary["reference"]
        row("reference", f"champion v{ref['champion']}, window {ref['training_window']}, "
                         f"{ref['rows']} rows")
    if decision:
        for reason in decision["reasons"]:
            row("reason", reason)
        row("decision", f"**{decision['action']}**" + (
            f" (triggers: {', '.join(decision['triggers'])})" if decision["triggers"] else ""))
    if summary.get("shadow"):
        row("shadow", f"**{summary['shadow']['action']}**: {summary['shadow']['reason']}")
    gate = summary.get("gate")
    if gate:
        verdict = ("PASSED, awaiting approval" if gate.get("awaiting_approval") else
                   "PASSED" if gate["promoted"] else "REJECTED")
        row("gate", f"v{gate['version']} {verdict}: {gate['reason']}")
    before, after = summary["champion_before"], summary["champion_after"]
    if after is None and before is not None:
        row("champion", f"unknown: the registry could not be read (was v{before})")
    else:
        row("champion", f"v{before} -> v{after}" if before != after else f"v{after} (unchanged)")
    for problem in summary.get("restore_problems") or []:
        row("not restored", problem)
    if summary["window_before"] != summary["window_after"]:
        row("training window", f"{summary['window_before']} -> {summary['window_after']}")
    search = summary.get("tune")
    if search:
        took = (f"{search['seconds']} s" if search["seconds"] is not None
                else "not re-run (same data and params)")
        row("search", f"{search['trials']} trials ({search['failed']} failed), best validation "
                      f"{search['metric']} {search['best_value']:.4f}; {took}")
    if summary.get("report_html"):
        row("drift report", summary["report_html"])
    row("duration", f"{summary['seconds']} s")
    return "\n".join(lines + _drift_table(summary.get("drift"))) + "\n"


def _drift_table(drift_result: dict[str, Any] | None) -> list[str]:
    if not drift_result:
        return []
    return ["", "| feature | method | score | threshold | drifted |", "|---|---|---|---|---|",
            *(f"| {f['name']} | {f['method']} | {f['score']:.4f} | {f['threshold']:.4f} | "
              f"{'**yes**' if f['drifted'] else 'no'} |" for f in drift_result["features"])]


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (folder / "summary.md").write_text(to_markdown(summary))
    textfile = folder / prom.CT_FILE  # for Prometheus; its counters go on from the last file
    prom.write(prom.ct_metrics(summary, prom.read_samples(textfile)), textfile)


def commit(root: Path, summary: dict[str, Any]) -> None:
    """Commit what a promotion changed: the new window, dvc.lock (data versions), reports."""
    paths = [str(p) for p in [*TRACKED, PLOTS_DIR]]
    subprocess.run(["git", "add", "--", *paths], cwd=root, check=True)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=root).returncode == 0:
        return  # e.g. a shadow promoted on evidence: nothing of the project's changed
    reasons = "; ".join((summary.get("decision") or {}).get("reasons", []))
    message = (f"CT: champion v{summary['champion_before']} -> v{summary['champion_after']}, "
               f"window {summary['window_after']}\n\n{reasons}\n")
    subprocess.run(["git", "commit", "--quiet", "-m", message], cwd=root, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.ct",
                                     description="Run one continuous-training cycle.")
    parser.add_argument("--force", action="store_true",
                        help="retrain regardless of drift and cooldown (scheduled retraining)")
    parser.add_argument("--current", choices=["batch", "log"],
                        help="what the drift check compares (default: monitoring.current)")
    parser.add_argument("--commit", action="store_true",
                        help="git-commit params.yaml, dvc.lock and reports when promoted")
    parser.add_argument("--summary-to", type=Path,
                        help="append the Markdown summary here (GitHub Actions: "
                             "$GITHUB_STEP_SUMMARY)")
    parser.add_argument("--outputs", type=Path,
                        help="append status=, decision=, promoted=, champion= lines here "
                             "(GitHub Actions: $GITHUB_OUTPUT)")
    args = parser.parse_args(argv)
    root = find_root()
    try:
        with cycle_lock(root):
            summary = run_cycle(root, force=args.force or _truthy(os.environ.get("CT_FORCE")),
                                current=args.current)
    except LockBusy as busy:
        print(f"ct: {busy}", file=sys.stderr)
        return LOCK_BUSY
    if args.commit and summary["promoted"]:
        commit(root, summary)
    if args.outputs:
        decision = (summary.get("decision") or {}).get("action", "none")
        with args.outputs.open("a") as out:
            out.write(f"status={summary['status']}\ndecision={decision}\n"
                      f"promoted={str(summary['promoted']).lower()}\n"
                      f"champion={summary['champion_after']}\n"
                      f"awaiting_approval={summary['awaiting_approval'] or ''}\n")
    folder = Path(load_params(root).ct.summary_dir)
    if args.summary_to:
        with args.summary_to.open("a") as out:
            out.write((root / folder / "summary.md").read_text())
    if summary["status"] == "failed":
        problems = summary.get("restore_problems") or []
        restored = ("params, data and champion restored" if not problems else
                    "NOT fully restored: " + "; ".join(problems))
        print(f"ct: FAILED at step '{summary['failed_step']}': {summary['error']}; "
              f"{restored} -> {folder}/summary.md", file=sys.stderr)
        return 1
    print(console_line(summary, folder))
    return 0


def console_line(summary: dict[str, Any], folder: Path) -> str:
    """The cycle's last line: what it did, the reason that decided it, the champion."""
    decision = summary["decision"]
    reason = decision.get("decided_by") or (decision["reasons"] or [""])[0]
    waiting = summary["awaiting_approval"]
    return (f"ct: {decision['action']}" + (f" ({reason})" if reason else "")
            + f"; champion v{summary['champion_before']} -> v{summary['champion_after']}"
            + (f", v{waiting} awaiting approval (make approve V={waiting})" if waiting else "")
            + f" in {summary['seconds']} s -> {folder}/summary.md")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


if __name__ == "__main__":
    sys.exit(main())
