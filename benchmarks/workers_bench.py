"""Benchmark: one worker against two (`python -m serving --workers 2`), as an A/B repeated.

The machine's speed drifts from minute to minute, so the two setups alternate: 1, 2, 1, 2...
each a fresh service on the champion, warmed up, then 16 connections of single-record
`/invocations` for `--seconds` (wrk; the Python load generator otherwise). Prints every run
and the range of the ratio two/one over the consecutive pairs. Run from the project folder
after `make demo`: `make bench-workers`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pandas as pd

from benchmarks.serve_bench import BIN, run_python, run_wrk
from mlpipeline.config import TEST_SPLIT, load_params
from serving.launch import free_port, wait_http_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    params = load_params()
    load = run_wrk if shutil.which("wrk") else run_python
    one = pd.read_parquet(params.path(TEST_SPLIT))[params.schema.feature_names].head(1)
    body = json.dumps({"dataframe_split": json.loads(one.to_json(orient="split",
                                                                 index=False))})
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    results: list[tuple[int, float]] = []
    for _ in range(args.rounds):
        for workers in (1, 2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            process = subprocess.Popen(
                [sys.executable, "-m", "serving", "--port", str(port), "--workers",
                 str(workers)], cwd=params.root, env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            try:
                wait_http_ok(f"{url}/ready", process)
                load(f"{url}/invocations", body, 16, 3)  # warms every worker
                rps = load(f"{url}/invocations", body, 16, args.seconds)["rps"]
            finally:
                process.terminate()
                process.wait(timeout=30)
            results.append((workers, rps))
            print(f"{workers} worker(s): {rps:.0f} requests/s", file=sys.stderr)
    ratios = [two / one for (_, one), (_, two) in zip(results[::2], results[1::2],
                                                      strict=True)]
    print(f"\n{os.cpu_count()} cores, 16 connections, {args.seconds} s per run, "
          f"{args.rounds} rounds of 1 then 2 workers\n")
    print("| round | 1 worker, requests/s | 2 workers, requests/s | ratio |")
    print("|---|---|---|---|")
    for i, ratio in enumerate(ratios):
        print(f"| {i + 1} | {results[2 * i][1]:.0f} | {results[2 * i + 1][1]:.0f} | "
              f"{ratio:.2f}x |")
    print(f"\ntwo workers / one: {min(ratios):.2f}x to {max(ratios):.2f}x "
          f"(median {sorted(ratios)[len(ratios) // 2]:.2f}x)")


if __name__ == "__main__":
    main()
