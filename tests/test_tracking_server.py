"""The pipeline against a real MLflow tracking server (`mlflow server`, a separate process on
127.0.0.1), not only the embedded SQLite store: a server validates what the store does not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.launch import free_port, wait_http_ok
from tests.conftest import ENV, make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` in its light form (one worker, no job runner), artefacts proxied."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", (folder / "artifacts").as_uri()],
        env={**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)  # its own group: uvicorn included
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/health", server, timeout=120)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_register_creates_versions_linked_to_the_logged_model_on_a_server(
        mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    project = make_project(tmp_path / "project")
    result = project.run(str(Path(sys.executable).parent / "dvc"), "repro", check=False,
                         env={"MLFLOW_TRACKING_URI": mlflow_server})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not (project.root / "mlflow.db").exists()  # everything went to the server
    run = json.loads(project.read("reports/run.json"))

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    [version] = client.search_model_versions("name = 'loan-default'")
    assert version.run_id == run["run_id"] and version.source == run["model_uri"]
    assert version.tags["data_version"] == run["data_version"]  # lineage on the version
    assert client.get_model_version_by_alias("loan-default", "champion").version == \
        version.version
    # Linked both ways: the logged model's page lists the version ("registered").
    logged = client.get_logged_model(run["model_id"])
    # (MLflow 3.17 writes the link twice, server and client side, version as int and str.)
    links = json.loads(logged.tags["mlflow.modelVersions"])
    assert {(link["name"], str(link["version"])) for link in links} == {
        ("loan-default", version.version)}
    gate = json.loads(project.read("reports/gate.json"))
    assert gate["promoted"] is True and gate["version"] == "1"
