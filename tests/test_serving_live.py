"""A real uvicorn process: the champion moves while a client keeps sending requests.
And schemathesis fuzzes the OpenAPI document: every one of its checks passes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families

from mlpipeline.config import ServingParams, load_params
from mlpipeline.prediction_log import read_log
from serving.app import create_app
from serving.launch import free_port, start_service, wait_http_ok
from tests.conftest import ENV, Project
from tests.test_serving import RECORD

pytestmark = pytest.mark.slow


def test_champion_change_is_served_without_restart_or_failed_requests(
        trained_project: Project, tmp_path: Path) -> None:
    from mlpipeline.registry import Registry

    # A copy: the promotion below must not show in the shared project's registry history.
    root = tmp_path / "project"
    shutil.copytree(trained_project.root, root, symlinks=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_service(root, port, 0.3, tmp_path / "service.log", env=ENV)
    try:
        wait_http_ok(f"{url}/ready", process, timeout=90)
        old = httpx.get(f"{url}/ready").json()["version"]
        results: list[tuple[int, str | None, str | None]] = []
        stop = threading.Event()

        def send() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                deadline = time.monotonic() + 60  # bounded in time and count
                while not stop.is_set() and len(results) < 20_000 and \
                        time.monotonic() < deadline:
                    try:
                        r = client.post("/predict", json=[RECORD, RECORD])
                        body = r.json() if r.status_code == 200 else {}
                        results.append((r.status_code, body.get("model", {}).get("version"),
                                        body.get("request_id")))
                    except httpx.TransportError as error:
                        results.append((0, None, str(error)))

        sender = threading.Thread(target=send)
        sender.start()
        while len(results) < 50:  # traffic is flowing on the old model
            time.sleep(0.05)
        registry = Registry(load_params(root))
        run = json.loads((root / "reports/run.json").read_text())
        assert registry.client.tracking_uri.endswith(f"{root}/mlflow.db")
        new = registry.register(run)
        registry.set_champion(new, "manual", note="hot reload test")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not results or results[-1][1] != new):
            time.sleep(0.1)
        swapped = len(results)
        while len(results) < swapped + 50 and time.monotonic() < deadline:  # and on the new
            time.sleep(0.05)
        stop.set()
        sender.join()
        process.send_signal(signal.SIGTERM)  # a clean shutdown drains the prediction log
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    failures = [r for r in results if r[0] != 200]
    assert failures == [], failures[:5]
    versions = [v for _, v, _ in results]
    switch = versions.index(new)
    assert switch > 0 and set(versions[:switch]) == {old} and set(versions[switch:]) == {new}
    served = {rid for _, _, rid in results}
    log = read_log(root / "logs/predictions")
    logged = log[log["request_id"].isin(served)]
    assert len(logged) == 2 * len(results)
    assert set(logged["model_version"]) == {old, new}


@pytest.fixture(scope="module")
def api_schema(trained_project: Project, tmp_path_factory: pytest.TempPathFactory):
    params = load_params(trained_project.root)
    params = params.model_copy(update={"serving": ServingParams(
        prediction_log_dir=str(tmp_path_factory.mktemp("fuzzlog")), max_records=50)})
    app = create_app(params, start_poller=False)
    with TestClient(app):  # keeps the lifespan (loaded champion) up while schemathesis calls
        champion = app.state.champion
        assert champion.current is not None, (
            params.tracking_uri(), champion.client.tracking_uri, champion.not_ready_reason,
            champion.last_check_error, os.environ.get("MLFLOW_TRACKING_URI"))
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_fuzzed_requests_pass_every_schemathesis_check(api_schema) -> None:
    """Every operation of the OpenAPI document, with generated valid and invalid inputs,
    passes all of schemathesis' checks: no 5xx, only documented statuses and content types,
    schema-valid data accepted and schema-violating data refused with a 4xx."""
    # The suite's own test client keeps the app's lifespan (the loaded champion) running.
    failures: list[tuple] = []
    predict_statuses: set[int] = set()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
    # Invalid inputs exist only where there is a body to break: /predict and /invocations.
    # (The GETs take nothing, and /admin/reload's one optional header has no invalid form.)
    plan = [(op, positive) for op in operations] + [
        (op, negative) for op in operations if op.path in ("/predict", "/invocations")]
    for operation, mode in plan:

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: schemathesis.Case) -> None:
            response = case.call()
            if case.path == "/predict":
                predict_statuses.add(response.status_code)
            try:
                case.validate_response(response)  # every check schemathesis has
            except Exception as failure:  # one group of failed checks, with their titles
                failures.append((case.method, case.path, response.status_code,
                                 str(failure)[:400]))

        call()
    assert {op.path for op in operations} >= {"/predict", "/invocations", "/health", "/ready",
                                              "/model", "/metrics", "/admin/reload"}
    assert failures == [], failures[:3]
    # The fuzzer reached both sides of validation, not just one.
    assert 200 in predict_statuses and predict_statuses & {413, 422}, predict_statuses


def test_two_workers_share_the_port_and_each_logs_its_own_files(
        trained_project: Project, tmp_path: Path) -> None:
    """`--workers 2`: two processes answer on one port, each with its model (and the
    registry's shadow) and its own prediction-log files, and one /metrics for both, the
    shadow's counters included; a SIGTERM to the parent drains both logs. Bodies that once
    stopped a worker's log for good (a lone surrogate in an id) are refused, and every
    request after them is logged, each column in one type whatever number type a client
    sent."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from mlpipeline.registry import Registry

    root = tmp_path / "project"  # a copy: the shadow must not show in the shared registry
    shutil.copytree(trained_project.root, root, symlinks=True)
    registry = Registry(load_params(root))
    shadow = registry.register(json.loads((root / "reports/run.json").read_text()))
    registry.hold(shadow, shadow=True, replaced=None)  # what register does in shadow mode
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "workers.log").open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port), "--workers", "2",
             "--replica", "workers-test"], cwd=root, env=ENV, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"{url}/ready", process, timeout=90)
        deadline = time.monotonic() + 90  # the other worker may still be loading its model
        while (tmp_path / "workers.log").read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline and process.poll() is None, "one worker only"
            time.sleep(0.1)
        records = {"dataframe_records": [RECORD]}  # integers where the schema has numbers
        split = {"dataframe_split": {"columns": [*RECORD, "application_id"], "data": [
            [float(v) if type(v) is int else v for v in RECORD.values()] + ["a-1"]]}}
        surrogate = json.dumps(split).replace('"a-1"', '"\\ud800"')

        def send(n: int) -> str:
            with httpx.Client(base_url=url, timeout=30) as client:
                if n % 10 == 0:
                    refused = client.post("/invocations", content=surrogate,
                                          headers={"content-type": "application/json"})
                    assert refused.status_code == 422, refused.text
                    assert refused.json()["detail"][0]["field"] == "application_id"
                response = client.post("/invocations", json=split if n % 2 else records)
                assert response.status_code == 200, response.text
                return response.headers["X-Request-Id"]

        with ThreadPoolExecutor(8) as pool:
            request_ids = set(pool.map(send, range(400)))

        # One /metrics for the replica: every scrape, whichever worker takes it, counts
        # every request of both workers (multiprocess mode), and the gauges come once.
        def scrape() -> dict[tuple, float]:
            text = httpx.get(f"{url}/metrics").text
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(text) for s in f.samples}

        scrapes = [scrape() for _ in range(8)]
        served = [sum(v for (name, labels), v in found.items()
                      if name == "http_requests_total"
                      and dict(labels).get("endpoint") == "/invocations") for found in scrapes]
        assert served == [440] * 8, served  # 40 refused
        for found in scrapes:
            assert sum(v for (name, _), v in found.items() if name == "predictions_total") == 400
            assert found[("model_loaded", ())] == 1
            assert [labels for (name, labels), v in found.items()
                    if name == "served_model_info" and v == 1] == [labels for (
                        name, labels) in found if name == "served_model_info"]
        pids = {line.split("[")[1].split("]")[0]
                for line in (tmp_path / "workers.log").read_text().splitlines()
                if "Started server process" in line}
        assert len(pids) == 2, pids
        # The shadow's counters, of both workers: every request scored, once it caught up.
        deadline = time.monotonic() + 30
        while (found := scrape()).get(("prediction_shadow_scored_total", (
                ("shadow_version", shadow),))) != 400:
            assert time.monotonic() < deadline, {k: v for k, v in found.items()
                                                 if k[0].startswith("prediction_shadow")}
            time.sleep(0.2)
        assert found[("prediction_shadow_pending", ())] == 0
        for outcome in ("dropped", "failed"):  # none: no series, or a zero one
            assert found.get((f"prediction_shadow_{outcome}_total",
                              (("shadow_version", shadow),)), 0) == 0
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    parts = list((root / "logs/predictions").glob("date=*/*-workers-test-*.parquet"))
    pids = {p.name.split("-workers-test-")[1].split("-")[0] for p in parts}
    assert len(pids) == 2, (pids, (tmp_path / "workers.log").read_text()[-2000:])
    rows = [pq.read_table(p, columns=["request_id", "role"]).to_pylist() for p in parts]
    for role in ("champion", "shadow"):  # every request, once, across both workers
        logged = [r["request_id"] for part in rows for r in part if r["role"] == role]
        assert sorted(logged) == sorted(request_ids), role
    assert {str(pq.read_schema(p).field("age").type) for p in parts} == {"double"}


