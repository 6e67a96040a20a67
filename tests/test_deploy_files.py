"""The Docker files, checked without Docker (images cannot be pulled on CI machines): they
must describe the same topology `make stack` runs and tests/test_stack.py exercises.
`make lint` also runs hadolint on the Dockerfile and the compose-spec schema on compose.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mlpipeline.config import load_params

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def final_stage(dockerfile: str) -> str:
    return dockerfile[dockerfile.rindex("\nFROM "):]


def test_compose_runs_the_stack_topology_on_loopback_ports() -> None:
    services = compose()["services"]
    assert {"postgres", "minio", "mlflow", "replica-1", "replica-2", "prometheus"} <= set(
        services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    mlflow = services["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--workers=1" in command
    assert "--backend-store-uri=postgresql+psycopg://" in command
    assert "--artifacts-destination=s3://" in command  # proxied: clients need no S3 keys
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_replicas_share_one_log_folder_under_their_own_names() -> None:
    services = compose()["services"]
    log_dir = "/app/" + load_params(REPO).serving.prediction_log_dir
    names = set()
    for name in ("replica-1", "replica-2"):
        replica = services[name]
        assert replica["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        names.add(replica["environment"]["SERVING_REPLICA"])
        assert any(v.split(":")[1] == log_dir for v in replica["volumes"])
    assert len(names) == 2
    scraped = yaml.safe_load((REPO / "serving/prometheus.yml").read_text())
    [job] = scraped["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert sorted(job["static_configs"][0]["targets"]) == ["replica-1:8000", "replica-2:8000"]


def test_no_secret_is_written_into_compose() -> None:
    secret = re.compile(r"PASSWORD|SECRET|TOKEN|KEY")
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret.search(key) or key == "MC_HOST_s3":
                assert str(value).startswith("http://${") or str(value).startswith("${"), (
                    f"{name}: {key} is written into compose.yaml, not taken from .env")
        for part in service.get("command") or []:
            assert not re.search(r"://[^:@/]+:[^$@][^@]*@", part), f"{name}: {part}"


def test_the_image_is_locked_slim_and_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION := (\S+)", makefile, re.M).group(1)
    assert f"ghcr.io/astral-sh/uv:{uv_version}" in dockerfile  # the uv the Makefile pins
    assert "uv sync --frozen --no-dev" in dockerfile
    final = final_stage(dockerfile)
    user = re.findall(r"^USER (\S+)", final, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert "/usr/local/bin/uv" not in final and "apt-get" not in final  # no build tools
    assert "--port\", \"8000\"" in final and "EXPOSE 8000" in final


def test_the_ct_secrets_are_listed_alike_in_the_readme_ct_yml_s_header_and_its_steps() -> None:
    """The README listed the CT secrets twice, and neither list nor ct.yml's header named
    DVC_REMOTE_ENDPOINT_URL, which the workflow reads."""
    def names(text: str) -> set[str]:
        return set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text))

    workflow = (REPO / ".github/workflows/ct.yml").read_text()
    read = set(re.findall(r"\$\{\{ secrets\.([A-Z0-9_]+) \}\}", workflow))
    header = workflow.split("\nname:")[0].split("Secrets of the")[1]
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    where = [p for p in pages if "- **`ct.yml` secrets**" in p.read_text()]
    assert len(where) == 1 and where[0].read_text().count("- **`ct.yml` secrets**") == 1
    listed = where[0].read_text().split("- **`ct.yml` secrets**")[1].split("\n- ")[0].split(
        "\n\n")[0]
    assert read == names(header) == names(listed), (read, names(header), names(listed))


def test_the_scoring_workflow_reads_ct_s_secrets_and_runs_the_job_as_people_do() -> None:
    """score.yml: the same secrets as ct.yml (a tracking server, an S3 store, the DVC
    remote), its inputs passed through the environment (never into the script), the job run
    as `python -m serving.batch` with the summary for the job page, the manifest uploaded."""
    def secrets(name: str) -> set[str]:
        text = (REPO / ".github/workflows" / name).read_text()
        return set(re.findall(r"\$\{\{ secrets\.([A-Z0-9_]+) \}\}", text))

    workflow = (REPO / ".github/workflows/score.yml").read_text()
    assert secrets("score.yml") == secrets("ct.yml")
    assert "schedule:" in workflow and "workflow_dispatch:" in workflow
    run_lines = [line for line in workflow.splitlines() if "serving.batch" in line]
    assert run_lines and "--summary-to \"$GITHUB_STEP_SUMMARY\"" in workflow
    assert "${{ inputs." not in "".join(run_lines)
    assert "manifest.json" in workflow.split("upload-artifact")[1]
