"""The whole loop, end to end, with every component real: DVC pipeline, MLflow registry, a
uvicorn process serving the champion, Evidently drift checks and CT cycles as a user runs them
(`python -m monitoring.ct`), against the synthetic source's drift scenario (drift from batch 9).

v1 trained on batches 0-7 is served. Batch 8 (no drift, sent to the service as traffic and
checked from the prediction log; data pushed to a DVC remote) changes nothing. Batch 9
(drifted) retrains, v2 passes the gate and the running service answers with v2. Batch 10 is
drifted too, but within the cooldown. Batch 11 retrains a worse model: the gate rejects it and
v2 stays. A forced cycle whose new champion v4 cannot be pushed to the DVC remote fails: v2
is champion again and params, dvc.lock and data are restored. A log span without traffic
gives no verdict.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlpipeline.config import load_params, set_values
from mlpipeline.prediction_log import QUARANTINE, read_log
from monitoring.demo import send, upcoming_traffic, wait_for_version
from monitoring.drift import describe, log_window, run_check
from serving.launch import free_port, start_service, wait_http_ok
from tests.conftest import ENV, INITIAL_TAG, Project, make_project
from tests.test_serving import RECORD

pytestmark = pytest.mark.slow


def ct(project: Project, *args: str, check: bool = True, env: dict[str, str] | None = None
       ) -> tuple[dict[str, Any], str]:
    result = project.run(sys.executable, "-m", "monitoring.ct", *args, check=check, env=env)
    summary = json.loads(project.read("reports/ct/summary.json"))
    return summary, result.stdout + result.stderr


def set_param(project: Project, dotted: str, value: Any) -> None:
    path = project.root / "params.yaml"
    path.write_text(set_values(path.read_text(), {dotted: value}))


def wait_until(condition: Any, failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def reload_checks(url: str) -> float:
    """How many times the service's poller has checked the champion alias."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return sum(s.value for f in families if f.name == "model_reload_checks"
               for s in f.samples if s.name.endswith("_total")
               and s.labels.get("trigger") == "poll")


