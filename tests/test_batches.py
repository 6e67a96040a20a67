"""Batch-by-batch validation as plain functions: `ingest` reads the files, `check_batches`
judges them. Each bad batch is refused naming the file, the rule and the count in that file;
good batches are never blamed. (The same cases through `dvc repro`: test_landing.py.)"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mlpipeline.config import Params, ValidateParams, WindowParams, load_params
from mlpipeline.ingest import ingest
from mlpipeline.schema import Schema
from mlpipeline.source import UnreadableBatch, read_batch, synthetic_batch
from mlpipeline.validate import Validation, check_batches, report
from tests.conftest import REPO

PARAMS = load_params(REPO)
DAYS = [(dt.date(2026, 1, 5) + dt.timedelta(days=7 * i)).isoformat() for i in range(5)]
BAD_DAY = DAYS[2]  # 2026-01-19


def batch(index: int) -> pd.DataFrame:
    return synthetic_batch(PARAMS.source, index)  # 1500 rows dated inside its week


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """Four good weekly batches (the window), as `generate` leaves them in data/raw."""
    folder = tmp_path / "data" / "raw"
    folder.mkdir(parents=True)
    for i in range(4):
        batch(i).to_csv(folder / f"{DAYS[i]}.csv", index=False)
    return folder


def params_for(raw: Path, **validate: object) -> Params:
    return PARAMS.model_copy(update={
        "root": raw.parents[1],
        "window": WindowParams(start=dt.date(2026, 1, 5), end=dt.date(2026, 1, 26)),
        "validate_": PARAMS.validate_.model_copy(update=validate)})


def judge(raw: Path, **validate: object) -> Validation:
    params = params_for(raw, **validate)
    table, batches = ingest(params)
    return check_batches(table, batches, params)


def failures(validation: Validation) -> list[str]:
    return [c.message for c in validation.failed]


def refused(validation: Validation) -> list[str]:
    return [b.file for b in validation.batches if b.verdict == "refused"]


def test_good_batches_pass_and_each_is_listed(raw: Path) -> None:
    validation = judge(raw)
    assert failures(validation) == []
    assert [(b.file, b.verdict, b.rows) for b in validation.batches] == [
        (f"{day}.csv", "accepted", 1500) for day in DAYS[:4]]
    assert int(validation.keep.sum()) == 6000
    listed = report(validation, 6000)["batches"]
    assert all(len(b["md5"]) == 32 for b in listed)


def test_zero_byte_file_is_refused_by_name(raw: Path) -> None:
    (raw / f"{BAD_DAY}.csv").write_bytes(b"")
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.csv"]
    assert f"batch {BAD_DAY}.csv: rule readable file: empty file (0 bytes)" in failures(
        validation)


def test_header_only_file_is_refused(raw: Path) -> None:
    header = ",".join(batch(0).columns) + "\n"
    (raw / f"{BAD_DAY}.csv").write_text(header)
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.csv"]
    assert f"batch {BAD_DAY}.csv: rule at least 100 rows: the batch has 0 rows" in failures(
        validation)


def test_non_utf8_byte_names_the_file_and_line(raw: Path) -> None:
    path = raw / f"{BAD_DAY}.csv"
    lines = path.read_bytes().split(b"\n")
    lines[41] += b"\xe9"  # a Latin-1 byte at the end of data row 41
    path.write_bytes(b"\n".join(lines))
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.csv"]
    [message] = failures(validation)[:1]
    assert message.startswith(f"batch {BAD_DAY}.csv: rule readable file: not UTF-8 text: "
                              "byte 0xe9 on line 42")


def test_corrupt_parquet_is_refused_by_name(raw: Path) -> None:
    (raw / f"{BAD_DAY}.csv").unlink()
    good = raw / f"{BAD_DAY}.parquet"
    batch(2).to_parquet(good)
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a cut-off upload
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.parquet"]
    assert any(m.startswith(f"batch {BAD_DAY}.parquet: rule readable file: not a readable "
                            "Parquet file") for m in failures(validation))
    with pytest.raises(UnreadableBatch, match="not a readable Parquet file"):
        read_batch(good)


def test_two_files_for_one_day_are_refused(raw: Path) -> None:
    batch(2).to_parquet(raw / f"{BAD_DAY}.parquet")  # the same day again, as Parquet
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.parquet"]
    messages = failures(validation)
    assert (f"batch {BAD_DAY}.parquet: rule one batch per day: {BAD_DAY}.csv is a batch of "
            f"{BAD_DAY} too (1500 rows here): keep one of them in the landing folder") in messages
    assert len(messages) == 1
    # Told to drop what repeats, the copy's 1500 rows go and the window keeps 6000.
    dropped = judge(raw, repeated_rows="drop")
    assert failures(dropped) == []
    assert [b.dropped_rows for b in dropped.batches if b.file == f"{BAD_DAY}.parquet"] == [1500]
    assert int(dropped.keep.sum()) == 6000


def test_rows_delivered_twice_are_refused_or_dropped_as_configured(raw: Path) -> None:
    again = pd.concat([batch(2).head(100), batch(3)], ignore_index=True)  # 100 old rows again
    again.to_csv(raw / f"{DAYS[3]}.csv", index=False)
    validation = judge(raw)
    assert refused(validation) == [f"{DAYS[3]}.csv"]
    messages = failures(validation)
    assert any(m.startswith(f"batch {DAYS[3]}.csv: rule no rows repeated from earlier batches: "
                            "100 of 1600 rows") for m in messages)
    # They are dated in the previous week, too: named with the row in the file.
    assert (f"batch {DAYS[3]}.csv: column 'application_date', rule dated in [{DAYS[3]}, "
            f"{DAYS[4]}) (the newest batch: validate.max_batch_days=7): 100 of 1600 rows"
            ) in "\n".join(messages)
    assert "at row 1 of 2026-01-26.csv" in "\n".join(messages)

    dropped = judge(raw, repeated_rows="drop", max_misdated_share=0.1)
    assert failures(dropped) == []
    assert [b.dropped_rows for b in dropped.batches] == [0, 0, 0, 100]
    assert int(dropped.keep.sum()) == 6000


def test_missing_column_is_counted_in_its_batch_only(raw: Path) -> None:
    batch(2).drop(columns=["credit_score"]).to_csv(raw / f"{BAD_DAY}.csv", index=False)
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.csv"]
    messages = failures(validation)
    assert messages == [f"batch {BAD_DAY}.csv: column 'credit_score', rule column present: "
                        "missing from this batch (1500 rows)"]


def test_extra_column_names_the_batch_that_has_it(raw: Path) -> None:
    batch(2).assign(ssn="000-00-0000").to_csv(raw / f"{BAD_DAY}.csv", index=False)
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.csv"]
    [message] = failures(validation)
    assert message.startswith(f"batch {BAD_DAY}.csv: column 'ssn', rule column in the schema: "
                              "this batch (1500 rows) has a column the schema does not know")
    # Listed in schema.ignore_columns, it is dropped instead.
    schema = Schema.model_validate({**PARAMS.schema.model_dump(), "ignore_columns": ["ssn"]})
    params = params_for(raw).model_copy(update={"schema_": schema})
    table, batches = ingest(params)
    assert "ssn" not in table.columns and check_batches(table, batches, params).failed == []


def test_ids_are_optional_but_one_id_names_one_application(raw: Path) -> None:
    """schema.id_column: kept (never a feature), may be missing, must not repeat, within a
    batch or across the window's batches."""
    table, _ = ingest(params_for(raw))
    assert table["application_id"].notna().all()
    bad = batch(2)
    bad.loc[:9, "application_id"] = None  # missing ids: joined on the features later
    bad.loc[20:22, "application_id"] = bad.loc[19, "application_id"]
    bad.to_csv(raw / f"{BAD_DAY}.csv", index=False)
    (batch(3).assign(application_id=batch(0)["application_id"])
     .to_csv(raw / f"{DAYS[3]}.csv", index=False))  # each id of batch 0 again
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.csv", f"{DAYS[3]}.csv"]
    assert failures(validation)[0] == (
        f"batch {BAD_DAY}.csv: column 'application_id', rule unique ids: 3 of 1500 rows (0.20%) "
        f"broke it, allowed 0.00%; e.g. '20260119-00020' at row 21 of {BAD_DAY}.csv")
    assert failures(validation)[1] == (  # an earlier batch's ids: re-delivered applications
        f"batch {DAYS[3]}.csv: column 'application_id', rule ids not used by earlier batches: "
        f"1500 of 1500 rows (100.00%) broke it, allowed 0.00%; e.g. '20260105-00001' at row 1 "
        f"of {DAYS[3]}.csv")
    assert failures(validation)[2].startswith(
        "column 'application_id', rule unique ids: 1503 of 6000 rows")  # the window
    batch(2).drop(columns="application_id").to_csv(raw / f"{BAD_DAY}.csv", index=False)
    batch(3).to_csv(raw / f"{DAYS[3]}.csv", index=False)
    assert failures(judge(raw)) == []  # a batch without the column is fine


