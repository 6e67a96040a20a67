"""Real data in, through the real DVC pipeline: a team's folder of dated files.

One project with `source.kind: files`, yearly batches (CSV, and one Parquet file with
integer ids), string class labels (`[repaid, default]`), the window's last batch as the test
split. In order:
- a batch landed in the folder shows in `dvc status`, `dvc repro` trains on it, the service
  answers with class names; a corrected batch is picked up, never a stale run-cache copy;
- each kind of bad batch is refused by `dvc repro` naming the file, the rule and the count,
  and the champion does not move;
- a drifted batch for 2017 lands and one CT cycle checks drift (string labels), slides the
  window by whole batches across the 2016 leap year and retrains.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlpipeline.config import load_params
from mlpipeline.loans import make_batch
from tests.conftest import Project, make_project

pytestmark = pytest.mark.slow

CLASSES = {0: "repaid", 1: "default"}


# Another tool's export: Parquet with integer ids and booleans as 1/0.
PARQUET_YEARS = {2014}


def yearly_batch(year: int, covariate: float = 0.0) -> pd.DataFrame:
    """1500 loan applications spread over one year, labelled repaid/default, with integer
    ids and a boolean `is_customer`: True/False as pandas writes it, 1/0 in 2014's file."""
    frame = make_batch(year, seed=11, start_date=dt.date(2026, 1, 5), batch_days=7, rows=1500,
                       covariate=covariate)
    frame["application_id"] = year * 100_000 + np.arange(1, len(frame) + 1)
    rng = np.random.default_rng(year)
    seconds = np.sort(rng.integers(0, 365 * 86_400, len(frame)))
    frame["application_date"] = pd.Timestamp(f"{year}-01-01") + pd.to_timedelta(seconds, "s")
    frame["default"] = frame["default"].map(CLASSES)
    customer = rng.random(len(frame)) < 0.4
    frame["is_customer"] = customer.astype(int) if year == 2014 else customer
    return frame


def land(project: Project, year: int, frame: pd.DataFrame | None = None) -> Path:
    frame = yearly_batch(year) if frame is None else frame
    if year in PARQUET_YEARS:
        path = project.root / "data" / "landing" / f"{year}-01-01.parquet"
        frame.to_parquet(path, index=False)
    else:
        path = project.root / "data" / "landing" / f"{year}-01-01.csv"
        frame.to_csv(path, index=False)
    return path


def registry_state(project: Project) -> tuple[str | None, int]:
    """(champion version, number of versions), straight from the embedded store."""
    with sqlite3.connect(project.root / "mlflow.db") as db:
        champion = db.execute("SELECT version FROM registered_model_aliases "
                              "WHERE alias = 'champion'").fetchone()
        versions = db.execute("SELECT COUNT(*) FROM model_versions").fetchone()[0]
    return (str(champion[0]) if champion else None), versions


def yearly_landing(params: dict[str, Any]) -> None:
    """params.yaml for a landing folder of yearly batches (`land`): string labels and a
    boolean feature; the landing and the engine tests use it."""
    params["source"].update(kind="files", path="data/landing")
    params["window"].update(start="2014-01-01", end="2016-01-01")
    params["prepare"]["test_batches"] = 1  # yearly batches: test on the last year
    params["validate"]["max_batch_days"] = 366  # the newest batch's rows: within its year
    params["schema"]["classes"] = ["repaid", "default"]
    params["schema"]["features"].append({"name": "is_customer", "type": "boolean"})
    params["ct"]["cooldown_batches"] = 1


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = make_project(tmp_path_factory.mktemp("landed") / "project")
    project.set_params(yearly_landing)
    for year in (2013, 2014, 2015):
        land(project, year)
    project.commit("a folder of yearly batches")
    project.dvc("repro")
    project.commit("v1")
    return project


