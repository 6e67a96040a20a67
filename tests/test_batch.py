"""Batch scoring (`make score`, serving/batch.py): the same answers as the service and the
champion's pyfunc, rejects with the service's reasons, a manifest, an output folder that
appears whole or not at all, a job killed mid-way that leaves nothing, and the scored records
in the prediction log, where the next drift check sees them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlpipeline.config import load_params
from mlpipeline.loans import make_batch
from mlpipeline.prediction_log import read_log
from serving.batch import BatchError, read_chunks, write_whole
from tests.conftest import ENV, REPO, Project

SCHEMA = load_params(REPO).schema


def test_a_csv_is_read_as_the_service_reads_its_values(tmp_path: Path) -> None:
    # An empty cell is null; a number in a numeric column is a number even where another row
    # holds text (which stays text, for the check to refuse that row alone); categories and
    # ids stay text as written.
    (tmp_path / "in.csv").write_text(
        "application_id,age,credit_score,term,region\n"
        "007,41,690,36 months,north\n"
        "008,,abc,60 months,\n"
        "9,35.5,700,36 months,south\n")
    [chunk] = list(read_chunks(tmp_path / "in.csv", SCHEMA, 10))
    assert chunk["application_id"] == ["007", "008", "9"]
    assert chunk["age"] == [41.0, None, 35.5]
    assert chunk["credit_score"] == [690, "abc", 700]
    assert chunk["region"] == ["north", None, "south"]
    chunks = list(read_chunks(tmp_path / "in.csv", SCHEMA, 2))
    assert [len(c["age"]) for c in chunks] == [2, 1]


def test_the_output_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    output = tmp_path / "out"

    def fails(folder: Path) -> None:
        (folder / "half.parquet").write_text("half")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        write_whole(output, False, fails)
    assert sorted(os.listdir(tmp_path)) == []  # no OUTPUT, no partial folder
    write_whole(output, False, lambda folder: (folder / "a").write_text("first"))
    with pytest.raises(BatchError, match="exists: name another OUTPUT, or OVERWRITE=1"):
        write_whole(output, False, lambda folder: None)
    # What a killed job left (its process is gone) goes; OVERWRITE replaces the folder whole.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".out.partial-{dead.pid}").mkdir()
    write_whole(output, True, lambda folder: (folder / "b").write_text("second"))
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(output) == ["b"]


@pytest.fixture(scope="module")
def scoring_project(trained_project: Project, tmp_path_factory: pytest.TempPathFactory
                    ) -> Project:
    """A copy of the trained project: the jobs write to its prediction log and the drift
    checks to its reports, which the other readers of the shared project must not see."""
    root = tmp_path_factory.mktemp("scoring") / "project"
    shutil.copytree(trained_project.root, root, symlinks=True)
    return Project(root)


def two_thousand_records(project: Project, path: Path, bad_row: int) -> pd.DataFrame:
    """2,000 landed applications (target and time columns included, as a warehouse export
    has them), one of them with a credit score that is not a number."""
    raw = sorted((project.root / "data/raw").glob("*.csv"))
    frame = pd.concat([pd.read_csv(p, dtype={"application_id": str}) for p in raw[:2]],
                      ignore_index=True).head(2000)
    frame["credit_score"] = frame["credit_score"].astype(object)
    frame.loc[bad_row, "credit_score"] = "unknown"
    frame.to_csv(path, index=False)
    return frame


@pytest.mark.slow
def test_a_file_is_scored_as_the_service_and_the_pyfunc_answer(
        scoring_project: Project, tmp_path: Path) -> None:
    import mlflow
    from fastapi.testclient import TestClient

    from mlpipeline import tracking
    from serving.app import create_app

    source, output = tmp_path / "applications.csv", tmp_path / "scored"
    frame = two_thousand_records(scoring_project, source, bad_row=1234)
    score = [sys.executable, "-m", "serving.batch", "--input", str(source), "--output",
             str(output)]
    done = scoring_project.run(*score, "--summary-to", str(tmp_path / "summary.md"))
    assert "scored 1,999 of 2,000 rows from 1 file" in done.stdout
    assert (tmp_path / "summary.md").read_text().startswith("Scored 1,999 of 2,000 rows")
    assert "1 rejected" in done.stdout.strip().splitlines()[-1]

    predictions = pq.read_table(output / "predictions").to_pandas()
    valid = frame.drop(index=1234)
    params = load_params(scoring_project.root)
    assert predictions["application_id"].tolist() == valid["application_id"].tolist()
    assert set(predictions.columns) == {"application_id", "prediction", "probability",
                                        "model_version"}
    [reject] = pq.read_table(output / "rejects.parquet").to_pylist()
    assert (reject["file"], reject["row"]) == (str(source), 1234)
    assert reject["reason"] == "credit_score: Input should be a valid number"
    assert json.loads(reject["record"])["application_id"] == frame.loc[1234, "application_id"]
    manifest = json.loads((output / "manifest.json").read_text())
    with tracking.store(params):
        name = params.mlflow.registered_model
        champion = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
        version = str(champion.version)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert manifest["model"] == {"name": name, "version": version,
                                 "run_id": champion.run_id, "runtime": "onnxruntime"}
    assert manifest["inputs"] == [{"path": str(source), "rows": 2000, "md5": hashlib.md5(
        source.read_bytes(), usedforsecurity=False).hexdigest()}]
    assert manifest["rows"] == {"in": 2000, "scored": 1999, "rejected": 1}
    assert manifest["ignored_columns"] == ["default"] and manifest["engine"] == "embedded"
    assert (predictions["model_version"] == version).all()

    # The champion's own pyfunc: the same labels; its classifier's probabilities within 1e-6.
    features = valid[params.schema.feature_names].astype({"credit_score": float})
    assert predictions["prediction"].tolist() == pyfunc.predict(features).tolist()
    np.testing.assert_allclose(predictions["probability"],
                               pyfunc.get_raw_model().predict_proba(features)[:, 1], atol=1e-6)

    # The service's /invocations on the same rows (1,000 a request): the same answers.
    served_params = params.model_copy(update={"serving": params.serving.model_copy(
        update={"prediction_log_dir": str(tmp_path / "log")})})
    with TestClient(create_app(served_params, start_poller=False)) as client:
        answered = []
        for start in range(0, len(valid), 1000):
            rows = valid.iloc[start:start + 1000].drop(columns="default")
            reply = client.post("/invocations", content=rows.to_csv(index=False),
                                headers={"Content-Type": "text/csv"})
            assert reply.status_code == 200, reply.text
            answered += reply.json()["predictions"]
    assert predictions["prediction"].tolist() == answered

    # The same input and version: the same predictions, row for row.
    scoring_project.run(*score, "--overwrite", "--version", version)
    assert pq.read_table(output / "predictions").to_pandas().equals(predictions)
    refused = scoring_project.run(*score, check=False)
    assert refused.returncode == 1 and "exists: name another OUTPUT" in refused.stderr
    assert "Traceback" not in refused.stderr
    strict = scoring_project.run(*score, "--overwrite", "--strict", check=False)
    assert strict.returncode == 1 and "row 1234 is refused (credit_score" in strict.stderr
    missing = scoring_project.run(*score, "--overwrite", "--version", "99", check=False)
    assert missing.returncode == 1 and "has no version 99 in the registry" in missing.stderr
    assert pq.read_table(output / "predictions").to_pandas().equals(predictions)  # kept


@pytest.mark.slow
def test_a_folder_is_scored_and_a_killed_job_leaves_no_output(
        scoring_project: Project, tmp_path: Path) -> None:
    folder, output = tmp_path / "drop", tmp_path / "scored"
    folder.mkdir()
    frame = two_thousand_records(scoring_project, folder / "a.csv", bad_row=0)
    frame.drop(index=0).astype({"credit_score": float}).to_parquet(folder / "b.parquet")
    (folder / "notes.txt").write_text("not an input")
    scoring_project.run(sys.executable, "-m", "serving.batch", "--input", str(folder),
                        "--output", str(output))
    manifest = json.loads((output / "manifest.json").read_text())
    assert [Path(i["path"]).name for i in manifest["inputs"]] == ["a.csv", "b.parquet"]
    assert manifest["rows"] == {"in": 3999, "scored": 3998, "rejected": 1}
    parts = sorted((output / "predictions").iterdir())
    first, second = (pq.read_table(p).to_pandas() for p in parts)
    assert first.drop(columns="application_id").equals(second.drop(columns="application_id"))

    # Killed while it writes: no OUTPUT; the next run removes what it left and writes whole.
    big = tmp_path / "big.csv"
    pd.concat([frame.drop(index=0)] * 150, ignore_index=True).to_csv(big, index=False)
    killed = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, "-m", "serving.batch", "--input", str(big),
                            "--output", str(killed)], cwd=scoring_project.root, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size for p in tmp_path.glob(".killed.partial-*/predictions/*")):
        assert job.poll() is None and time.monotonic() < deadline, "nothing written yet"
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not killed.exists() and list(tmp_path.glob(".killed.partial-*"))
    scoring_project.run(sys.executable, "-m", "serving.batch", "--input", str(folder),
                        "--output", str(killed))
    assert killed.is_dir() and not list(tmp_path.glob(".killed.partial-*"))


@pytest.mark.slow
def test_a_drifted_file_scored_in_batch_is_found_drifted_by_the_next_check(
        scoring_project: Project, tmp_path: Path) -> None:
    """The job's records go to the prediction log (`source: batch`, the job's id as request
    id), and `make drift CURRENT=OUTPUT` checks them: a calm file is not drifted, a drifted
    one is."""
    params = load_params(scoring_project.root)
    log = scoring_project.root / params.serving.prediction_log_dir
    before = len(read_log(log))

    def checked(name: str, covariate: float) -> dict:
        frame = make_batch(60, seed=5, start_date=dt.date(2026, 6, 1), batch_days=7,
                           rows=1500, covariate=covariate, outcome=params.source.outcome)
        frame.drop(columns=params.schema.target).to_csv(tmp_path / f"{name}.csv", index=False)
        scoring_project.run(sys.executable, "-m", "serving.batch", "--input",
                            str(tmp_path / f"{name}.csv"), "--output", str(tmp_path / name))
        scoring_project.run(sys.executable, "-m", "monitoring.drift", "--current",
                            str(tmp_path / name))
        return json.loads(scoring_project.read("reports/monitoring/drift.json"))

    calm, drifted = checked("calm", 0.0), checked("drifted", 1.0)
    jobs = []
    for summary, name in ((calm, "calm"), (drifted, "drifted")):
        jobs.append(json.loads((tmp_path / name / "manifest.json").read_text())[
            "prediction_log"]["request_id"])
        assert summary["window"]["rows"] == 1500
        assert summary["window"]["description"] == f"batch job {jobs[-1]} ({tmp_path / name})"
    assert not calm["drift"]["detected"] and drifted["drift"]["detected"]
    logged = read_log(log)
    assert len(logged) == before + 3000
    mine = logged[logged["request_id"].isin(jobs)]
    assert len(mine) == 3000 and (mine["source"] == "batch").all()
    assert mine["application_id"].notna().all() and mine["probability"].between(0, 1).all()
    missing = scoring_project.run(sys.executable, "-m", "monitoring.drift", "--current",
                                  str(tmp_path), check=False)
    assert missing.returncode != 0 and "no manifest.json there" in missing.stderr


@pytest.mark.slow
def test_on_spark_the_job_writes_the_same_folder_with_the_same_answers(
        scoring_project: Project, tmp_path: Path) -> None:
    """engine.kind: spark (here local[2]): one task per input file, each scoring with the
    same version; the same predictions, rejects and counts as the embedded job, the manifest
    naming the engine, and the records in the prediction log under the job's id."""
    from mlpipeline.engine import start_session
    from serving import batch

    folder = tmp_path / "drop"
    folder.mkdir()
    frame = two_thousand_records(scoring_project, folder / "a.csv", bad_row=5)
    frame.drop(index=5).astype({"credit_score": float}).to_parquet(folder / "b.parquet")
    embedded = load_params(scoring_project.root)
    on_spark = embedded.model_copy(update={"engine": embedded.engine.model_copy(
        update={"kind": "spark", "master": "local[2]"})})
    session = start_session(on_spark, "tests")
    try:
        ran = {"embedded": batch.run(embedded, folder, tmp_path / "embedded"),
               "spark": batch.run(on_spark, folder, tmp_path / "spark", spark=session)}
    finally:
        session.stop()
    assert ran["spark"]["engine"] == "spark" and ran["embedded"]["engine"] == "embedded"
    for key in ("model", "inputs", "rows", "ignored_columns"):
        assert ran["spark"][key] == ran["embedded"][key], key
    assert ran["spark"]["rows"] == {"in": 3999, "scored": 3998, "rejected": 1}
    for name in ("predictions", "rejects.parquet"):
        tables = [pq.read_table(tmp_path / engine / name) for engine in ("embedded", "spark")]
        assert tables[0].equals(tables[1]), name
    reject = pq.read_table(tmp_path / "spark" / "rejects.parquet").to_pylist()
    assert [(Path(r["file"]).name, r["row"]) for r in reject] == [("a.csv", 5)]
    log = read_log(scoring_project.root / "logs/predictions")
    assert (log["request_id"] == ran["spark"]["job_id"]).sum() == 3998
