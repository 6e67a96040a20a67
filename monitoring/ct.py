"""One continuous-training cycle: `python -m monitoring.ct [--force] [--current batch|log]`.

Steps, each named in the output and in the summary:
1. new batch    `dvc repro validate` versions and checks what landed in the landing folder
                (`source.kind: files`; a simulated source's clock, `source.n_batches`, first
                advances by one); the batches dated after the champion's training window
                are the new ones (a full `dvc repro` when there is no champion yet, e.g. on a
                fresh CI runner with the embedded store)
2. drift check  monitoring.drift: the new data against the champion's training reference,
                the champion's real performance on the new outcomes, the guards
3. move window  retrain only: the training window slides by whole batches (keeping its
                number of batches) so that it ends at the newest batch
4. same data    retrain only: no retrain when the new training split is the champion's own
5. retrain      `dvc repro`: train, evaluate, gate and, if the gate passes, promote
                (pending changes to params or code are trained here too)

A file lock keeps two cycles from running at once. If any step fails, params.yaml, dvc.lock,
the tracked reports and the data are put back as they were (`dvc checkout`), the champion is
moved back if it moved, and the summary says which step failed. The summary is written as
JSON and as Markdown (for a GitHub Actions job summary) under `ct.summary_dir`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlpipeline.config import (
    GATE_REPORT,
    METRICS,
    PARAMS_FILE,
    PLOTS_DIR,
    RAW_DIR,
    TRAIN_SPLIT,
    VALIDATION_REPORT,
    find_root,
    load_params,
    set_values,
)
from mlpipeline.lineage import file_md5
from mlpipeline.source import dated_batches
from monitoring import decide, drift

LOCK_FILE = ".ct.lock"
LOCK_BUSY = 75  # exit code when another cycle holds the lock (EX_TEMPFAIL: try again later)
# What a cycle may rewrite that git tracks; DVC-cached outputs come back with `dvc checkout`.
TRACKED = [Path(PARAMS_FILE), Path("dvc.lock"), METRICS, GATE_REPORT, VALIDATION_REPORT]


class StepFailed(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step, self.detail = step, detail


class LockBusy(Exception):
    pass


@contextlib.contextmanager
def cycle_lock(root: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on <root>/.ct.lock; the OS drops it if we die."""
    with (root / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise LockBusy(f"another CT cycle holds {LOCK_FILE} (pid {holder}); "
                           "wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _env() -> dict[str, str]:
    # dvc.yaml runs `python -m ...`: it must be this interpreter, whoever started us.
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc(root: Path, step: str, *args: str) -> None:
    """Run DVC with its output shown; a non-zero exit fails the step."""
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=_env())
    if result.returncode != 0:
        raise StepFailed(step, f"`dvc {' '.join(args)}` exited with {result.returncode}")


class Snapshot:
    """The tracked files a cycle may change, to put back if it fails."""

    def __init__(self, root: Path) -> None:
        self.root = root
        paths = TRACKED + sorted(p.relative_to(root) for p in (root / PLOTS_DIR).glob("*"))
        self.files = {p: (root / p).read_bytes() if (root / p).is_file() else None
                      for p in paths}

    def restore(self) -> list[str]:
        problems = []
        for path, content in self.files.items():
            target = self.root / path
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        # The data and models that dvc.lock names again: DVC keeps every version in its cache.
        result = subprocess.run([sys.executable, "-m", "dvc", "checkout", "--force", "--quiet"],
                                cwd=self.root, env=_env(), capture_output=True, text=True)
        if result.returncode != 0:
            problems.append(f"dvc checkout: {result.stderr.strip()[-300:]}")
        return problems


def configure_remote(root: Path) -> bool:
    """Use the DVC remote named by DVC_REMOTE_URL (a CI secret) when set; pull what it has.
    DVC_REMOTE_ENDPOINT_URL points an s3:// remote at an S3-compatible store (MinIO); the
    credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as boto3 reads them."""
    url = os.environ.get("DVC_REMOTE_URL")
    if not url:
        return False
    dvc(root, "configure remote", "remote", "add", "--local", "--force", "--default", "ct", url)
    if endpoint := os.environ.get("DVC_REMOTE_ENDPOINT_URL"):
        dvc(root, "configure remote", "remote", "modify", "--local", "ct", "endpointurl",
            endpoint)
    pulled = subprocess.run([sys.executable, "-m", "dvc", "pull", "--quiet"], cwd=root,
                            env=_env())
    if pulled.returncode != 0:  # a new, empty remote: the cycle rebuilds what it needs
        print("ct: the DVC remote does not have everything yet; missing data is rebuilt")
    return True


def run_cycle(root: Path, *, force: bool = False, current: str | None = None,
              since: dt.datetime | None = None) -> dict[str, Any]:
    """One cycle; returns the summary (also written to ct.summary_dir)."""
    started = time.monotonic()
    params = load_params(root)
    from mlpipeline.registry import CHAMPION, Registry, window_end  # mlflow: not for --help

    try:
        registry = Registry(params)
        before = registry.version_by_alias(CHAMPION)
    except Exception as error:  # nothing has changed yet: say what to fix, no traceback
        raise SystemExit(f"ct: cannot use the MLflow store {params.tracking_uri()}: "
                         f"{_text(error)}") from None
    summary: dict[str, Any] = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "status": "ok", "failed_step": None, "error": None, "forced": force,
        "champion_before": str(before.version) if before else None,
        "window_before": f"{params.window.start}..{params.window.end}",
    }
    snapshot = Snapshot(root)
    step = "new batch"
    try:
        remote = configure_remote(root)
        if params.source.kind == "files":
            print(f"ct: [1/5] new batch: what landed in {params.source.path}/")
        else:  # a simulated source: its clock is what delivers the next batch
            n_batches = params.source.n_batches + 1
            print(f"ct: [1/5] new batch: source clock {params.source.n_batches} -> {n_batches}")
            _write_params(root, {"source.n_batches": n_batches})
        # Version and check every batch (generate, ingest, validate: a bad batch stops the
        # cycle here). Training waits for the verdict, except on a store with no champion yet
        # (a fresh CI runner on the embedded defaults).
        dvc(root, step, "repro", *(["validate"] if before else []))
        params = load_params(root)
        dated = dated_batches(params.path(RAW_DIR))
        newest = dated[-1]
        trained_to = window_end(before) if before else None
        landed = [day for day, _ in dated if trained_to is None or day > trained_to]
        summary["new_batch"] = {"date": newest[0].isoformat(), "file": newest[1].name,
                                "new": bool(landed), "since_champion": len(landed)}
        if not before:
            summary["bootstrap"] = f"no champion before: the first run made v" \
                                   f"{_champion(registry, CHAMPION)}"

        step = "drift check"
        print("ct: [2/5] drift check")
        check = drift.run_check(params, current, since=since, force=force)
        verdict = check["decision"]
        if not landed and not force:
            verdict = decide.nothing_landed(trained_to).as_dict()
        summary.update(drift=check["drift"], performance=check["performance"],
                       window=check["window"], reference=check["reference"],
                       report_html=check["report_html"], decision=verdict)
        print(drift.describe(check))

        if verdict["action"] == decide.RETRAIN:
            step = "move window"
            start, end = decide.slide_window([day for day, _ in dated], params.window.start,
                                             params.window.end, newest[0])
            print(f"ct: [3/5] move window: {params.window.start}..{params.window.end} -> "
                  f"{start}..{end}")
            _write_params(root, {"window.start": start.isoformat(), "window.end": end.isoformat()})
            dvc(root, step, "repro", "prepare")

            step = "same data"
            same = decide.same_data_reason(file_md5(root / TRAIN_SPLIT),
                                           check["champion_data_version"])
            print(f"ct: [4/5] same-data guard: {same or 'the training split is new'}")
            if same:
                summary["decision"] = {"action": decide.NO_RETRAIN,
                                       "triggers": verdict["triggers"],
                                       "reasons": [*verdict["reasons"], same]}
                _write_params(root, {"window.start": params.window.start.isoformat(),
                                     "window.end": params.window.end.isoformat()})
                dvc(root, step, "repro", "prepare")  # the old window's, from the run cache
            else:
                step = "retrain"
                print("ct: [5/5] retrain: dvc repro (train, evaluate, gate, promote)")
                dvc(root, step, "repro")
                summary["gate"] = json.loads((root / GATE_REPORT).read_text())
        if remote:
            step = "push data"
            dvc(root, step, "push")
    except (Exception, SystemExit, KeyboardInterrupt) as error:
        failure = error if isinstance(error, StepFailed) else StepFailed(step, _text(error))
        summary.update(status="failed", failed_step=failure.step, error=failure.detail)
        summary["restore_problems"] = snapshot.restore()
        try:
            now = _champion(registry, CHAMPION)
            if summary["champion_before"] and now != summary["champion_before"]:
                registry.set_champion(summary["champion_before"], "rollback",
                                      note=f"CT cycle failed at step '{failure.step}'")
        except Exception as registry_error:  # e.g. the store itself is what failed
            summary["restore_problems"].append(f"champion: {_text(registry_error)}")
    params = load_params(root)
    try:
        summary["champion_after"] = _champion(registry, CHAMPION)
    except Exception as error:  # the store is down: say so rather than guess
        summary["champion_after"] = None
        summary.setdefault("restore_problems", []).append(
            f"champion: could not read the alias: {_text(error)[:300]}")
    summary["promoted"] = summary["champion_after"] != summary["champion_before"] \
        and summary["status"] == "ok"
    summary["window_after"] = f"{params.window.start}..{params.window.end}"
    summary["seconds"] = round(time.monotonic() - started, 1)
    write_summary(params.path(params.ct.summary_dir), summary)
    return summary


