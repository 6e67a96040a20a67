"""Benchmark: the pipeline on a data set of its own making (200,000 rows; ROWS=n), as a team
would feed it.

Builds a throw-away copy of the project with `source.kind: files`: 25 monthly batches of
loan applications (string labels repaid/default) for the landing folder, the first 23 as the
training window (the last two of those as the test split). Then, each in its own process,
timed with its peak memory (the largest process of the command's tree):
1. a cold `dvc repro` (every stage, MLflow run, registration);
2. each stage alone on the same data: where the cold repro's time goes;
3. one CT cycle after the 24th month lands, like the others (`python -m monitoring.ct`):
   versioned and checked, the drift check, no retrain;
4. one CT cycle after the 25th, drifted, month lands: the window slides one batch, and the
   retrain, gate and promotion run.

Prints each figure beside the baseline the real-data issue measured on a 277,000-row data set
(16 features): cold `dvc repro` ~65 s and ~780 MB; drift check on 209,000 rows 27 s.
Run from the project folder: `make bench-data [ROWS=n]`.
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
ROWS = 200_000  # in all; `make bench-data ROWS=1000000` for more
FIRST_MONTH = dt.date(2024, 1, 1)
BASELINE = {"cold dvc repro": (65.0, 780.0), "drift check (209,000 rows)": (27.0, 870.0)}


def month(index: int) -> dt.date:
    year, offset = divmod(FIRST_MONTH.month - 1 + index, 12)
    return dt.date(FIRST_MONTH.year + year, offset + 1, 1)


def monthly_batch(index: int, rows: int, covariate: float = 0.0) -> pd.DataFrame:
    start, end = month(index), month(index + 1)
    frame = make_batch(index, seed=5, start_date=start, batch_days=7, rows=rows,
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


def build(root: Path, rows_per_month: int) -> Project:
    project = make_project(root)

    def files_source(params: dict[str, Any]) -> None:
        params["source"].update(kind="files", path="data/landing")
        params["window"].update(start=month(0).isoformat(), end=month(MONTHS - 3).isoformat())
        params["prepare"]["test_batches"] = 2
        params["schema"]["classes"] = ["repaid", "default"]
        params["ct"]["cooldown_batches"] = 1

    project.set_params(files_source)
    landing = root / "data" / "landing"
    for index in range(MONTHS - 2):  # the window; one calm and one drifted month come later
        monthly_batch(index, rows_per_month).to_csv(landing / f"{month(index)}.csv",
                                                    index=False)
    project.commit("24 monthly batches")
    return project


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/real_data_bench.py")
    parser.add_argument("--keep", action="store_true", help="keep the project copy")
    parser.add_argument("--rows", type=int, default=ROWS, help="rows in all the batches")
    args = parser.parse_args(argv)
    per_month = args.rows // MONTHS
    folder = Path(tempfile.mkdtemp(prefix="real-data-bench-"))
    project = build(folder / "project", per_month)
    rows = [("cold dvc repro", *measured(project, sys.executable, "-m", "dvc", "repro"))]
    # Each stage again on its own (same data): where the cold repro's time goes.
    for stage in ("ingest", "validate", "prepare", "train", "evaluate", "register"):
        rows.append((f"  {stage} alone", *measured(project, sys.executable, "-m",
                                                   f"mlpipeline.{stage}")))
    project.dvc("repro")  # dvc.lock back in step with the outputs
    project.commit("trained")
    # A month like the others lands: checked and versioned, no drift, no retrain.
    monthly_batch(MONTHS - 2, per_month).to_csv(
        project.root / "data" / "landing" / f"{month(MONTHS - 2)}.csv", index=False)
    rows.append(("one CT cycle (no retrain)", *measured(project, sys.executable, "-m",
                                                        "monitoring.ct")))
    calm = json.loads((project.root / "reports/ct/summary.json").read_text())
    last = MONTHS - 1
    monthly_batch(last, per_month, covariate=1.0).to_csv(
        project.root / "data" / "landing" / f"{month(last)}.csv", index=False)
    rows.append(("one CT cycle (retrain)", *measured(project, sys.executable, "-m",
                                                     "monitoring.ct")))
    summary = json.loads((project.root / "reports/ct/summary.json").read_text())
    report = json.loads((project.root / "reports/validation.json").read_text())

    print(f"\nReal-data benchmark: {MONTHS} monthly batches x {per_month:,} rows = "
          f"{MONTHS * per_month:,} rows, 13 features, labels repaid/default "
          f"(this machine, one run)\n")
    print(f"| {'step':<26} | {'seconds':>8} | {'peak MB':>8} | baseline (277k rows)   |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 10}|{'-' * 24}|")
    for name, seconds, peak, _ in rows:
        base = BASELINE.get(name)
        shown = f"{base[0]:.0f} s, {base[1]:.0f} MB" if base else "-"
        print(f"| {name:<26} | {seconds:>8.1f} | {peak:>8.0f} | {shown:<22} |")
    print(f"\n- training window: {report['rows']:,} rows in "
          f"{sum(b['verdict'] == 'accepted' for b in report['batches'])} accepted batches")
    print(f"- CT, calm month: {calm['decision']['action']} ("
          f"{'; '.join(calm['decision']['reasons'][:1])})")
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