def test_a_redelivered_batch_is_refused_by_its_ids_and_its_rows(raw: Path) -> None:
    """Batch 0 again, under new times, as the next batch: its ids and its rows (time aside)
    are an earlier batch's, even when that batch is older than the window; `drop` mode
    drops those rows and counts them."""
    again = batch(0).assign(application_date=batch(4)["application_date"])
    again.to_csv(raw / f"{DAYS[4]}.csv", index=False)
    params = params_for(raw).model_copy(update={"window": WindowParams(
        start=dt.date(2026, 1, 12), end=dt.date(2026, 1, 26))})  # batch 0 before the window
    table, batches = ingest(params)
    validation = check_batches(table, batches, params)
    assert refused(validation) == [f"{DAYS[4]}.csv"]
    messages = "\n".join(failures(validation))
    assert (f"batch {DAYS[4]}.csv: column 'application_id', rule ids not used by earlier "
            "batches: 1500 of 1500 rows") in messages
    # Rows of the window's batches repeated under new times, with their ids: the same rows.
    repeat = pd.concat([batch(4).head(1400),
                        batch(2).tail(100).assign(
                            application_date=batch(4)["application_date"].tail(100).to_numpy())],
                       ignore_index=True)
    repeat.to_csv(raw / f"{DAYS[4]}.csv", index=False)
    validation = judge(raw)
    assert failures(validation)[0] == (
        f"batch {DAYS[4]}.csv: rule no rows repeated from earlier batches: 100 of 1500 rows "
        "(6.67%) repeat rows of earlier batches: the same application_id with the same values "
        "(all but the time), allowed 0.00%: remove them from the batch; or set "
        "validate.repeated_rows: drop (drop removes them before training and testing, so every "
        "metric and the gate then judge only the rows left, not the batch as it came)")
    again.to_csv(raw / f"{DAYS[4]}.csv", index=False)
    table, batches = ingest(params)
    dropped = check_batches(table, batches, params.model_copy(update={
        "validate_": params.validate_.model_copy(update={"repeated_rows": "drop"})}))
    assert failures(dropped) == []
    assert [b.dropped_rows for b in dropped.batches] == [0, 0, 0, 0, 1500]