def damage_the_log(log: Path, name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    day, *_ = sorted(log.glob("date=*"))
    part = sorted(day.glob("part-*.parquet"))[-1]
    table = pq.read_table(part)
    ages = table["age"].cast(pa.int64(), safe=False)
    pq.write_table(table.set_column(table.schema.get_field_index("age"), "age", ages), part)
    (day / f"part-empty-{name}.parquet").write_bytes(b"")
    (day / f"part-corrupt-{name}.parquet").write_bytes(b"PAR1 half a file")
    (log / f"date=garbage-{name}").mkdir()
    (day / f"zero-{name}.parquet").write_bytes(b"")  # not a part: named, left in place


def quarantined(log: Path) -> list[str]:
    return sorted(p.name for p in (log / QUARANTINE).rglob("*")
                  if p.is_file() or p.name.startswith("date=garbage"))


def served_version(url: str) -> str:
    return httpx.get(f"{url}/model").json()["version"]


def test_drift_retrains_and_the_service_picks_up_the_new_champion(tmp_path: Path) -> None:
    from mlpipeline.registry import Registry  # mlflow: not at collection time

    project = make_project(tmp_path / "project")
    set_param(project, "serving.log_flush_seconds", 0.5)
    project.commit("test settings")
    project.dvc("repro")
    project.commit("v1")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(project.root, port, 0.5, tmp_path / "service.log", env=ENV)
    try:
        wait_http_ok(f"{url}/ready", service, timeout=90)
        assert served_version(url) == "1"

        # Batch 8, no drift: the service's traffic is the current window.
        traffic = upcoming_traffic(load_params(project.root))  # batch 8's applications
        sent = len(traffic)
        assert send(url, traffic, 500) == {"1"}
        deadline = time.monotonic() + 30
        while len(read_log(project.root / "logs/predictions")) < sent:
            assert time.monotonic() < deadline, "the prediction log never caught up"
            time.sleep(0.2)
        # What a log meets: a part from before columns had the contract's type (ages as
        # int64 beside float64 parts), a 0-byte part (a writer killed on a shared volume), a
        # corrupt one, a partition that is not a date. The drift check reads every good row.
        log_dir = project.root / "logs/predictions"
        damage_the_log(log_dir, "first")
        assert log_window(load_params(project.root), None, None).size == sent
        assert quarantined(log_dir) == ["date=garbage-first", "part-corrupt-first.parquet",
                                        "part-empty-first.parquet"]
        damage_the_log(log_dir, "second")  # ... and the cycle's compaction sets them aside
        lock_before = project.read("dvc.lock")
        remote = tmp_path / "dvc-remote"  # as the CT workflow's DVC_REMOTE_URL secret
        summary, out = ct(project, "--current", "log", env={"DVC_REMOTE_URL": str(remote)})
        assert summary["status"] == "ok", out
        assert summary["window"]["kind"] == "log" and summary["window"]["rows"] == sent
        assert "3 unreadable file(s) or partition(s) moved to" in out
        assert len(quarantined(log_dir)) == 6
        unread = json.loads(project.read("reports/monitoring/drift.json"))["prediction_log"]
        assert unread["not_read_count"] == 2 and all(
            p.endswith(("/zero-first.parquet", "/zero-second.parquet")) for p in unread["not_read"])
        assert "2 file(s) or folder(s) in logs/predictions not read, left in place" in out
        days = list((project.root / "logs/predictions").glob("date=*"))  # the cycle compacted
        assert days and all([f.name for f in d.iterdir() if not f.name.startswith("zero-")]
                            == ["day-000001.parquet"] for d in days), [list(d.iterdir())
                                                                         for d in days]
        assert summary["drift"]["detected"] is False and summary["drift"]["share"] < 0.3
        assert summary["performance"] is None  # the log carries no outcomes
        assert summary["decision"]["action"] == "no-retrain"
        assert summary["champion_after"] == "1" and served_version(url) == "1"
        assert load_params(project.root).window.end.isoformat() == "2026-02-23"
        assert load_params(project.root).source.n_batches == 9  # the clock moved ...
        assert project.read("dvc.lock") != lock_before  # ... and DVC versioned the new batch
        assert (project.root / summary["report_html"]).stat().st_size > 10_000
        assert "no drift" in project.read("reports/ct/summary.md")
        assert len([f for f in remote.rglob("*") if f.is_file()]) > 10  # the data was pushed

        # Batch 9, drifted: its applications are served first, its outcomes come with the batch.
        batch9 = upcoming_traffic(load_params(project.root))
        assert send(url, batch9, 500) == {"1"}
        wait_until(lambda: len(read_log(project.root / "logs/predictions")) == sent + len(
            batch9), "the prediction log never caught up")
        outputs, step_summary = tmp_path / "github_output", tmp_path / "step_summary.md"
        head = project.git("rev-parse", "HEAD").stdout.strip()
        summary, out = ct(project, "--commit", "--outputs", str(outputs),  # as ct.yml runs it
                          "--summary-to", str(step_summary))
        assert summary["status"] == "ok", out
        assert summary["drift"]["detected"] is True, summary["drift"]
        # validate, then the whole pipeline: DVC's hints are said once, not per stage.
        assert out.count("Updating lock file") == 1 and out.count("Use `dvc push`") <= 1, out
        assert {"annual_income", "credit_score", "debt_to_income"} <= set(
            summary["drift"]["drifted"])
        assert "performance" in summary["decision"]["triggers"]  # v1's served answers, scored
        assert summary["performance"]["source"] == "served predictions joined with outcomes"
        assert summary["performance"]["rows"] == 1500
        assert summary["performance"]["joined"] == {  # the requests carried their ids
            "on_id": 1500, "on_features": 0, "outcomes_without_prediction": 0}
        assert summary["performance"]["metrics"]["roc_auc"] < 0.70
        assert summary["decision"]["action"] == "retrain"
        assert summary["gate"]["promoted"] is True
        assert (summary["champion_before"], summary["champion_after"]) == ("1", "2")
        assert summary["window_after"] == "2026-01-19..2026-03-09"
        wait_for_version(url, "2", timeout=30)
        response = httpx.post(f"{url}/predict", json=RECORD)
        assert response.json()["model"]["version"] == "2"
        assert service.poll() is None  # the same process, never restarted
        markdown = project.read("reports/ct/summary.md")
        assert "v1 -> v2" in markdown and "| debt_to_income |" in markdown
        assert step_summary.read_text() == markdown
        assert outputs.read_text() == (
        "status=ok\ndecision=retrain\npromoted=true\nchampion=2\nawaiting_approval=\n")
        committed = project.git("show", "--name-only", "--format=%s", "HEAD").stdout
        assert project.git("rev-parse", "HEAD~1").stdout.strip() == head
        assert committed.startswith("CT: champion v1 -> v2")
        assert {"params.yaml", "dvc.lock", "reports/gate.json"} <= set(committed.split())
        assert project.git("status", "--porcelain", "params.yaml", "dvc.lock").stdout == ""

        # `make drift` right after the promotion: batch 9's outcomes meet v1's 1,500 answers.
        # They are v1's: v2 (no answers yet) is re-scored, v1 is reported as itself.
        check = run_check(load_params(project.root), "batch")
        performance, v1 = check["performance"], check["performance"]["by_version"]["1"]
        assert (performance["version"], performance["rows"]) == ("2", 1500)
        assert performance["source"] == "champion v2 re-scored on outcomes"
        assert performance["by_version"]["2"]["served_rows"] == 0
        assert v1["rows"] == 1500 and v1["source"] == "served predictions joined with outcomes"
        assert v1["metrics"]["roc_auc"] < 0.70
        assert performance["metrics"]["roc_auc"] != v1["metrics"]["roc_auc"]
        assert f"v1 1500 rows served: roc_auc {v1['metrics']['roc_auc']:.4f}" in describe(check)

        # Batch 10: drift persists, but v2 trained on data up to batch 9: cooldown.
        summary, out = ct(project)
        assert summary["status"] == "ok", out
        assert summary["decision"]["action"] == "no-retrain"
        assert "drift" in summary["decision"]["triggers"]
        assert any(r.startswith("cooldown") for r in summary["decision"]["reasons"])
        assert summary["champion_after"] == "2"

        # Batch 11: drift triggers a retrain, but the new model is worse: the gate says no.
        set_param(project, "train.model", "dummy")
        summary, out = ct(project)
        assert summary["status"] == "ok", out
        assert summary["decision"]["action"] == "retrain"
        assert summary["gate"]["promoted"] is False
        assert "floor" in summary["gate"]["reason"]
        assert summary["champion_after"] == "2"
        polls = reload_checks(url)
        wait_until(lambda: reload_checks(url) >= polls + 3, "the service stopped polling")
        assert served_version(url) == "2"  # three polls later: nothing to pick up
        assert service.poll() is None
    finally:
        service.terminate()
        service.wait(timeout=30)

    # A cycle that fails after its new model was promoted (the DVC remote is a file, so the
    # last step, `push data`, fails) moves the champion back and restores params and data.
    set_param(project, "train.model", "random_forest")
    params_before, lock_before = project.read("params.yaml"), project.read("dvc.lock")
    batches_before = sorted(p.name for p in (project.root / "data/raw").iterdir())
    # Only the pending train.model change: every output matches dvc.lock.
    status_before = json.loads(project.dvc("status", "--json").stdout)
    changed = [{"changed deps": {"params.yaml": {"train": "modified"}}}]
    assert status_before == {"tune": changed, "train": changed}  # both read train.*
    not_a_folder = tmp_path / "remote-is-a-file"
    not_a_folder.write_text("a DVC remote cannot live here\n")
    summary, out = ct(project, "--force", check=False, env={"DVC_REMOTE_URL": str(not_a_folder)})
    assert summary["status"] == "failed" and summary["failed_step"] == "push data", out
    assert "FAILED at step 'push data'" in out
    assert summary["gate"]["promoted"] is True  # v4 was champion when the push failed ...
    assert summary["champion_before"] == summary["champion_after"] == "2"  # ... and is no more
    assert summary["restore_problems"] == []
    last = Registry(load_params(project.root)).history()[-1]
    assert (last.from_version, last.to_version, last.reason) == ("4", "2", "rollback")
    assert "push data" in last.note
    assert project.read("params.yaml") == params_before
    assert project.read("dvc.lock") == lock_before
    assert sorted(p.name for p in (project.root / "data/raw").iterdir()) == batches_before
    assert json.loads(project.dvc("status", "--json").stdout) == status_before

    # The prediction log over a span without traffic: no verdict on zero rows.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    check = run_check(load_params(project.root), "log", since=later)
    assert check["window"]["rows"] == 0 and check["drift"] is None
    assert check["decision"]["action"] == "no-retrain"
    assert "fewer than monitoring.min_rows" in check["decision"]["reasons"][0]


    # Evidently's workspace: a snapshot for every check of the five cycles, the check after
    # the promotion and the last one.
    from monitoring.history import read_history, tag_value, tag_values

    runs = sorted(read_history(load_params(project.root)),
                  key=lambda run: tag_value(run.tags, "check"))
    assert [(tag_value(r.tags, "window"), tag_value(r.tags, "batch"),
             tag_value(r.tags, "champion"), tag_value(r.tags, "decision"),
             tag_values(r.tags, "part")) for r in runs] == [
        ("log", None, "v1", "no-retrain", ["drift"]),
        ("batch", "2026-03-09", "v1", "retrain", ["drift", "performance"]),
        ("batch", "2026-03-09", "v2", "no-retrain", ["drift", "performance"]),
        ("batch", "2026-03-16", "v2", "no-retrain", ["drift", "performance"]),
        ("batch", "2026-03-23", "v2", "retrain", ["drift", "performance"]),
        ("batch", "2026-03-30", "v2", "retrain", ["drift", "performance"]),
        ("log", None, "v2", "no-retrain", ["rows"])]

    # Prometheus' textfiles: the five cycles counted, the last check's figures.
    from monitoring import prom

    cycles = prom.read_samples(project.root / "reports/ct" / prom.CT_FILE)
    assert cycles['model_ct_cycles_total{status="ok"}'] == 4
    assert cycles['model_ct_cycles_total{status="failed"}'] == 1
    assert cycles["model_ct_promotions_total"] == 1  # v2; v4 was rolled back
    assert cycles["model_ct_champion_version"] == 2
    checked = prom.read_samples(project.root / "reports/monitoring" / prom.DRIFT_FILE)
    assert checked['model_drift_window_rows{window="log"}'] == 0
    assert "model_drift_detected" not in checked  # no verdict on zero rows

    # The README's advice after the demo's cycles: see what they moved (dvc.lock is staged by
    # core.autostage, hence HEAD), then go back to the committed state. The committed state
    # is the project's own HEAD (the copy's first commit), whose lock this copy never wrote:
    # its outputs are in the cache only because the copy's first `dvc repro` wrote the same
    # bytes.
    moved = project.git("diff", "--name-only", INITIAL_TAG, "--", "params.yaml",
                        "dvc.lock").stdout
    assert set(moved.split()) == {"params.yaml", "dvc.lock"}
    project.git("checkout", INITIAL_TAG, "--", "params.yaml", "dvc.lock", "reports")
    checkout = project.dvc("checkout", check=False)
    assert checkout.returncode == 0, checkout.stdout + checkout.stderr
    assert project.git("diff", "--name-only", INITIAL_TAG, "--", "params.yaml", "dvc.lock",
                       "reports").stdout == ""
    assert json.loads(project.dvc("status", "--json").stdout) == {}
