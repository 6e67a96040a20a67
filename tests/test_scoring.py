"""MLflow's scoring payloads and the column-at-a-time check, without a server: the column
check must refuse exactly what the record model of /predict refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from mlpipeline.config import load_params
from serving import scoring
from serving.schemas import record_model
from tests.conftest import REPO

SCHEMA = load_params(REPO).schema
RECORD = {"age": 41, "annual_income": 58000, "employment_years": None, "credit_score": 690,
          "loan_amount": 14000, "interest_rate": 12.5, "debt_to_income": 18.2,
          "open_accounts": 8, "delinquencies_2y": 0, "term": "36 months",
          "home_ownership": "RENT", "purpose": "car", "region": "north"}


def record_errors(records: list[dict[str, Any]]) -> set[tuple]:
    try:
        TypeAdapter(list[record_model(SCHEMA)]).validate_python(records)  # type: ignore[misc]
    except ValidationError as error:
        return {(e["loc"][0], e["loc"][1], e["type"]) for e in error.errors()}
    return set()


def column_errors(records: list[dict[str, Any]]) -> set[tuple]:
    columns = {name: [r[name] for r in records] for name in records[0]}
    return {(e["record"], e["field"], e["type"]) for e in scoring.column_errors(columns, SCHEMA)}


@pytest.mark.parametrize("field, value", [
    ("age", "41"), ("age", True), ("age", None), ("age", 130), ("age", -1), ("age", [41]),
    ("age", math.inf), ("age", math.nan), ("age", 10**400), ("age", -10**400),
    ("employment_years", 10**400), ("employment_years", math.nan),
    ("annual_income", -5), ("employment_years", "x"),
    ("employment_years", -1), ("region", "atlantis"), ("region", None), ("region", 3),
    ("region", ["north"]), ("term", "36"), ("home_ownership", {"a": 1}),
])
def test_column_check_refuses_what_the_record_model_refuses(field: str, value: Any) -> None:
    batch = [RECORD, {**RECORD, "age": 30.5}, {**RECORD, field: value}]
    expected = record_errors(batch)
    assert expected, f"the record model accepts {field}={value!r}"
    assert column_errors(batch) == expected


def test_column_check_accepts_what_the_record_model_accepts() -> None:
    batch = [RECORD, {**RECORD, "employment_years": 3.5, "age": 18}, {**RECORD, "age": 99.0}]
    assert record_errors(batch) == set() and column_errors(batch) == set()


def test_missing_and_unknown_columns_are_named_once() -> None:
    columns = {name: [RECORD[name]] * 3 for name in RECORD if name != "term"}
    columns["model_uri"] = ["models:/other/1"] * 3
    errors = {(e["record"], e["field"], e["type"])
              for e in scoring.column_errors(columns, SCHEMA)}
    assert errors == {(None, "term", "missing"), (None, "model_uri", "extra_forbidden")}


def test_payload_shapes_become_records_or_columns() -> None:
    split = {"columns": ["age", "region"], "data": [[41, "north"], [35, None]]}
    columns, params = scoring.parse_payload(json.dumps(
        {"dataframe_split": split, "params": {"predict_method": "predict_proba"}}).encode(),
        "application/json")
    assert columns == {"age": [41, 35], "region": ["north", None]}
    assert scoring.predict_method(params) == "predict_proba"
    nan, _ = scoring.parse_payload(b'{"inputs": {"age": [NaN, 1]}}', "application/json")
    assert nan == {"age": [None, 1]}  # pandas clients send a missing value as NaN
    records, _ = scoring.parse_payload(b"age,region\n41,north\n,south\n", "text/csv")
    assert records == [{"age": 41.0, "region": "north"}, {"age": None, "region": "south"}]
    # Integers past 64 bits stay exact (orjson alone read this id as the float 1e20).
    for big in (10**20 - 1, -(10**19), 10**128 - 1):
        exact, _ = scoring.parse_payload(json.dumps({"dataframe_split": {
            "columns": ["application_id"], "data": [[big]]}}).encode(), "application/json",
            exact=["application_id"])
        assert exact == {"application_id": [big]} and type(exact["application_id"][0]) is int
        records, _ = scoring.parse_payload(json.dumps({"instances": [
            {"age": 41}, {"application_id": big}]}).encode(), "application/json",
            exact=["application_id"])
        assert records[1]["application_id"] == big
    for body, problem in [(b"[1]", "JSON object"), (b"{}", "exactly one of"),
                          (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}',
                           "row 0"), (b"\x80", "UTF-8"), (b'{"inputs": 1', "not valid JSON")]:
        with pytest.raises(scoring.PayloadError, match=problem):
            scoring.parse_payload(body, "application/json")
    with pytest.raises(scoring.PayloadError, match="predict_log_proba"):
        scoring.predict_method({"predict_method": "predict_log_proba"})


# Any JSON-ish value a client could put in a field: numbers of every size (beyond a float
# too), NaN and infinities, booleans, text, nulls, lists and objects, and the field's own
# valid values.
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300),
    st.integers(max_value=-10**300), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def field_value(name: str) -> st.SearchStrategy[Any]:
    spec = SCHEMA.feature(name)
    valid = (st.sampled_from(spec.categories or []) if spec.type == "categorical" else
             st.floats(spec.min, spec.max) | st.integers(int(spec.min or 0), int(spec.max or 0)))
    return st.one_of(valid, valid, ANY_VALUE)


RECORDS = st.lists(st.fixed_dictionaries({name: field_value(name) for name in RECORD}),
                   min_size=1, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=RECORDS)
def test_the_column_path_and_the_record_path_give_the_same_verdicts(
        records: list[dict[str, Any]]) -> None:
    """Whatever the values, a batch sent as columns (dataframe_split, inputs as a dict) gets
    exactly the errors (record, field, type) the record model gives the same batch as
    records: the same 422 either way, never an exception. The service's compiled yes/no
    check (its fast path) says yes exactly when there is no error."""
    expected = record_errors(records)
    assert column_errors(records) == expected
    columns = {name: [r[name] for r in records] for name in records[0]}
    assert CHECK(columns) == (not expected)
    # A large batch is checked by passes over whole columns (scoring.MANY_RECORDS): the
    # same verdict for the same records, seventeen times over.
    assert CHECK({name: values * 17 for name, values in columns.items()}) == (not expected)


CHECK = scoring.column_checker(SCHEMA)


@pytest.mark.parametrize("field, value", [
    ("credit_score", math.nan), ("credit_score", math.inf), ("credit_score", -math.inf),
    ("credit_score", 10**400), ("credit_score", True), ("credit_score", "690"),
    ("age", None), ("credit_score", 851), ("credit_score", 299.5), ("employment_years", math.nan),
    ("term", "37 months"), ("term", None), ("term", 36), ("application_id", ""),
    ("application_id", "x" * 129), ("application_id", "é"), ("application_id", 10**100),
    ("application_id", 1.5), ("application_id", True)])
def test_one_bad_value_fails_a_large_batch_as_it_fails_one_record(field: str,
                                                                  value: Any) -> None:
    # Each value the record path refuses, once among 40 good records (the check by whole
    # columns, scoring.MANY_RECORDS), and alone.
    good = {**RECORD, "application_id": "a-1"}
    columns = {name: [v] * 40 for name, v in good.items()}
    assert CHECK(columns)
    columns[field][17] = value
    assert not CHECK(columns)
    assert not CHECK({name: [values[17]] for name, values in columns.items()})


IDS = st.one_of(st.none(), st.integers(), st.integers(min_value=10**127),
                st.text(max_size=130), st.floats(), st.booleans())


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(ids=st.lists(IDS, min_size=1, max_size=3))
def test_the_fast_check_never_passes_an_id_the_full_check_refuses(ids: list[Any]) -> None:
    columns = {name: [RECORD[name]] * len(ids) for name in RECORD}
    columns[SCHEMA.id_column] = ids
    if CHECK(columns):
        assert scoring.column_errors(columns, SCHEMA) == []
    many = {name: values * 17 for name, values in columns.items()}
    assert CHECK(many) == CHECK(columns)


def test_the_live_gauges_of_a_worker_that_died_are_forgotten(tmp_path) -> None:
    """Multiprocess /metrics: a worker killed without cleaning up (its pid gone) must not
    keep its live gauges in the aggregate; a live worker's stay."""
    import os
    import subprocess
    import sys

    from serving.metrics import forget_dead_workers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for pid in (gone, os.getpid()):
        for mode in ("livemin", "livemax"):
            (tmp_path / f"gauge_{mode}_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    forget_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{gone}.db", f"counter_{os.getpid()}.db",
         f"gauge_livemax_{os.getpid()}.db", f"gauge_livemin_{os.getpid()}.db"])
