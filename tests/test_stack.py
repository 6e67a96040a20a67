"""The loop on the production topology (`make stack`): PostgreSQL as MLflow's backend store, S3
(moto_server) behind the tracking server's artefact proxy, the DVC remote on the same bucket,
two service replicas that reload on MLflow's alias webhook. Every part is a real process on
127.0.0.1, started by `python -m mlpipeline.stack up` in a copy of the project.

The loop: `dvc repro` registers v1 on the server and both replicas load it; drifted traffic
split over both replicas is one window for the drift check; a CT cycle retrains, promotes v2
and pushes the data to S3 while traffic runs, and both replicas switch without a failed
request or a restart; a fresh clone pulls the data from S3 and reproduces the metrics;
PostgreSQL restarts; `make rollback` puts v1 back and both replicas follow.
Faults: the tracking server stops while the replicas serve, and during a CT cycle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from mlpipeline import stack as stack_module
from mlpipeline.config import load_params, set_values
from mlpipeline.prediction_log import read_log
from monitoring.demo import send, upcoming_traffic
from tests.conftest import BIN, ENV, Project, make_project

pytestmark = pytest.mark.slow

MODEL = "loan-default"


def served(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/model", timeout=10)
    return response.json() if response.status_code == 200 else {}


def wait_served(url: str, version: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (model := served(url)).get("version") != version:
        assert time.monotonic() < deadline, f"{url} still serves {model.get('version')}"
        time.sleep(0.1)
    return model


def group_pids(state: dict[str, Any]) -> set[int]:
    """Every process the stack runs: each part's leader and all its children."""
    leaders = [state["mlflow"]["pid"], state["s3"]["pid"],
               *(r["pid"] for r in state["replicas"]),
               state["spark"]["pid"], *state["spark"]["workers"]]
    pg_pid = int((Path(state["postgres"]["pgdata"]) / "postmaster.pid").read_text().split()[0])
    pids = set()
    for pid in [*leaders, pg_pid]:
        proc = psutil.Process(pid)
        pids |= {proc.pid, *(child.pid for child in proc.children(recursive=True))}
    return pids


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if psutil.pid_exists(p)
            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, dict[str, Any]]]:
    project = make_project(tmp_path_factory.mktemp("stack") / "project")
    params = project.root / "params.yaml"
    params.write_text(set_values(params.read_text(), {
        "stack.s3_port": 0, "stack.mlflow_port": 0, "stack.replica_ports": [0, 0],
        "stack.spark_master_port": 0, "stack.spark_ui_port": 0,
        # The data stages as Spark jobs on the stack's standalone cluster (ENGINE_MASTER).
        "engine.kind": "spark",
        "engine.conf": {"spark.executor.memory": "512m", "spark.sql.shuffle.partitions": 4},
        # A long poll: the replicas below switch models on the webhook, not on a poll.
        "stack.poll_seconds": 120,
        "serving.log_flush_seconds": 0.5,
        # Batch 8 is in: the next one (9) is the first drifted batch of the scenario.
        "source.n_batches": 9}))
    project.commit("stack settings")
    up = project.run(sys.executable, "-m", "mlpipeline.stack", "up")
    assert "Point a shell at it" in up.stdout
    state = stack_module.read_state(load_params(project.root))
    pids = group_pids(state)
    # postgres (+ its workers), moto, mlflow (+ uvicorn), 2 replicas, Spark's master and workers
    assert len(pids) >= 11
    assert len(stack_module.spark_applications(state["spark"], "workers")) == 2
    try:
        yield project, state
    finally:
        down = project.run(sys.executable, "-m", "mlpipeline.stack", "down")
        print(f"\n{down.stdout}", flush=True)  # each part with its stop time (seen with -s)
        assert all(part in down.stdout for part in ("postgres", "replica-2", "spark"))
        deadline = time.monotonic() + 10
        while alive(pids) and time.monotonic() < deadline:  # zombies reaped by init
            time.sleep(0.1)
        assert not alive(pids), "orphan processes after stack down"
        assert not (project.root / ".stack" / "stack.json").exists()
        remotes = project.run(str(BIN / "dvc"), "remote", "list").stdout.splitlines()
        assert "stack" not in {line.split()[0] for line in remotes}


class Traffic:
    """Requests to every replica in a loop, recording each answer, until stopped."""

    def __init__(self, urls: list[str], records: list[dict[str, Any]]) -> None:
        self.urls, self.records = urls, records
        self.answers: dict[str, list[tuple[int, str | None]]] = {u: [] for u in urls}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                for url in self.urls:
                    chunk = self.records[i % len(self.records):][:20]
                    try:
                        response = client.post(f"{url}/predict", json=chunk)
                        version = response.json().get("model", {}).get("version")
                        self.answers[url].append((response.status_code, version))
                    except httpx.HTTPError as error:
                        self.answers[url].append((0, type(error).__name__))
                i += 20
                time.sleep(0.02)