def test_a_version_with_another_contract_is_served_by_its_own_contract(
        trained_project: Project, tmp_path: Path) -> None:
    """The request model comes from the served version, not from the service's params.yaml:
    a replica configured with only the registry settings (no `schema`) takes a new field as
    soon as a version trained with it becomes champion, and refuses the old shape naming it."""
    import shutil

    import numpy as np
    import pandas as pd
    import yaml

    from mlpipeline import evaluate, tracking, train
    from mlpipeline.config import REFERENCE, TEST_SPLIT, TRAIN_SPLIT
    from mlpipeline.registry import Registry
    from mlpipeline.schema import FeatureSpec

    root = tmp_path / "project"  # a copy: the shared trained project keeps its champion
    shutil.copytree(trained_project.root, root, ignore=shutil.ignore_patterns(".git"))
    params = load_params(root)
    service_dir = tmp_path / "replica"  # a replica's whole configuration: registry and limits
    service_dir.mkdir()
    (service_dir / "params.yaml").write_text(yaml.safe_dump({
        "mlflow": {**params.mlflow.model_dump(), "tracking_uri": params.tracking_uri()},
        "serving": {"prediction_log_dir": "log", "max_records": 50}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_service(service_dir, port, 0.2, tmp_path / "service.log", env=ENV)
    try:
        wait_http_ok(f"{url}/ready", process, timeout=90)
        old = httpx.get(f"{url}/ready").json()["version"]
        assert httpx.post(f"{url}/predict", json=RECORD).status_code == 200
        assert "has_cosigner" not in httpx.get(f"{url}/openapi.json").json()[
            "components"]["schemas"]["Record"]["properties"]

        # A version trained with one more feature, and another decision threshold.
        wider = params.schema.model_copy(update={"features": [
            *params.schema.features,
            FeatureSpec(name="has_cosigner", type="categorical", categories=["no", "yes"])]})
        wider_params = params.model_copy(update={
            "schema_": wider, "evaluate": params.evaluate.model_copy(update={"threshold": 0.3}),
            "mlflow": params.mlflow.model_copy(update={"experiment": "wider"})})
        rng = np.random.default_rng(0)
        frames = {}
        for split in (TRAIN_SPLIT, TEST_SPLIT, REFERENCE):
            frame = pd.read_parquet(root / split)
            frame["has_cosigner"] = rng.choice(["no", "yes"], size=len(frame))
            frames[split] = frame
        for split, frame in frames.items():  # the run describes, and scores, the split files
            frame.to_parquet(root / split)
        model, info = train.fit(frames[TRAIN_SPLIT], wider_params)
        (metrics, predictions, plots), check = evaluate.scored_test(wider_params, model)
        run = tracking.log_training_run(
            wider_params, model=model, metrics=metrics, check_rows=check, plot_tables=plots,
            predictions=predictions, train_info=info)
        registry = Registry(wider_params)
        new = registry.register(run)
        registry.set_champion(new, "manual", note="a version with one more feature")

        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/ready").json()["version"] != new:
            assert time.monotonic() < deadline, (tmp_path / "service.log").read_text()[-2000:]
            time.sleep(0.1)
        accepted = httpx.post(f"{url}/predict", json=[{**RECORD, "has_cosigner": "yes"}])
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["model"]["version"] == new
        refused = httpx.post(f"{url}/predict", json=[RECORD])
        assert refused.status_code == 422
        assert [(e["record"], e["field"], e["type"]) for e in refused.json()["detail"]] == [
            (0, "has_cosigner", "missing")]
        split = {"dataframe_split": {"columns": list(RECORD),
                                     "data": [list(RECORD.values())]}}
        refused_split = httpx.post(f"{url}/invocations", json=split)
        assert refused_split.status_code == 422 and "has_cosigner" in refused_split.text
        record_schema = httpx.get(f"{url}/openapi.json").json()["components"]["schemas"][
            "Record"]
        assert "has_cosigner" in record_schema["required"]
        described = httpx.get(f"{url}/model").json()["contract"]
        assert described["threshold"] == 0.3 and "has_cosigner" in described["features"]
        assert new != old
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_ctrl_c_stops_make_serve_with_one_line_and_status_0(trained_project: Project) -> None:
    """`make serve` in a terminal, then Ctrl-C: the service shuts down, one line says so, and
    make exits 0 (it used to die of the interrupt too: "make: *** ... Interrupt" or "Error
    241" after the server's own exit, status 130)."""
    import pty
    import select

    from tests.conftest import REPO

    port = free_port()
    env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{trained_project.root}/mlflow.db"}
    pid, terminal = pty.fork()  # the child's controlling terminal: Ctrl-C is a keystroke
    if pid == 0:
        os.chdir(REPO)
        os.execvpe("make", ["make", "--no-print-directory", "serve", f"PORT={port}"], env)
    output = b""

    def read_until(done: Any, timeout: float) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if select.select([terminal], [], [], 0.2)[0]:
                try:
                    chunk = os.read(terminal, 65536)
                except OSError:  # the terminal closed: everything ended
                    return
                if not chunk:
                    return
                output += chunk

    try:
        read_until(lambda: b"Application startup complete" in output, 120)
        assert httpx.get(f"http://127.0.0.1:{port}/ready").json()["version"] == "1"
        os.write(terminal, b"\x03")  # Ctrl-C
        read_until(lambda: False, 30)
    finally:
        deadline = time.monotonic() + 15
        while not (ended := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        if not ended[0]:  # still running: a step above failed; stop make (it stops the rest)
            os.killpg(pid, signal.SIGTERM)
            ended = os.waitpid(pid, 0)
        status = ended[1]
        os.close(terminal)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert text.rstrip().splitlines()[-1] == "make serve: stopped", text[-2000:]
    assert "Traceback" not in text and "make: ***" not in text
