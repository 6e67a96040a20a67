"""Batch scoring against its baselines, on the same rows, in one run (issue 34):

- the job, `python -m serving.batch` (what `make score` runs);
- `mlflow models predict -m models:/NAME@champion -t csv --env-manager local`;
- the champion's pyfunc `predict` in one process (the whole file read by pandas first);
- the warm service, fed 1,000-record requests on one connection (its sending time only:
  it is already up, as a service is).

Each is a whole process measured from outside: wall time, rows/s, and its peak memory (the
largest resident set of the process and its children). The input is ROWS synthetic
applications (the demo's source) as one CSV, the id column and the features.

    python benchmarks/score_bench.py --rows N   (in a project folder, after `make demo`)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from mlpipeline.config import load_params
from mlpipeline.loans import make_batch
from serving.launch import free_port, wait_http_ok

BIN = Path(sys.executable).parent
PIECE_ROWS = 200_000  # the input is generated and sent this many rows at a time


def write_input(path: Path, rows: int, params: Any) -> None:
    columns = [c for c in [params.schema.id_column, *params.schema.feature_names] if c]
    written, index = 0, 0
    with path.open("w") as out:
        while written < rows:
            n = min(PIECE_ROWS, rows - written)
            batch = make_batch(index, seed=11, start_date=dt.date(2026, 1, 5), batch_days=7,
                               rows=n, outcome=params.source.outcome)
            batch[columns].to_csv(out, index=False, header=written == 0)
            written, index = written + n, index + 1


def measured(command: list[str], cwd: Path) -> dict[str, float]:
    """A command's wall time and peak memory (MB), from a process that only waits for it:
    its children's largest resident set is the command's (and its own children's)."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "code = subprocess.run(sys.argv[1:]).returncode; "
             "print(time.perf_counter() - t, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    done = subprocess.run([sys.executable, "-c", probe, *command], cwd=cwd,
                          capture_output=True, text=True)
    seconds, peak_kb, code = done.stdout.split()[-3:]
    if code != "0":
        raise SystemExit(f"{command[:4]} failed:\n{done.stderr[-2000:]}")
    return {"seconds": float(seconds), "peak_mb": int(peak_kb) / 1024}


def in_process_pyfunc(source: Path) -> None:
    """The pyfunc baseline, run as its own process (`--pyfunc FILE`): read the whole file,
    then the champion's pyfunc predict on it."""
    import mlflow

    from mlpipeline import tracking

    params = load_params()
    with tracking.store(params):
        model = mlflow.pyfunc.load_model(f"models:/{params.mlflow.registered_model}@champion")
    model.predict(pd.read_csv(source))


def service_run(source: Path, root: Path, id_column: str | None) -> dict[str, float]:
    """The service, started and warmed up, fed the file as 1,000-record `dataframe_split`
    requests on one connection (bodies built between the timed stretches); its peak memory
    from /proc (VmHWM)."""
    port = free_port()
    service = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(port)],
                               cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/invocations"
    seconds = 0.0
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/ready", service)
        with httpx.Client(timeout=60) as client:
            text = {id_column: str} if id_column else None
            for piece in pd.read_csv(source, chunksize=PIECE_ROWS, dtype=text):
                bodies = [b'{"dataframe_split": ' + piece.iloc[start:start + 1000].to_json(
                    orient="split", index=False).encode() + b"}"
                    for start in range(0, len(piece), 1000)]
                started = time.perf_counter()
                for body in bodies:
                    client.post(url, content=body, headers={
                        "Content-Type": "application/json"}).raise_for_status()
                seconds += time.perf_counter() - started
        peak = next(line for line in Path(f"/proc/{service.pid}/status").read_text()
                    .splitlines() if line.startswith("VmHWM"))
        return {"seconds": seconds, "peak_mb": int(peak.split()[1]) / 1024}
    finally:
        service.terminate()
        service.wait(timeout=30)


def spread(values: list[float], digits: int = 0) -> str:
    return (f"{statistics.median(values):,.{digits}f} "
            f"[{min(values):,.{digits}f}-{max(values):,.{digits}f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pyfunc", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=None,
                        help="default: 3, or 1 from 5M rows (mlflow models predict alone "
                             "takes minutes there)")
    args = parser.parse_args()
    if args.pyfunc:
        in_process_pyfunc(args.pyfunc)
        return
    rounds = args.rounds or (3 if args.rows < 5_000_000 else 1)
    params = load_params()
    root, name = params.root, params.mlflow.registered_model
    id_column = params.schema.id_column
    work = Path(tempfile.mkdtemp(prefix="score-bench-"))
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    try:
        source = work / "applications.csv"
        write_input(source, args.rows, params)
        size_mb = source.stat().st_size / 1e6
        print(f"{args.rows:,} rows ({size_mb:,.0f} MB of CSV), {rounds} interleaved round(s), "
              f"load average {os.getloadavg()[0]:.2f}; each a whole process: wall time, "
              "rows/s, peak memory (resident)")
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(rounds):
            for label, run in [
                ("the job (make score)", lambda: measured(
                    [sys.executable, "-m", "serving.batch", "--input", str(source),
                     "--output", str(work / "scored"), "--overwrite"], root)),
                ("mlflow models predict", lambda: measured(
                    [str(BIN / "mlflow"), "models", "predict", "-m",
                     f"models:/{name}@champion", "-i", str(source), "-t", "csv",
                     "-o", str(work / "mlflow.json"), "--env-manager", "local"], root)),
                ("pyfunc predict in one process", lambda: measured(
                    [sys.executable, __file__, "--pyfunc", str(source)], root)),
                ("the service, 1,000-record requests", lambda: service_run(source, root,
                                                                           id_column)),
            ]:
                runs.setdefault(label, []).append(run())
        print("| process | seconds | rows/s | peak MB |")
        print("|---|---|---|---|")
        for label, measures in runs.items():
            print(f"| {label} | {spread([m['seconds'] for m in measures], 1)} | "
                  f"{spread([args.rows / m['seconds'] for m in measures])} | "
                  f"{spread([m['peak_mb'] for m in measures])} |")
        job, theirs = runs["the job (make score)"], runs["mlflow models predict"]
        speed = [t["seconds"] / j["seconds"] for j, t in zip(job, theirs, strict=True)]
        memory = [j["peak_mb"] / t["peak_mb"] for j, t in zip(job, theirs, strict=True)]
        peak = max(m["peak_mb"] for m in job)
        print(f"the job's rows/s / mlflow models predict's: {spread(speed, 2)}x "
              f"(target at 1M rows >= 5x: {'met' if min(speed) >= 5 else 'MISSED'}); "
              f"its peak memory / theirs: {spread(memory, 2)} (target <= 0.5: "
              f"{'met' if max(memory) <= 0.5 else 'MISSED'}); its peak: {peak:,.0f} MB "
              f"(target at 10M rows < 1,536: {'met' if peak < 1536 else 'MISSED'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
