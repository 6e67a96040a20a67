"""Benchmark: promotion to served on the production stack, webhook vs polling, both replicas.

Builds a throw-away copy of the project, brings up `make stack` in it (PostgreSQL, S3, MLflow
server, two replicas polling every `stack.poll_seconds`, 10 s as shipped), trains v1 with
`dvc repro` on the server and registers the same model again as v2. Then it moves `champion`
between v1 and v2 ROUNDS times and times, from the alias move returning, until each replica's
/model reports the new version:
1. with MLflow's alias webhooks (the stack's default);
2. with polling alone (webhooks deleted; the server restarted to drop its webhook cache).

Both phases run in one run on the same machine, so the ratio is the figure to read.
Run from the project folder: `make bench-reload`. The copy and the stack are removed at the end.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mlpipeline import stack
from mlpipeline.config import load_params, set_values
from tests.conftest import BIN, make_project

ROUNDS = 8
MODEL = "loan-default"


def served_version(url: str) -> str | None:
    response = httpx.get(f"{url}/model", timeout=10)
    return response.json()["version"] if response.status_code == 200 else None


def time_promotions(client: object, urls: list[str], rounds: int, poll_seconds: float
                    ) -> list[list[float]]:
    """Seconds from each alias move to each replica serving it: one row per promotion.
    Each move waits a random part of a poll period first: a promotion lands at any point of
    the replicas' poll cycle, not just after a poll (which would always cost a full period)."""
    rows = []
    pause = random.Random(7)
    for _ in range(rounds):
        time.sleep(pause.uniform(0, poll_seconds))
        target = "2" if served_version(urls[0]) == "1" else "1"
        started = time.monotonic()
        client.set_registered_model_alias(MODEL, "champion", target)  # type: ignore[attr-defined]
        moved = time.monotonic()
        done: dict[str, float] = {}
        while len(done) < len(urls):
            for url in urls:
                if url not in done and served_version(url) == target:
                    done[url] = time.monotonic() - moved
            if time.monotonic() - started > 120:
                raise SystemExit(f"bench: the replicas did not serve v{target} in 120 s")
            time.sleep(0.02)
        rows.append([done[url] for url in urls])
    return rows


def describe(name: str, rows: list[list[float]]) -> tuple[str, float]:
    both = [max(row) for row in rows]  # until every replica serves the new champion
    median = statistics.median(both)
    return (f"{name:<22} median {median:6.2f} s   min {min(both):6.2f} s   "
            f"max {max(both):6.2f} s   (each replica: "
            + ", ".join(f"{statistics.median(col):.2f} s" for col in zip(*rows, strict=True))
            + ")"), median


def main() -> None:
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
        project = make_project(Path(tmp) / "project")
        params_file = project.root / "params.yaml"
        params_file.write_text(set_values(params_file.read_text(), {
            "stack.s3_port": 0, "stack.mlflow_port": 0, "stack.replica_ports": [0, 0]}))
        params = load_params(project.root)
        state = stack.up(params)
        try:
            server = state["mlflow"]["url"]
            urls = [r["url"] for r in state["replicas"]]
            print(f"bench: stack up; replicas poll every {params.stack.poll_seconds:g} s; "
                  "training v1 ...", flush=True)
            project.run(str(BIN / "dvc"), "repro", env={"MLFLOW_TRACKING_URI": server})
            client = MlflowClient(tracking_uri=server, registry_uri=server)
            run = json.loads(project.read("reports/run.json"))
            import mlflow

            mlflow.set_tracking_uri(server)
            mlflow.register_model(run["model_uri"], MODEL)  # v2: the same model again
            for url in urls:
                while served_version(url) != "1":
                    time.sleep(0.1)

            poll = params.stack.poll_seconds
            webhook = time_promotions(client, urls, ROUNDS, poll)
            for replica in state["replicas"]:
                client.delete_webhook(replica["webhook_id"])
            stack.stop_part(params, "mlflow")  # its webhook cache lives 60 s otherwise
            stack.start_part(params, "mlflow")
            polling = time_promotions(client, urls, ROUNDS, poll)
        finally:
            stack.down(params)
    line_w, median_w = describe("webhook (this change)", webhook)
    line_p, median_p = describe("polling (baseline)", polling)
    print(f"\npromotion -> served by both replicas, {ROUNDS} promotions each:")
    print(f"  {line_w}\n  {line_p}")
    print(f"  polling / webhook: {median_p / median_w:.0f}x")


if __name__ == "__main__":
    sys.exit(main())
