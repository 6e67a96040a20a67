"""Benchmark: the pipeline and a CT cycle for each task, on the same synthetic applications.

For binary (the default params), multiclass and regression (their presets), in a fresh copy
of the project each: a cold `dvc repro` (every stage, the MLflow run, registration), one CT
cycle on a batch without drift (no retrain) and one on a drifted batch (retrain, gate,
promotion). Each step is a process of its own, timed with its peak memory (the largest
process of the step's tree). Prints a table for the README; run with `make bench-tasks`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.real_data_bench import measured
from tests.conftest import make_project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["binary", "multiclass", "regression"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            project = make_project(Path(tmp) / task, None if task == "binary" else task)
            repro = measured(project, sys.executable, "-m", "dvc", "repro")
            metrics = json.loads(project.read("reports/metrics.json"))
            calm = measured(project, sys.executable, "-m", "monitoring.ct")
            drifted = measured(project, sys.executable, "-m", "monitoring.ct")
            summary = json.loads(project.read("reports/ct/summary.json"))
            promoted = (summary.get("gate") or {}).get("promoted")
            rows.append((task, repro, calm, drifted, metrics, summary["decision"]["action"],
                         promoted))
            print(f"{task}: done", file=sys.stderr)
    print(f"\n{os.cpu_count()} cores; 8 weekly batches of 1,500 rows, 13 features; random "
          "forest (50 trees); each step in its own process, peak memory of its largest\n")
    print("| task | cold `dvc repro` | CT cycle, no drift (no retrain) | CT cycle, drifted batch "
          "(retrain, gate) | v1 on its test split |")
    print("|---|---|---|---|---|")
    for task, repro, calm, drifted, metrics, action, promoted in rows:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in list(metrics.items())[:3])
        print(f"| {task} | {repro[0]:.1f} s, {repro[1]:.0f} MB | {calm[0]:.1f} s, "
              f"{calm[1]:.0f} MB | {drifted[0]:.1f} s, {drifted[1]:.0f} MB ({action}, "
              f"{'promoted' if promoted else 'not promoted'}) | {shown} |")


if __name__ == "__main__":
    main()