def test_a_landed_batch_shows_in_dvc_status_and_is_trained_on(landed: Project) -> None:
    p = landed
    assert registry_state(p) == ("1", 1)
    lock = p.read("dvc.lock")
    assert "path: data/landing" in lock  # the landing folder's hash is recorded
    assert "Data and pipelines are up to date" in p.dvc("status").stdout

    land(p, 2016)
    status = p.dvc("status").stdout
    assert "generate" in status and "data/landing" in status
    out = p.dvc("repro").stdout
    assert "landed in data/landing/" in out
    report = json.loads(p.read("reports/validation.json"))
    assert [(b["file"], b["verdict"]) for b in report["batches"]] == [
        ("2013-01-01.csv", "not checked (before the window)"),
        ("2014-01-01.parquet", "accepted"), ("2015-01-01.csv", "accepted"),
        ("2016-01-01.csv", "accepted")]
    assert report["rows"] == 4500
    test = pd.read_parquet(p.root / "data/prepared/test.parquet")
    assert set(test["_batch"]) == {"2016-01-01.csv"}  # the landed batch is the newest
    assert set(test["default"]) == {"repaid", "default"}
    gate = json.loads(p.read("reports/gate.json"))
    assert gate["version"] == "2"
    assert registry_state(p)[1] == 2

    # The service answers with the class names.
    from fastapi.testclient import TestClient

    from serving.app import create_app

    # The boolean: 1/0 and True/False in the files, 1.0/0.0 to the model, `true` from
    # pandas' JSON to the service, a boolean in the log; 1 or "true" in a request is a 422.
    train = pd.read_parquet(p.root / "data/prepared/train.parquet")
    assert set(train["is_customer"]) == {0.0, 1.0}
    record = yearly_batch(2016).iloc[0][load_params(p.root).schema.feature_names]
    record["is_customer"] = True
    sent = json.loads(record.to_json())  # what pandas sends
    assert '"is_customer":true' in record.to_json() and sent["is_customer"] is True
    with TestClient(create_app(load_params(p.root), start_poller=False)) as client:
        answer = client.post("/predict", json=sent).json()
        for wrong in (1, "true"):
            refused = client.post("/predict", json={**sent, "is_customer": wrong})
            assert refused.status_code == 422
            assert refused.json()["detail"][0]["loc"] == ["body", "is_customer"]
        split = {"dataframe_split": {"columns": list(sent), "data": [list(sent.values())]}}
        assert client.post("/invocations", json=split).status_code == 200
    assert answer["predictions"][0]["label"] in {"repaid", "default"}
    from mlpipeline.prediction_log import read_log

    logged = read_log(p.root / "logs/predictions")
    assert logged["is_customer"].dtype == bool and logged["is_customer"].all()

    # A corrected batch is a change too; DVC's run cache cannot hand back the old copy.
    corrected = yearly_batch(2016)
    corrected.loc[0, "age"] = 77.0
    land(p, 2016, corrected)
    assert "data/landing" in p.dvc("status").stdout
    p.dvc("repro", "validate")
    raw = pd.read_csv(p.root / "data/raw/2016-01-01.csv")
    assert raw.loc[0, "age"] == 77.0
    land(p, 2016)  # back to the delivered version (its outputs come from the run cache)
    p.dvc("repro")
    p.commit("2016 landed")


def _corrupt(name: str) -> Callable[[Project], list[Path]]:
    """Each case lands bad files (returns what it wrote) for one `dvc repro` to refuse."""
    def case(p: Project) -> list[Path]:
        landing = p.root / "data" / "landing"
        new = landing / "2017-01-01.csv"
        if name == "zero_bytes":
            new.write_bytes(b"")
        elif name == "header_only":
            new.write_text(",".join(yearly_batch(2017).columns) + "\n")
        elif name == "not_utf8":
            new.write_bytes(yearly_batch(2017).to_csv(index=False).encode()
                            .replace(b"north", b"nord\xe9", 1))
        elif name == "corrupt_parquet":
            new = landing / "2017-01-01.parquet"
            yearly_batch(2017).to_parquet(new)
            new.write_bytes(new.read_bytes()[:2000])
        elif name == "two_files_one_day":
            new = landing / "2016-01-01.parquet"
            yearly_batch(2016).to_parquet(new)
        elif name == "same_rows_twice":
            pd.concat([yearly_batch(2017), yearly_batch(2016).head(50)]).to_csv(new, index=False)
        elif name == "missing_column":
            yearly_batch(2017).drop(columns=["credit_score"]).to_csv(new, index=False)
        elif name == "extra_column":
            yearly_batch(2017).assign(ssn="000-00-0000").to_csv(new, index=False)
        elif name == "unknown_category_in_one_batch":
            new = landing / "2015-01-01.csv"  # in the window: 2% here, 0.67% of the window
            bad = yearly_batch(2015)
            bad.loc[:29, "purpose"] = "crypto"
            bad.to_csv(new, index=False)
        return [new]
    return case