def _champion(registry: Any, alias: str) -> str | None:
    version = registry.version_by_alias(alias)
    return str(version.version) if version else None


def _text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _write_params(root: Path, updates: dict[str, Any]) -> None:
    path = root / PARAMS_FILE
    path.write_text(set_values(path.read_text(), updates))


def to_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown for people (and for $GITHUB_STEP_SUMMARY)."""
    decision = summary.get("decision") or {}
    title = (f"failed at step '{summary['failed_step']}'" if summary["status"] == "failed"
             else decision.get("action", "?"))
    lines = [f"## CT cycle {summary['time']}: {title}", "", "| | |", "|---|---|"]

    def row(name: str, value: Any) -> None:
        lines.append(f"| {name} | {str(value).replace('|', '/')} |")

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
    gate = summary.get("gate")
    if gate:
        row("gate", f"v{gate['version']} {'PASSED' if gate['promoted'] else 'REJECTED'}: "
                    f"{gate['reason']}")
    before, after = summary["champion_before"], summary["champion_after"]
    if after is None and before is not None:
        row("champion", f"unknown: the registry could not be read (was v{before})")
    else:
        row("champion", f"v{before} -> v{after}" if before != after else f"v{after} (unchanged)")
    for problem in summary.get("restore_problems") or []:
        row("not restored", problem)
    if summary["window_before"] != summary["window_after"]:
        row("training window", f"{summary['window_before']} -> {summary['window_after']}")
    if summary.get("report_html"):
        row("drift report", summary["report_html"])
    row("duration", f"{summary['seconds']} s")
    drift_result = summary.get("drift")
    if drift_result:
        lines += ["", "| feature | method | score | threshold | drifted |", "|---|---|---|---|---|"]
        lines += [f"| {f['name']} | {f['method']} | {f['score']:.4f} | {f['threshold']:.4f} | "
                  f"{'**yes**' if f['drifted'] else 'no'} |" for f in drift_result["features"]]
    return "\n".join(lines) + "\n"


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (folder / "summary.md").write_text(to_markdown(summary))


def commit(root: Path, summary: dict[str, Any]) -> None:
    """Commit what a promotion changed: the new window, dvc.lock (data versions), reports."""
    paths = [str(p) for p in [*TRACKED, PLOTS_DIR]]
    subprocess.run(["git", "add", "--", *paths], cwd=root, check=True)
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
                      f"champion={summary['champion_after']}\n")
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
    print(f"ct: {summary['decision']['action']}; champion v{summary['champion_before']} -> "
          f"v{summary['champion_after']} in {summary['seconds']} s -> {folder}/summary.md")
    return 0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


if __name__ == "__main__":
    sys.exit(main())
