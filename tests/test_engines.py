"""The two engines give the same answers: ingest, validate and prepare in process and as Spark
jobs (`engine.kind: spark`, here on `local[2]`, one session for the module) on the same
landed data: the same reports/validation.json, the same splits and reference sample row for
row, the same test metrics for binary, multiclass and regression, and the same refusal with
the same message for every kind of bad batch of the landing tests. (`dvc repro` on a
standalone cluster, with the same reports as in process: tests/test_stack.py.)"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from mlpipeline import ingest, prediction_log, prepare, validate
from mlpipeline.config import TEST_SPLIT, SearchRange, TuneParams, load_params
from mlpipeline.engine import start_session
from mlpipeline.evaluate import evaluate, scored_test
from mlpipeline.lineage import file_md5
from mlpipeline.prediction_log import compact, sampled_log_table
from mlpipeline.register import gate_evidence
from mlpipeline.train import fit, training_rows
from mlpipeline.train import newest as newest_rows
from mlpipeline.tune import search
from tests.conftest import Project, make_project
from tests.test_landing import BAD_BATCHES, PARQUET_YEARS, bad_batch, land, yearly_landing
from tests.test_prediction_log import filled

pytestmark = pytest.mark.slow

SPLITS = ("train", "test", "reference")


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = make_project(tmp_path_factory.mktemp("session") / "project").root
    params = load_params(root).model_copy(update={"engine": load_params(root).engine.model_copy(
        update={"kind": "spark", "master": "local[2]",
                "conf": {"spark.sql.shuffle.partitions": 4}})})
    session = start_session(params, "tests")
    yield session
    session.stop()


def set_engine(project: Project, kind: str) -> None:
    def update(params: dict[str, Any]) -> None:
        params["engine"] = {"kind": kind, "master": "local[2]",
                            "conf": {"spark.sql.shuffle.partitions": 4}}
    project.set_params(update)


def data_stages(project: Project, kind: str, spark: Any) -> dict[str, Any]:
    """ingest, validate and prepare on one engine; what they wrote, or the refusal."""
    set_engine(project, kind)
    params = load_params(project.root)
    session = spark if kind == "spark" else None
    ingest.run(params, session)
    validation, _ = validate.run(params, session)
    found: dict[str, Any] = {
        "report": json.loads((project.root / "reports/validation.json").read_text()),
        "refusal": validate.refusal(validation, params)}
    if found["refusal"] is None:
        prepare.run(params, session)
        for name in SPLITS:
            found[name] = pd.read_parquet(project.root / f"data/prepared/{name}.parquet")
    return found


def assert_same(embedded: dict[str, Any], on_spark: dict[str, Any]) -> None:
    assert on_spark["report"] == embedded["report"]
    assert on_spark["refusal"] == embedded["refusal"]
    for name in SPLITS:
        if name in embedded:
            pd.testing.assert_frame_equal(on_spark[name], embedded[name])


@pytest.mark.parametrize("preset", [None, "multiclass", "regression"])
def test_both_engines_validate_split_and_score_alike(
        tmp_path: Path, spark: Any, preset: str | None) -> None:
    project = make_project(tmp_path / "project", preset)

    def small_forest(params: dict[str, Any]) -> None:
        params["train"]["hyperparams"]["random_forest"]["n_estimators"] = 10
        params["train"]["max_rows"] = 5000  # of 9,600: the newest, chosen on the cluster
    project.set_params(small_forest)
    project.run("python", "-m", "mlpipeline.source")
    embedded = data_stages(project, "embedded", spark)
    on_spark = data_stages(project, "spark", spark)
    assert on_spark["report"]["passed"] and len(on_spark["train"]) > 1000
    assert_same(embedded, on_spark)
    # Spark writes the same bytes again: CT's same-data guard compares the split's md5.
    train_split = project.root / "data/prepared/train.parquet"
    written = file_md5(train_split)
    prepare.run(load_params(project.root), spark)
    assert file_md5(train_split) == written
    # The same rows train the same model (on Spark, the newest train.max_rows rows are
    # chosen on the cluster and collected through Arrow): the test metrics agree to 1e-9.
    params = load_params(project.root)
    newest, available = training_rows(params, spark)
    assert (len(newest), available) == (5000, len(embedded["train"]))
    metrics = []
    for rows, known in ((embedded["train"], None), (newest, available)):
        model, info = fit(rows, params, known)
        assert (info["train_rows"], info["train_rows_available"]) == (5000, available)
        metrics.append(evaluate(model, embedded["test"], params)[0])
    assert_close(metrics[0], metrics[1])
    # The search (stage tune) fits on those rows too, on the driver: the same trials.
    learner = params.train.model  # the preset's: a small space for trees, else the shipped
    small = {"n_estimators": SearchRange(low=5, high=15)}
    space = small if learner in ("random_forest", "lightgbm") else params.tune.space[learner]
    searched = params.model_copy(update={"tune": TuneParams(trials=2, seed=1,
                                                            space={learner: space})})
    reports = [search(newest_rows(rows, searched, known), searched)
               for rows, known in ((embedded["train"], None), (newest, available))]
    assert reports[0] == reports[1] and reports[0]["completed"] == 2
    same_evaluation_and_gate(project, spark, model, fit(embedded["train"].tail(2000), params)[0])


def assert_close(expected: dict[str, float], found: dict[str, float]) -> None:
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, abs=1e-9), name


def same_evaluation_and_gate(project: Project, spark: Any, model: Any, champion: Any) -> None:
    """evaluate and the gate score the test split on the cluster (only labels, slice columns
    and scores come back) and agree with the same stages in process: metrics, per-row
    predictions, plot tables, the check rows (a seeded sample: check_rows below the split's
    size), the champion's metrics, the slices and the behaviour checks; the champion, said
    to have trained on the first half of the test split, compared on the other half."""
    answers = {}
    for kind in ("embedded", "spark"):
        set_engine(project, kind)
        params = load_params(project.root)
        schema = params.schema
        params = params.model_copy(update={
            "evaluate": params.evaluate.model_copy(update={"check_rows": 700}),
            "gate": params.gate.model_copy(update={
                "slices": [schema.categorical[0], schema.numeric[0]], "slice_min_rows": 50,
                "invariant_features": [schema.categorical[0]]})})
        session = spark if kind == "spark" else None
        evaluation = scored_test(params, model, session)
        times = pd.read_parquet(params.path(TEST_SPLIT), columns=[schema.time_column])
        seen = (times[schema.time_column].sort_values().iloc[len(times) // 2], "a test")
        answers[kind] = (evaluation, gate_evidence(params, model, champion, evaluation[0][0],
                                                   seen, session))
    ((metrics, predictions, plots), check), gate = answers["embedded"]
    ((spark_metrics, spark_predictions, spark_plots), spark_check), spark_gate = answers["spark"]
    assert_close(metrics, spark_metrics)
    pd.testing.assert_frame_equal(spark_predictions, predictions, check_dtype=False)
    assert plots.keys() == spark_plots.keys()
    for name, table in plots.items():
        pd.testing.assert_frame_equal(spark_plots[name], table, rtol=1e-9)
    assert len(check) == 700
    pd.testing.assert_frame_equal(spark_check, check, check_dtype=False)
    assert gate.champion_metrics is not None and not gate.champion_error
    assert gate.slices and gate.behaviour and gate.comparison is not None
    rows, of = gate.comparison.rows, gate.comparison.test_rows
    assert 0 < rows < of and gate.champion_metrics["rows"] == rows
    assert gate.comparison.challenger["rows"] == rows
    assert_close(gate.champion_metrics, spark_gate.champion_metrics)
    assert_close(gate.comparison.challenger, spark_gate.comparison.challenger)
    assert spark_gate.champion_error == gate.champion_error
    assert len(spark_gate.slices) == len(gate.slices)
    assert sum(s.rows for s in gate.slices if s.feature == gate.slices[0].feature) == rows
    for found, expected in zip(spark_gate.slices, gate.slices, strict=True):
        assert (found.name, found.rows, found.passed) == (expected.name, expected.rows,
                                                          expected.passed)
        assert (found.challenger, found.champion) == pytest.approx(
            (expected.challenger, expected.champion), abs=1e-9)
    assert [b.as_dict() for b in spark_gate.behaviour] == [b.as_dict() for b in gate.behaviour]


def test_the_drift_checks_log_sample_is_drawn_on_the_cluster_alike(
        tmp_path: Path, spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift check's window of the prediction log: on Spark each log file is counted and
    sampled by a task, and the rows that come back are the very monitoring.max_rows rows the
    reader in process draws (a span over part of three days, one part compacted, one with a
    column the others lack); a span under the limit comes back whole."""
    log = tmp_path / "log"
    ages = filled(log)
    compact(log, today=dt.date(2026, 12, 2))  # the first day as one day file, as in service
    types = {"age": pa.float64(), "has_cosigner": pa.string()}
    since = dt.datetime(2026, 11, 30, 12, 2, tzinfo=dt.UTC)
    def sample(limit: int, session: Any) -> Any:
        return sampled_log_table(log, since, None, ["age", "has_cosigner"], types, limit,
                                 spark=session)

    for limit in (37, 1000):
        embedded, rows = sample(limit, None)
        with monkeypatch.context() as patched:  # the reader in process is the fallback only
            patched.setattr(prediction_log, "read_log_table", None)
            on_spark, spark_rows = sample(limit, spark)
        assert rows == spark_rows == len(ages) - 40  # the first day's first two parts: out
        assert embedded.num_rows == min(limit, rows)
        assert on_spark.equals(embedded), (on_spark.to_pandas(), embedded.to_pandas())


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The landing tests' folder of yearly batches (string labels, a boolean feature)."""
    project = make_project(tmp_path_factory.mktemp("landed") / "project")
    project.set_params(yearly_landing)
    for year in (2013, 2014, 2015, 2016):
        land(project, year)
    return project


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_both_engines_refuse_a_bad_batch_with_the_same_message(
        landed: Project, spark: Any, case: str) -> None:
    p = landed
    with bad_batch(p, case):
        p.run("python", "-m", "mlpipeline.source")
        embedded = data_stages(p, "embedded", spark)
        on_spark = data_stages(p, "spark", spark)
        file, rule = BAD_BATCHES[case]
        assert f"batch {file}: {rule}" in (on_spark["refusal"] or ""), on_spark["refusal"]
        assert_same(embedded, on_spark)