@contextlib.contextmanager
def bad_batch(p: Project, case: str) -> Iterator[list[Path]]:
    """The case's bad files landed for the block; the landing folder as it was after it."""
    originals = {f: f.read_bytes() for f in (p.root / "data" / "landing").glob("*.csv")}
    written = _corrupt(case)(p)
    try:
        yield written
    finally:
        for path in written:
            if path in originals:
                path.write_bytes(originals[path])
            else:
                path.unlink()


BAD_BATCHES = {
    "zero_bytes": ("2017-01-01.csv", "rule readable file: empty file (0 bytes)"),
    "header_only": ("2017-01-01.csv", "rule at least 100 rows: the batch has 0 rows"),
    "not_utf8": ("2017-01-01.csv", "rule readable file: not UTF-8 text: byte 0xe9 on line"),
    "corrupt_parquet": ("2017-01-01.parquet", "rule readable file: not a readable Parquet file"),
    "two_files_one_day": ("2016-01-01.parquet",
                          "rule one batch per day: 2016-01-01.csv is a batch of 2016-01-01 too "
                          "(1500 rows here)"),
    "same_rows_twice": ("2017-01-01.csv", "rule no rows repeated from earlier batches: 50 of "
                                          "1550 rows (3.23%) repeat rows of earlier batches: "
                                          "the same application_id with the same values"),
    "missing_column": ("2017-01-01.csv", "column 'credit_score', rule column present: missing "
                                         "from this batch (1500 rows)"),
    "extra_column": ("2017-01-01.csv", "column 'ssn', rule column in the schema: this batch "
                                       "(1500 rows)"),
    "unknown_category_in_one_batch": ("2015-01-01.csv",
                                      "column 'purpose', rule allowed categories: 30 of 1500 "
                                      "rows (2.00%) broke it, allowed 1.00%; e.g. 'crypto' at "
                                      "row 1 of 2015-01-01.csv"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_a_bad_batch_is_refused_naming_file_rule_and_count(landed: Project, case: str) -> None:
    p = landed
    before = registry_state(p)
    with bad_batch(p, case):
        result = p.dvc("repro", check=False)
        output = result.stdout + result.stderr
        file, rule = BAD_BATCHES[case]
        assert result.returncode != 0, output
        assert f"batch {file}: {rule}" in output, output
        assert "Fix or remove the batch in the landing folder data/landing/" in output
        assert "Traceback" not in output
        assert registry_state(p) == before  # no new version, the champion did not move
        report = json.loads(p.read("reports/validation.json"))
        assert report["passed"] is False
        assert {b["file"]: b["verdict"] for b in report["batches"]}[file] == "refused"


def test_one_ct_cycle_on_a_landed_batch_slides_by_batches_across_a_leap_year(
        landed: Project) -> None:
    p = landed
    land(p, 2017, yearly_batch(2017, covariate=1.0))  # a downturn: the inputs drift
    assert "data/landing" in p.dvc("status").stdout
    result = p.run(sys.executable, "-m", "monitoring.ct", check=False)
    summary = json.loads(p.read("reports/ct/summary.json"))
    assert summary["status"] == "ok", result.stdout + result.stderr
    assert summary["new_batch"] == {"date": "2017-01-01", "file": "2017-01-01.csv",
                                    "new": True, "since_champion": 1}
    assert load_params(p.root).source.n_batches == 8  # no clock for a folder of files
    assert summary["drift"]["detected"] is True
    # The champion re-scored on the batch's outcomes, labels compared by name.
    assert summary["performance"]["rows"] == 1500
    assert summary["decision"]["action"] == "retrain"
    # Three yearly batches before and after: 2016 has 366 days, so sliding by the days between
    # the two ends (the old way) would have started at 2015-01-02 and dropped 2015. The 2014
    # batch, Parquet with integer ids, is now older than the window: only its ids are read,
    # as text, beside the window's.
    assert summary["window_before"] == "2014-01-01..2016-01-01"
    assert summary["window_after"] == "2015-01-01..2017-01-01"
    gate = summary["gate"]
    assert gate["version"] == "3"
    assert gate["challenger_metrics"]["rows"] == 1500  # tested on the landed 2017 batch
    train = pd.read_parquet(p.root / "data/prepared/train.parquet")
    assert sorted(set(train["_batch"])) == ["2015-01-01.csv", "2016-01-01.csv"]
