"""Benchmark: the drift check on a two-million-row prediction log, before and after compaction.

Builds a throw-away copy of the project (`dvc repro`: a champion to compare with), then
writes ROWS served records to its prediction log as the service does (the service's own
writer, parts of about 2,400 rows: 3 minutes at 2,300 requests/s left 845 such parts), and
times, each in its own process with its peak memory:
1. the drift check on the log window (`python -m monitoring.drift --current log`) over the
   parts as written;
2. `make compact-log` (`python -m mlpipeline.prediction_log compact`);
3. the same drift check on the compacted day file.
Prints them beside the issue's baseline: 104 s for the drift check over a 2.04M-row window.
Run from the project folder: `make bench-log` (ROWS=... to change the size).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.real_data_bench import measured
from mlpipeline.config import load_params
from mlpipeline.prediction_log import log_types
from mlpipeline.source import synthetic_batch
from serving.prediction_log import PredictionLog
from tests.conftest import make_project

BASELINE_SECONDS = 104.0  # the drift check over a 2.04M-row log window


def write_log(root: Path, rows: int) -> tuple[int, float]:
    """`rows` records of the synthetic applications, 500 per request, through the service's
    writer; returns (parts written, seconds)."""
    params = load_params(root)
    schema = params.schema
    base = pd.concat([synthetic_batch(params.source, i) for i in range(8)], ignore_index=True)
    columns = {n: base[n].astype(object).where(base[n].notna(), None).tolist()
               for n in schema.feature_names}
    ids = base[schema.id_column].tolist()
    folder = root / params.serving.prediction_log_dir
    # Queued as fast as the loop runs: a bound of all the rows, so none is dropped.
    log = PredictionLog(folder, 2400, 3600, "bench", max_queued_records=rows)
    types = log_types(schema)
    started, sent, request = time.perf_counter(), 0, 0
    while sent < rows:
        size = min(500, rows - sent)
        low = (request * 500) % (len(base) - 500)
        chunk = {n: values[low:low + size] for n, values in columns.items()}
        chunk[schema.id_column] = [f"{i}-{request}" for i in ids[low:low + size]]
        log.append(chunk, {"prediction": [0] * size, "probability": [0.3] * size}, "1",
                   f"request-{request}", types=types)
        sent, request = sent + size, request + 1
    log.close()
    return len(list(folder.glob("date=*/*.parquet"))), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_040_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="log-bench-"))
    try:
        project = make_project(folder / "project")
        project.dvc("repro")
        parts, seconds = write_log(project.root, args.rows)
        print(f"wrote {args.rows} rows as {parts} parts in {seconds:.1f} s", file=sys.stderr)
        check = (sys.executable, "-m", "monitoring.drift", "--current", "log")
        before = measured(project, *check)
        compacted = measured(project, sys.executable, "-m", "mlpipeline.prediction_log",
                             "compact")
        files = len(list((project.root / "logs/predictions").glob("date=*/*.parquet")))
        after = measured(project, *check)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nprediction log: {args.rows} rows; 2 cores; seconds and peak MB of the process\n")
    print("| step | seconds | peak MB | baseline (issue) |")
    print("|---|---|---|---|")
    print(f"| drift check, log window of {parts} parts | {before[0]:.1f} | {before[1]:.0f} | "
          f"{BASELINE_SECONDS:.0f} s |")
    print(f"| compaction: {parts} parts -> {files} file(s) | {compacted[0]:.1f} | "
          f"{compacted[1]:.0f} | - |")
    print(f"| drift check, compacted log | {after[0]:.1f} | {after[1]:.0f} | "
          f"{BASELINE_SECONDS:.0f} s |")
    print(f"\ntarget: at most 15 s: {'met' if max(before[0], after[0]) <= 15 else 'MISSED'} "
          f"({after[0] / BASELINE_SECONDS:.2f} of the baseline)")


if __name__ == "__main__":
    main()