def test_distinct_ids_with_equal_values_are_not_repeated_rows(raw: Path) -> None:
    """Different people who gave the same coded answers (census data): with an id column,
    rows are the same only when the id is too. Without one, equal values are all there is to
    go on: the message says distinct entities count, and a share of them may be allowed."""
    alike = batch(2).tail(100).assign(
        application_id=[f"new-{i}" for i in range(100)],
        application_date=batch(4)["application_date"].tail(100).to_numpy())
    pd.concat([batch(4).head(1400), alike], ignore_index=True).to_csv(
        raw / f"{DAYS[4]}.csv", index=False)
    assert failures(judge(raw)) == []

    without_ids = PARAMS.schema.model_copy(update={"id_column": None})
    params = params_for(raw).model_copy(update={"schema_": without_ids})
    for file in raw.glob("*.csv"):
        pd.read_csv(file).drop(columns="application_id").to_csv(file, index=False)
    table, batches = ingest(params)
    [message] = failures(check_batches(table, batches, params))
    assert message.startswith(
        f"batch {DAYS[4]}.csv: rule no rows repeated from earlier batches: 100 of 1500 rows "
        "(6.67%) repeat rows of earlier batches (all but the time; with no id column, "
        "identical rows of distinct entities count too), allowed 0.00%: remove them from the "
        "batch, name the id column (schema.id_column), or allow their share "
        "(validate.max_repeated_share); or set validate.repeated_rows: drop (drop removes")
    allowed = params.model_copy(update={"validate_": params.validate_.model_copy(
        update={"max_repeated_share": 0.1})})
    validation = check_batches(table, batches, allowed)
    assert failures(validation) == []
    assert [b.dropped_rows for b in validation.batches] == [0] * 5  # kept, not dropped