def test_both_engines_drop_repeated_rows_and_reused_ids_alike(
        landed: Project, spark: Any, tmp_path: Path) -> None:
    """validate.repeated_rows: drop, with a window batch that repeats rows of an earlier one
    and an id of a batch older than the window: the same rows go on. Then an id twice in the
    window: the same refusal."""
    p = Project(tmp_path / "project")
    shutil.copytree(landed.root, p.root)
    landing = p.root / "data" / "landing"
    oldest, earlier, newer = (pd.read_parquet(landing / f"{year}-01-01.parquet")
                              if year in PARQUET_YEARS else
                              pd.read_csv(landing / f"{year}-01-01.csv")
                              for year in (2013, 2014, 2015))
    repeated = earlier.head(5).assign(application_date=newer["application_date"].iloc[:5])
    newer = pd.concat([newer, repeated], ignore_index=True)
    newer.loc[20, "application_id"] = oldest.loc[3, "application_id"]
    newer.to_csv(landing / "2015-01-01.csv", index=False)

    def drop(params: dict[str, Any]) -> None:
        params["validate"]["repeated_rows"] = "drop"
    p.set_params(drop)
    p.run("python", "-m", "mlpipeline.source")
    embedded = data_stages(p, "embedded", spark)
    on_spark = data_stages(p, "spark", spark)
    dropped = {b["file"]: b["dropped_rows"] for b in on_spark["report"]["batches"]}
    assert dropped["2015-01-01.csv"] == 6, on_spark["refusal"]  # 5 repeated rows, 1 old id
    assert_same(embedded, on_spark)

    newer.loc[30, "application_id"] = newer.loc[31, "application_id"]
    newer.to_csv(landing / "2015-01-01.csv", index=False)
    p.run("python", "-m", "mlpipeline.source")
    embedded = data_stages(p, "embedded", spark)
    on_spark = data_stages(p, "spark", spark)
    assert "column 'application_id', rule unique ids: 1 of " in (on_spark["refusal"] or "")
    assert_same(embedded, on_spark)