def records_of(frame: Any) -> list[dict[str, Any]]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def test_the_loop_on_the_production_stack(stack: tuple[Project, dict[str, Any]],
                                          tmp_path: Path) -> None:
    from mlflow import MlflowClient

    project, state = stack
    server = state["mlflow"]["url"]
    urls = [r["url"] for r in state["replicas"]]
    # What `source .stack/env.sh` exports: the tracking server, the Spark master and its
    # JVMs' defaults.
    on_server = {"MLFLOW_TRACKING_URI": server, "ENGINE_MASTER": state["spark"]["url"],
                 "SPARK_CONF_DIR": state["spark"]["conf_dir"]}
    env_sh = (Path(state["folder"]) / "env.sh").read_text()
    assert all(f"export {k}={v}" in env_sh for k, v in on_server.items())
    client = MlflowClient(tracking_uri=server, registry_uri=server)

    # v1: the pipeline registers on the server, its data stages run on the stack's Spark
    # master; both replicas load v1 on the alias webhook.
    repro = project.run(str(BIN / "dvc"), "repro", env=on_server)
    assert repro.stdout.count("(Spark)") == 3, repro.stdout
    project.commit("v1")
    same_as_embedded(project, tmp_path / "embedded")
    assert not (project.root / "mlflow.db").exists()
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    for url in urls:
        assert wait_served(url, "1")["loaded_by"] == "webhook"

    # Drifted traffic, half to each replica: one prediction log window for the drift check.
    batch = upcoming_traffic(load_params(project.root))  # batch 9's applications
    half = len(batch) // 2
    assert send(urls[0], batch.iloc[:half], 250) == {"1"}
    assert send(urls[1], batch.iloc[half:], 250) == {"1"}
    log_dir = project.root / "logs/predictions"
    deadline = time.monotonic() + 30
    while len(read_log(log_dir)) < len(batch):
        assert time.monotonic() < deadline, "the prediction logs never caught up"
        time.sleep(0.2)
    names = [p.name for p in log_dir.glob("date=*/*.parquet")]
    assert all(any(f"-{r}-" in n for n in names) for r in ("replica-1", "replica-2"))

    # The CT cycle as ct.yml runs it against the stack: server, S3 remote with an endpoint.
    s3 = state["s3"]
    ct_env = {**ENV, **on_server, **s3["credentials"],
              "DVC_REMOTE_URL": state["dvc_remote"], "DVC_REMOTE_ENDPOINT_URL": s3["url"]}
    cycle = subprocess.Popen([sys.executable, "-m", "monitoring.ct", "--current", "log",
                              "--commit"], cwd=project.root, env=ct_env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = []
    assert cycle.stdout is not None
    for line in cycle.stdout:  # traffic starts once the drift check has read the log
        output.append(line)
        if "[3/5]" in line:
            break
    with Traffic(urls, records_of(batch)) as traffic:
        output += cycle.stdout.readlines()
        assert cycle.wait() == 0, "".join(output)[-4000:]
        for url in urls:
            wait_served(url, "2", timeout=30)
        deadline = time.monotonic() + 30
        while min(sum(v == "2" for _, v in traffic.answers[u]) for u in urls) < 20:
            assert time.monotonic() < deadline, "the traffic stalled after the swap"
            time.sleep(0.05)  # traffic keeps running on v2
    summary = json.loads(project.read("reports/ct/summary.json"))
    # The master lists the stages of both runs (repro, then the cycle's) that ran there,
    # and the cycle's drift check (the log sampled there), all finished.
    apps = stack_module.spark_applications(state["spark"])
    names = [a["name"] for a in apps]
    stages = [f"mlpipeline {s}" for s in ("ingest", "validate", "prepare", "evaluate",
                                          "register")]
    assert set(names) == {*stages, "mlpipeline drift"}, names
    assert all(names.count(s) >= 2 for s in stages), names
    assert {a["state"] for a in apps} == {"FINISHED"}
    assert summary["window"]["kind"] == "log"
    assert summary["window"]["rows"] == len(batch)  # both replicas' logs, one window
    assert summary["decision"]["action"] == "retrain" and summary["drift"]["detected"]
    assert (summary["champion_before"], summary["champion_after"]) == ("1", "2")
    for url in urls:
        answers = traffic.answers[url]
        assert {status for status, _ in answers} == {200}, answers[-5:]  # none failed
        versions = [v for _, v in answers]
        switch = versions.index("2")  # v1 until the swap, v2 from then on
        assert switch > 0 and set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}
        model = served(url)
        assert model["loaded_by"] == "webhook" and model["version"] == "2"
    assert all(psutil.Process(r["pid"]).is_running() for r in state["replicas"])  # no restart
    version = client.get_model_version(MODEL, "2")
    assert client.get_model_version_by_alias(MODEL, "champion").version == "2"
    # Artefacts went through the server's proxy into the bucket.
    import boto3

    bucket = boto3.client("s3", endpoint_url=s3["url"], region_name="us-east-1",
                          aws_access_key_id=s3["credentials"]["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3["credentials"]["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=s3["bucket"])["Contents"]]
    assert any(k.startswith("mlartifacts/") and k.endswith("MLmodel") for k in keys)
    assert sum(k.startswith("dvc/") for k in keys) > 10  # the cycle pushed the data
    assert version.run_id

    # A fresh clone pulls the data from S3 and reproduces the same metrics.
    clone = Project(tmp_path / "clone")
    subprocess.run(["git", "clone", "-q", str(project.root), str(clone.root)], check=True)
    for args in (["remote", "add", "--local", "--default", "s3", state["dvc_remote"]],
                 ["remote", "modify", "--local", "s3", "endpointurl", s3["url"]]):
        clone.run(str(BIN / "dvc"), *args)
    clone.run(str(BIN / "dvc"), "pull", env=s3["credentials"])
    assert "up to date" in clone.run(str(BIN / "dvc"), "status").stdout
    # Its own store, and the embedded engine: the cycle's metrics, evaluated on the cluster,
    # come out of a train and evaluate in process too (a Spark session costs ~20 s a stage).
    (clone.root / "params.yaml").write_text(
        set_values(clone.read("params.yaml"), {"engine.kind": "embedded"}))
    clone.run(str(BIN / "dvc"), "repro", "--force", "--downstream", "train")
    assert json.loads(clone.read("reports/metrics.json")) == pytest.approx(json.loads(
        project.read("reports/metrics.json")), abs=1e-9)

    # make score on the stack's cluster: one task per file, loading v2 from the server; the
    # same folder as the job in process.
    score_on_the_cluster(project, state, tmp_path)

    # PostgreSQL restarts under the server; then `make rollback` goes through it.
    params = load_params(project.root)
    stack_module.stop_part(params, "postgres")
    stack_module.start_part(params, "postgres")
    # A replica's poll that began while PostgreSQL was down is still retrying: it would load
    # the rolled-back version itself, before the webhook. A check through the admin endpoint
    # waits for it (one check at a time) and shows the registry answers again.
    for url in urls:
        deadline = time.monotonic() + 60
        while (checked := admin(url, state))["outcome"] == "error" and (
                time.monotonic() < deadline):
            time.sleep(0.5)
        assert (checked["outcome"], checked["version"]) == ("unchanged", "2"), checked
    rollback = project.run(sys.executable, "-m", "mlpipeline.registry", "rollback",
                           env=on_server)
    assert "v1" in rollback.stdout
    for url in urls:
        assert wait_served(url, "1", timeout=30)["loaded_by"] == "webhook"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"


