"""`python -m monitoring.demo`: the closed loop, once, on this machine (the end of `make demo`).

Starts the service on the current champion, then runs CT cycles: before each, the applications
of the next batch go to the service as production traffic; the cycle brings the batch with its
outcomes, checks drift and retrains when told to. It stops after the first retrain (at most
`--max-cycles`) and shows the running service answering with the new champion.

It sets tune.trials (`--tune-trials`), and each cycle moves the source clock and, on a
retrain, the window in params.yaml, as CT does;
`git diff HEAD params.yaml dvc.lock` shows it, and `git checkout HEAD -- params.yaml dvc.lock
reports` then `dvc checkout` undoes it (the README's advice, which works under
core.autostage).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
import pandas as pd

from mlpipeline.config import PARAMS_FILE, RAW_DIR, Params, find_root, load_params, set_values
from mlpipeline.source import read_batch, synthetic_batch
from monitoring import ct
from monitoring.cycle_guard import cycle_lock
from monitoring.drift import newest_batch
from serving.launch import free_port, start_service, wait_http_ok

SERVICE_LOG = Path("logs/demo-service.log")


def upcoming_traffic(params: Params) -> pd.DataFrame:
    """The applications the next batch will hold (the newest batch for a non-synthetic source):
    production sees the requests first, the outcomes arrive later with the batch."""
    if params.source.kind == "synthetic_loans":
        frame = synthetic_batch(params.source, params.source.n_batches)
    else:
        found = newest_batch(params.path(RAW_DIR))
        if found is None:
            return pd.DataFrame()
        frame = read_batch(found[1])
    # With their ids (schema.id_column), so the outcomes are later joined on them.
    schema = params.schema
    return frame[[*schema.feature_names, *[c for c in schema.optional_columns
                                             if c in frame.columns]]]


def send(url: str, frame: pd.DataFrame, chunk: int) -> set[str]:
    """POST the records in batches; return the model versions that answered."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    versions = set()
    with httpx.Client(base_url=url, timeout=30) as client:
        for start in range(0, len(records), chunk):
            response = client.post("/predict", json=records[start:start + chunk])
            response.raise_for_status()
            versions.add(response.json()["model"]["version"])
    return versions


def wait_for_version(url: str, version: str, timeout: float) -> None:
    """Until the service's /model reports `version` (it polls the registry by itself)."""
    started = time.monotonic()
    while httpx.get(f"{url}/model").json()["version"] != version:
        if time.monotonic() - started > timeout:
            raise SystemExit(f"demo: the service did not switch to v{version} in {timeout} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monitoring.demo")
    parser.add_argument("--max-cycles", type=int, default=3)
    parser.add_argument("--repro", action="store_true",
                        help="run `dvc repro` first (make demo does), in this process so that "
                             "DVC's hints are said once for the whole demo")
    parser.add_argument("--tune-trials", type=int, default=None,
                        help="set tune.trials in params.yaml first (make demo: a small search, "
                             "each trial a nested MLflow run)")
    args = parser.parse_args(argv)
    root = find_root()
    if args.tune_trials is not None:
        path = root / PARAMS_FILE
        path.write_text(set_values(path.read_text(), {"tune.trials": args.tune_trials}))
        print(f"demo: tune.trials: {args.tune_trials} (the search runs before train, and again "
              f"when a cycle retrains)")
    if args.repro and ct.run_dvc(root, "repro") != 0:
        raise SystemExit("demo: `dvc repro` failed (its output above names the stage)")
    params = load_params(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    poll = 1.0
    print(f"demo: starting the service on {url} (log: {SERVICE_LOG})")
    service = start_service(root, port, poll, params.path(SERVICE_LOG))
    try:
        wait_http_ok(f"{url}/ready", service, timeout=120)
        summary: dict = {}
        for cycle in range(1, args.max_cycles + 1):
            params = load_params(root)
            traffic = upcoming_traffic(params)
            versions = send(url, traffic, params.serving.max_records)
            print(f"\ndemo: cycle {cycle}: sent {len(traffic)} applications to the service; "
                  f"answered by v{', v'.join(sorted(versions))}")
            with cycle_lock(root):
                summary = ct.run_cycle(root)
            if summary["status"] != "ok":
                raise SystemExit(f"demo: the CT cycle failed at step '{summary['failed_step']}'"
                                 f": {summary['error']}")
            print(f"demo: cycle {cycle}: {summary['decision']['action']}; champion "
                  f"v{summary['champion_before']} -> v{summary['champion_after']}")
            if summary["decision"]["action"] == "retrain":
                break
        if summary.get("promoted"):
            wait_for_version(url, summary["champion_after"], timeout=10 * poll + 20)
            answered = send(url, upcoming_traffic(load_params(root)).head(5), 5)
            print(f"demo: the running service (pid {service.pid}, never restarted) picked up "
                  f"v{summary['champion_after']} by itself; it now answers with "
                  f"v{', v'.join(sorted(answered))}")
        if summary.get("report_html"):
            print(f"demo: drift report (Evidently): {summary['report_html']}")
        print(f"demo: cycle summary: {params.ct.summary_dir}/summary.md")
        print(f"demo: every check's history (Evidently workspace "
              f"{params.monitoring.history_dir}): make dashboard")
    finally:
        service.terminate()
        service.wait(timeout=30)


if __name__ == "__main__":
    main()