def test_parquet_batches_are_read_as_text_whatever_their_physical_types(raw: Path) -> None:
    """Integer ids in Parquet (with a missing one: pandas would read 137911.0), a category
    coded as a number: read as a CSV batch reads them, so an older Parquet batch's ids meet
    a newer CSV batch's, and the window's table holds one type per column."""
    older = batch(0).assign(application_id=[100_000 + i for i in range(1500)])
    older["application_id"] = older["application_id"].astype("Int64")
    older.loc[3, "application_id"] = None
    (raw / f"{DAYS[0]}.csv").unlink()
    # As another tool writes it: no pandas metadata, so pandas would read a float64 column.
    pq.write_table(pa.Table.from_pandas(older, preserve_index=False).replace_schema_metadata(),
                   raw / f"{DAYS[0]}.parquet")
    text = read_batch(raw / f"{DAYS[0]}.parquet")
    assert text["application_id"].tolist()[:5] == ["100000", "100001", "100002", None, "100004"]
    assert text["age"].map(type).eq(str).all() and text["region"].iloc[0] == "east"
    reused = batch(4).assign(application_id=[str(100_000 + i) for i in range(1500)])
    reused.to_csv(raw / f"{DAYS[4]}.csv", index=False)
    params = params_for(raw).model_copy(update={"window": WindowParams(
        start=dt.date(2026, 1, 12), end=dt.date(2026, 1, 26))})  # the Parquet batch is older
    table, batches = ingest(params)
    table.to_parquet(raw.parent / "dataset.parquet")  # one type per column: text ids
    assert (f"batch {DAYS[4]}.csv: column 'application_id', rule ids not used by earlier "
            "batches: 1499 of 1500 rows") in "\n".join(failures(check_batches(table, batches,
                                                                             params)))


def test_unknown_categories_in_one_batch_cannot_hide_in_the_window(raw: Path) -> None:
    bad = batch(2)
    bad.loc[:44, "purpose"] = "crypto"  # 45 of 1500 = 3% here, 45 of 6000 = 0.75% overall
    bad.to_csv(raw / f"{BAD_DAY}.csv", index=False)
    validation = judge(raw)
    assert refused(validation) == [f"{BAD_DAY}.csv"]
    [message] = failures(validation)
    assert message == (f"batch {BAD_DAY}.csv: column 'purpose', rule allowed categories: 45 of "
                       f"1500 rows (3.00%) broke it, allowed 1.00%; e.g. 'crypto' at row 1 of "
                       f"{BAD_DAY}.csv")
    window = [c for c in validation.checks if not c.batch and c.column == "purpose"
              and c.rule == "allowed categories"]
    assert [(c.failed_rows, c.total_rows, c.passed) for c in window] == [(45, 6000, True)]


def test_batches_after_the_window_are_checked_older_ones_are_not(raw: Path) -> None:
    (raw / "2025-12-29.csv").write_bytes(b"")  # before the window: never read
    late = batch(4)
    late.loc[:2, "age"] = "old"
    late.to_csv(raw / f"{DAYS[4]}.csv", index=False)  # after the window: the drift check's next
    validation = judge(raw)
    verdicts = {b.file: b.verdict for b in validation.batches}
    assert verdicts["2025-12-29.csv"] == "not checked (before the window)"
    assert verdicts[f"{DAYS[4]}.csv"] == "refused"
    assert any("'old' at row 1 of 2026-02-02.csv" in m for m in failures(validation))
    assert int(validation.keep.sum()) == 6000  # the window's rows only