def score_on_the_cluster(project: Project, state: dict[str, Any], folder: Path) -> None:
    from mlpipeline.config import EngineParams
    from serving import batch

    server, spark = state["mlflow"]["url"], state["spark"]
    landed = sorted((project.root / "data/raw").glob("*.csv"))[-1]
    project.run(sys.executable, "-m", "serving.batch", "--input", str(landed), "--output",
                str(folder / "scored-on-spark"),
                env={"MLFLOW_TRACKING_URI": server, "ENGINE_MASTER": spark["url"],
                     "SPARK_CONF_DIR": spark["conf_dir"]})
    manifest = json.loads((folder / "scored-on-spark" / "manifest.json").read_text())
    assert (manifest["engine"], manifest["model"]["version"]) == ("spark", "2")
    assert manifest["rows"]["in"] == manifest["rows"]["scored"] > 1000
    assert "mlpipeline score" in {a["name"] for a in stack_module.spark_applications(spark)}
    params = load_params(project.root)
    in_process = params.model_copy(update={
        "engine": EngineParams(),
        "mlflow": params.mlflow.model_copy(update={"tracking_uri": server})})
    batch.run(in_process, landed, folder / "scored-in-process")
    for name in ("predictions", "rejects.parquet"):
        assert pq.read_table(folder / "scored-on-spark" / name).equals(
            pq.read_table(folder / "scored-in-process" / name)), name


