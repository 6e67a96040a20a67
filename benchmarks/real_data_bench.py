"""Benchmark: the pipeline on a 200,000-row data set of its own making, as a team would feed it.

Builds a throw-away copy of the project with `source.kind: files`: 25 monthly batches of
8,000 loan applications (string labels repaid/default) in the landing folder, the first 24
as the training window (192,000 rows, the last two months as the test split). Then, each in
its own process, timed with its peak memory (the largest process of the command's tree):
1. a cold `dvc repro` (every stage, MLflow run, registration);
2. `validate` alone on the same data (the batch-by-batch checks);
3. one CT cycle after the 25th, drifted, month lands (`python -m monitoring.ct`):
   versioning and checking the batch, the drift check, the window sliding one batch, and
   the retrain, gate and promotion on 192,000 rows.

Prints each figure beside the baseline the real-data issue measured on a 277,000-row data set
(16 features): cold `dvc repro` ~65 s and ~780 MB; drift check on 209,000 rows 27 s.
Run from the project folder: `make bench-data` (or `uv run python benchmarks/real_data_bench.py`).
Nothing leaves the machine; the copy is deleted at the end (--keep to look at it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlpipeline.loans import make_batch
from tests.conftest import ENV, Project, make_project

MONTHS = 25
ROWS_PER_MONTH = 8_000
FIRST_MONTH = dt.date(2024, 1, 1)
BASELINE = {"cold dvc repro": (65.0, 780.0), "drift check (209,000 rows)": (27.0, 870.0)}


def month(index: int) -> dt.date:
    year, offset = divmod(FIRST_MONTH.month - 1 + index, 12)
    return dt.date(FIRST_MONTH.year + year, offset + 1, 1)


def monthly_batch(index: int, covariate: float = 0.0) -> pd.DataFrame:
    start, end = month(index), month(index + 1)
    frame = make_batch(index, seed=5, start_date=start, batch_days=7, rows=ROWS_PER_MONTH,
                       covariate=covariate)
    span = (end - start).days * 86_400
    seconds = np.sort(np.random.default_rng(index).integers(0, span, len(frame)))
    frame["application_date"] = pd.Timestamp(start) + pd.to_timedelta(seconds, "s")
    frame["default"] = frame["default"].map({0: "repaid", 1: "default"})
    return frame


def measured(project: Project, *command: str) -> tuple[float, float, str]:
    """(seconds, peak MB of the largest process, output) of one command in a fresh process,
    so the peak is this command's alone."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(time.perf_counter() - t, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode); "
             "sys.stderr.write(r.stdout + r.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, *command], cwd=project.root, env=ENV,
                            capture_output=True, text=True)
    seconds, peak_kb, code = result.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return float(seconds), int(peak_kb) / 1024, result.stderr


def build(root: Path) -> Project:
    project = make_project(root)

    def files_source(params: dict[str, Any]) -> None:
        params["source"].update(kind="files", path="data/landing")
        params["window"].update(start=month(0).isoformat(), end=month(MONTHS - 2).isoformat())
        params["prepare"]["test_batches"] = 2
        params["schema"]["classes"] = ["repaid", "default"]
        params["ct"]["cooldown_batches"] = 1

    project.set_params(files_source)
    landing = root / "data" / "landing"
    for index in range(MONTHS - 1):
        monthly_batch(index).to_csv(landing / f"{month(index)}.csv", index=False)
    project.commit("24 monthly batches")
    return project


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/real_data_bench.py")
    parser.add_argument("--keep", action="store_true", help="keep the project copy")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="real-data-bench-"))
    project = build(folder / "project")
    rows = [("cold dvc repro", *measured(project, sys.executable, "-m", "dvc", "repro"))]
    rows.append(("validate alone", *measured(project, sys.executable, "-m",
                                             "mlpipeline.validate")))
    last = MONTHS - 1
    monthly_batch(last, covariate=1.0).to_csv(
        project.root / "data" / "landing" / f"{month(last)}.csv", index=False)
    rows.append(("one CT cycle (retrain)", *measured(project, sys.executable, "-m",
                                                     "monitoring.ct")))
    summary = json.loads((project.root / "reports/ct/summary.json").read_text())
    report = json.loads((project.root / "reports/validation.json").read_text())

    print(f"\nReal-data benchmark: {MONTHS} monthly batches x {ROWS_PER_MONTH:,} rows = "
          f"{MONTHS * ROWS_PER_MONTH:,} rows, 13 features, labels repaid/default "
          f"(this machine, one run)\n")
    print(f"| {'step':<26} | {'seconds':>8} | {'peak MB':>8} | baseline (277k rows)   |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 10}|{'-' * 24}|")
    for name, seconds, peak, _ in rows:
        base = BASELINE.get(name)
        shown = f"{base[0]:.0f} s, {base[1]:.0f} MB" if base else "-"
        print(f"| {name:<26} | {seconds:>8.1f} | {peak:>8.0f} | {shown:<22} |")
    print(f"\n- training window: {report['rows']:,} rows in "
          f"{sum(b['verdict'] == 'accepted' for b in report['batches'])} accepted batches")
    print(f"- CT: {summary['decision']['action']} ({', '.join(summary['decision']['triggers'])})"
          f", window {summary['window_before']} -> {summary['window_after']}, champion "
          f"v{summary['champion_before']} -> v{summary['champion_after']}")
    drift = summary.get("drift") or {}
    print(f"- drift: {len(drift.get('drifted', []))} of {len(drift.get('features', []))} "
          f"features drifted on {drift.get('current_rows')} current rows")
    cold = rows[0]
    print(f"- cold repro vs baseline: {cold[1] / BASELINE['cold dvc repro'][0]:.2f}x the time, "
          f"{cold[2] / BASELINE['cold dvc repro'][1]:.2f}x the memory (the baseline had "
          "277,000 rows and 16 features)")
    if args.keep:
        print(f"- project copy kept in {project.root}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