def test_timezone_aware_times_are_dated_like_naive_ones(raw: Path) -> None:
    for i in range(4):
        frame = batch(i)
        frame["application_date"] = frame["application_date"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        if i == 3:
            frame.loc[0, "application_date"] = "2026-01-01T10:00:00Z"  # a week early
        frame.to_csv(raw / f"{DAYS[i]}.csv", index=False)
    [message] = failures(judge(raw))
    assert message.startswith(f"batch {DAYS[3]}.csv: column 'application_date', rule dated in "
                              f"[{DAYS[3]}, {DAYS[4]}) (the newest batch: "
                              "validate.max_batch_days=7): 1 of 1500 rows")


def test_the_newest_batch_has_an_upper_date_limit_too(raw: Path) -> None:
    """It has no next batch to end it: rows dated two months after its name passed until the
    next batch landed. Its name plus validate.max_batch_days (null: source.batch_days)."""
    frame = batch(3)
    frame.loc[[4, 9], "application_date"] = pd.Timestamp(DAYS[3]) + pd.Timedelta(days=60)
    frame.to_csv(raw / f"{DAYS[3]}.csv", index=False)
    [message] = failures(judge(raw))
    assert message.startswith(f"batch {DAYS[3]}.csv: column 'application_date', rule dated in "
                              f"[{DAYS[3]}, {DAYS[4]}) (the newest batch: "
                              "validate.max_batch_days=7): 2 of 1500 rows")
    assert failures(judge(raw, max_batch_days=61)) == []
    # An earlier batch is bounded by the next one's name, as before.
    batch(4).to_csv(raw / f"{DAYS[4]}.csv", index=False)
    assert refused(judge(raw, max_batch_days=61)) == [f"{DAYS[3]}.csv"]


def test_string_labels_are_checked_by_name(raw: Path) -> None:
    for i in range(4):
        frame = batch(i)
        frame["default"] = frame["default"].map({0: "repaid", 1: "default"})
        if i == 2:
            frame.loc[7, "default"] = "defualt"
        frame.to_csv(raw / f"{DAYS[i]}.csv", index=False)
    schema = Schema.model_validate({**PARAMS.schema.model_dump(),
                                    "classes": ["repaid", "default"]})
    params = params_for(raw).model_copy(update={"schema_": schema})
    table, batches = ingest(params)
    messages = [c.message for c in check_batches(table, batches, params).failed]
    assert messages[0] == (f"batch {BAD_DAY}.csv: column 'default', rule label in ['repaid', "
                           "'default']: 1 of 1500 rows (0.07%) broke it, allowed 0.00%; e.g. "
                           f"'defualt' at row 8 of {BAD_DAY}.csv")


def test_yes_no_classes_must_be_quoted() -> None:
    with pytest.raises(ValueError, match="quote the class names"):
        Schema.model_validate({**PARAMS.schema.model_dump(), "classes": [False, True]})
    with pytest.raises(ValueError, match="exactly two labels"):
        Schema.model_validate({**PARAMS.schema.model_dump(), "classes": ["a", "b", "c"]})
    assert Schema.model_validate({**PARAMS.schema.model_dump(),
                                  "classes": ["no", "yes"]}).positive_class == "yes"


def test_validate_params_reject_unknown_duplicate_policy() -> None:
    with pytest.raises(ValueError):
        ValidateParams(repeated_rows="keep")


@pytest.mark.parametrize("section, key, value, message", [
    ("gate", "tolerance", -0.01, "gate.tolerance: Input should be greater than or equal to 0"),
    ("validate", "max_misdated_share", 1.5,
     "validate.max_misdated_share: Input should be less than or equal to 1"),
    ("validate", "max_unknown_category_share", -0.1,
     "validate.max_unknown_category_share: Input should be greater than or equal to 0"),
    ("monitoring", "drift_threshold", 0, "monitoring.drift_threshold: Input should be greater "
                                         "than 0"),
    ("validate", "max_batch_days", 0, "validate.max_batch_days: Input should be greater than 0"),
])
def test_tolerances_and_shares_are_checked_for_range_when_params_are_read(
        tmp_path: Path, section: str, key: str, value: float, message: str) -> None:
    """gate.tolerance: -0.01 was accepted, then rejected a challenger equal to the champion."""
    text = (REPO / "params.yaml").read_text()
    data = yaml.safe_load(text)
    data[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as stop:
        load_params(tmp_path)
    assert f"  - {message}" in str(stop.value)


def test_a_batch_is_checked_once_while_it_stays_the_same(raw: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Each week's run re-judges the window: a batch already accepted under the same schema,
    rules and code comes from the memo, with the same verdicts and typed rows."""
    from mlpipeline import validate

    params = params_for(raw)
    table, batches = ingest(params)
    memo = lambda p=params: validate.BatchMemo(tmp_path / "memo", p.schema,  # noqa: E731
                                               p.validate_)
    fresh = check_batches(table, batches, params, memo())
    assert len(list((tmp_path / "memo").glob("*.parquet"))) == 4

    coerced: list[int] = []
    real_coerce = validate.coerce
    monkeypatch.setattr(validate, "coerce", lambda rows, schema: (
        coerced.append(len(rows)), real_coerce(rows, schema))[1])
    again = check_batches(table, batches, params, memo())
    assert coerced == []  # no batch typed or checked again
    assert report(again, 6000) == report(fresh, 6000)
    assert again.typed is not None and fresh.typed is not None
    pd.testing.assert_frame_equal(again.typed, fresh.typed)

    # A new batch is checked; so is every batch when a rule changes.
    batch(4).to_csv(raw / f"{DAYS[4]}.csv", index=False)
    table, batches = ingest(params)
    check_batches(table, batches, params, memo())
    # The new one, and the one before it: its rows must now be dated before the new one's.
    assert coerced == [1500, 1500]
    stricter = params_for(raw, max_unknown_category_share=0.0)
    coerced.clear()
    check_batches(table, batches, stricter, memo(stricter))
    assert coerced == [1500] * 5


def regression_with_shipped_hyperparams(data: dict) -> None:
    data["schema"].update(task="regression", target="loss_amount", classes=None)
    data["gate"].update(min_metrics={}, compare_metric="rmse")


def fifty_trees(data: dict) -> None:
    data["train"]["hyperparams"]["random_forest"]["n_estimators"] = "fifty"


@pytest.mark.parametrize("change, lines", [
    (fifty_trees,
     ["train.hyperparams.random_forest.n_estimators: The 'n_estimators' parameter of "
      "RandomForestClassifier must be an int in the range [1, inf). Got 'fifty' instead."]),
    # The shipped defaults once a user sets schema.task: regression.
    (regression_with_shipped_hyperparams,
     ["train.hyperparams.random_forest.class_weight: not a parameter of RandomForestRegressor "
      "(task regression); valid: bootstrap, ccp_alpha, criterion, max_depth,",
      "train.hyperparams.linear.C: not a parameter of Ridge (task regression); valid: alpha,",
      "train.hyperparams.linear.class_weight: not a parameter of Ridge",
      "train.hyperparams.dummy.strategy: The 'strategy' parameter of DummyRegressor must be a "
      "str among",
      "tune.space.linear.C: not a parameter of Ridge (task regression); valid: alpha,"]),
])
def test_every_hyperparameter_is_checked_against_the_task_when_params_are_read(
        tmp_path: Path, change: Callable[[dict], None], lines: list[str]) -> None:
    """`n_estimators: fifty` ended in a 28-line traceback; class_weight on a regressor failed
    in train, after three stages had run."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    change(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SystemExit) as stop:
        load_params(tmp_path)
    shown = str(stop.value).splitlines()
    assert shown[0] == f"params.yaml is not valid ({len(lines)} problem(s)):"
    for line, expected in zip(shown[1:], lines, strict=True):
        assert line.startswith(f"  - {expected}"), line


def test_a_passed_hyperparameter_check_is_remembered_and_a_change_is_checked_again(
        tmp_path: Path) -> None:
    """scikit-learn's import cost each stage 0.6 s (+3.5 s on a cold dvc repro): a check that
    passed is remembered by what decides it, so the next stage skips it; any change is
    checked again."""
    from mlpipeline.config import HYPERPARAMS_CHECKED

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    load_params(tmp_path)
    [passed] = (tmp_path / HYPERPARAMS_CHECKED).iterdir()
    load_params(tmp_path)
    assert list((tmp_path / HYPERPARAMS_CHECKED).iterdir()) == [passed]
    fifty_trees(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SystemExit, match="n_estimators"):
        load_params(tmp_path)
    assert list((tmp_path / HYPERPARAMS_CHECKED).iterdir()) == [passed]