def same_as_embedded(project: Project, copy: Path) -> None:
    """The reports of a repro on the cluster equal the embedded engine's on the same data:
    its data stages in process in a copy of the project, then the same fit and evaluate."""
    from mlpipeline import ingest, prepare, validate
    from mlpipeline.config import TEST_SPLIT, TRAIN_SPLIT, EngineParams
    from mlpipeline.evaluate import evaluate
    from mlpipeline.train import fit

    shutil.copytree(project.root, copy, symlinks=True,
                    ignore=shutil.ignore_patterns(".stack", "logs", ".git"))
    params = load_params(copy).model_copy(update={"engine": EngineParams()})
    ingest.run(params)
    validate.run(params)
    prepare.run(params)
    assert (copy / "reports/validation.json").read_text() == project.read(
        "reports/validation.json")
    model, _ = fit(pd.read_parquet(copy / TRAIN_SPLIT), params)
    metrics = evaluate(model, pd.read_parquet(copy / TEST_SPLIT), params)[0]
    assert metrics == pytest.approx(json.loads(project.read("reports/metrics.json")), abs=1e-9)


def admin(url: str, state: dict[str, Any]) -> dict[str, Any]:
    token = state["replica_env"]["SERVING_ADMIN_TOKEN"]
    return httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {token}"},
                      timeout=30).json()


def test_the_replicas_ride_out_a_tracking_server_outage(
        stack: tuple[Project, dict[str, Any]]) -> None:
    project, state = stack
    params = load_params(project.root)
    urls = [r["url"] for r in state["replicas"]]
    logs = [Path(state["folder"]) / "logs" / f"{r['name']}.log" for r in state["replicas"]]
    before = {url: served(url)["version"] for url in urls}
    lines_before = [len(log.read_text().splitlines()) for log in logs]

    stack_module.stop_part(params, "mlflow")
    for url in urls:
        for _ in range(5):  # five polls' worth of failed checks
            assert admin(url, state)["outcome"] == "error"
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 200 and ready.json()["registry"]["reachable"] is False
        assert "model_registry_reachable 0.0" in httpx.get(f"{url}/metrics").text
        response = httpx.post(f"{url}/predict", json=records_of(
            upcoming_traffic(params).head(3)))
        assert response.status_code == 200
        assert response.json()["model"]["version"] == before[url]
    for log, count in zip(logs, lines_before, strict=True):
        new = log.read_text().splitlines()[count:]
        assert len(new) <= 2, new  # one line for the outage, not one per check

    stack_module.start_part(params, "mlflow")
    for url, log in zip(urls, logs, strict=True):
        assert admin(url, state)["outcome"] == "unchanged"
        assert httpx.get(f"{url}/ready").json()["registry"]["reachable"] is True
        assert "work again" in log.read_text()


def test_a_cycle_whose_tracking_server_dies_leaves_the_champion(
        stack: tuple[Project, dict[str, Any]]) -> None:
    from mlflow import MlflowClient

    project, state = stack
    server = state["mlflow"]["url"]
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    versions = {v.version for v in client.search_model_versions(f"name = '{MODEL}'")}
    # About the tracking server, not the engine: the data stages in process (fast).
    on_spark = project.read("params.yaml")
    (project.root / "params.yaml").write_text(set_values(on_spark, {"engine.kind": "embedded"}))
    params_before, lock_before = project.read("params.yaml"), project.read("dvc.lock")

    env = {**ENV, "MLFLOW_TRACKING_URI": server, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    cycle = subprocess.Popen([sys.executable, "-m", "monitoring.ct", "--force"],
                             cwd=project.root, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    output = []
    assert cycle.stdout is not None
    for line in cycle.stdout:
        output.append(line)
        if "[5/5]" in line:  # retraining: the next thing to reach the server is evaluate
            stack_module.stop_part(load_params(project.root), "mlflow")
            break
    output += cycle.stdout.readlines()
    assert cycle.wait() == 1, "".join(output)[-3000:]
    summary = json.loads(project.read("reports/ct/summary.json"))
    assert summary["status"] == "failed" and summary["failed_step"] == "retrain"
    assert "FAILED at step 'retrain'" in "".join(output)
    assert project.read("params.yaml") == params_before  # restored
    assert project.read("dvc.lock") == lock_before

    stack_module.start_part(load_params(project.root), "mlflow")
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion
    after = {v.version for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert after == versions  # nothing half-registered
    (project.root / "params.yaml").write_text(on_spark)


def test_stopping_a_part_does_not_wait_on_its_zombie() -> None:
    """A part restarted in-process (`start_part`, as the test above does) is that process's
    child: stopped from `stack down`, another process, it stays a zombie until its parent
    reaps it. `down` took the zombie for a live process and waited out both of its timeouts
    (60 s for the MLflow server after the test above)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             start_new_session=True)
    try:
        started = time.monotonic()
        stop = subprocess.run(
            [sys.executable, "-c", "from mlpipeline.stack import stop_process; "
                                   f"print(stop_process({child.pid}, timeout=30))"],
            capture_output=True, text=True, env=ENV)
        elapsed = time.monotonic() - started
        assert stop.stdout.strip() == "True", stop.stderr
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE  # not reaped here
        assert elapsed < 30, f"waited {elapsed:.0f} s for a process that had exited"
    finally:
        child.kill()
        child.wait()
