"""The schema checks as plain functions on DataFrames: each rule catches what it should."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpipeline.config import load_params
from mlpipeline.loans import make_batch
from mlpipeline.schema import Schema, check_frame, coerce
from tests.conftest import REPO

PARAMS = load_params(REPO)
SCHEMA: Schema = PARAMS.schema
RULES = {"min_rows": 100, "max_unknown_category_share": 0.01, "max_out_of_range_share": 0.0}


@pytest.fixture
def raw() -> pd.DataFrame:
    """A clean batch as ingest hands it over: every value a string or missing."""
    frame = make_batch(0, seed=1, start_date=PARAMS.source.start_date, batch_days=7, rows=500)
    return frame.astype(str).where(frame.notna(), None)


def failures(frame: pd.DataFrame, **rules: float) -> list:
    return [c for c in check_frame(frame, SCHEMA, **{**RULES, **rules}) if not c.passed]


def test_clean_batch_passes_every_rule(raw: pd.DataFrame) -> None:
    checks = check_frame(raw, SCHEMA, **RULES)
    assert all(c.passed for c in checks), [c.message for c in checks if not c.passed]
    # Every feature gets its type, null and range-or-category rule.
    assert {c.column for c in checks} >= set(SCHEMA.feature_names)


def test_wrong_type_names_column_rule_and_count(raw: pd.DataFrame) -> None:
    raw.loc[[3, 10, 11], "annual_income"] = "lots"
    [bad] = failures(raw)
    assert (bad.column, bad.rule, bad.failed_rows) == ("annual_income", "type numeric", 3)
    assert "'annual_income'" in bad.message and "3 of 500 rows" in bad.message
    assert "'lots' at row 3" in bad.message


def test_out_of_range_values_fail(raw: pd.DataFrame) -> None:
    raw.loc[[0, 1], "credit_score"] = "990"
    [bad] = failures(raw)
    assert (bad.column, bad.failed_rows) == ("credit_score", 2)
    assert bad.rule == "range [300.0, 850.0]"


def test_out_of_range_tolerated_up_to_threshold(raw: pd.DataFrame) -> None:
    raw.loc[[0], "credit_score"] = "990"
    assert failures(raw, max_out_of_range_share=0.01) == []


def test_missing_column_fails_and_stops_value_rules(raw: pd.DataFrame) -> None:
    bad = failures(raw.drop(columns=["purpose"]))
    assert [(c.column, c.rule) for c in bad] == [("purpose", "column present")]


def test_unknown_category_over_threshold_fails(raw: pd.DataFrame) -> None:
    raw.loc[:19, "region"] = "atlantis"  # 20 of 500 rows = 4%
    [bad] = failures(raw)
    assert (bad.column, bad.rule, bad.failed_rows) == ("region", "allowed categories", 20)
    assert "'atlantis'" in bad.message


def test_unknown_category_under_threshold_passes(raw: pd.DataFrame) -> None:
    raw.loc[:2, "region"] = "atlantis"  # 3 of 500 rows = 0.6% <= 1%
    assert failures(raw) == []


def test_null_share_over_spec_fails(raw: pd.DataFrame) -> None:
    raw.loc[:99, "credit_score"] = None  # 20% > the 8% the schema allows
    [bad] = failures(raw)
    assert (bad.column, bad.rule) == ("credit_score", "share of nulls")
    raw2 = raw.copy()
    raw2.loc[:, "age"] = raw2["age"].where(raw2.index != 5, None)  # age allows no nulls
    assert ("age", "share of nulls") in {(c.column, c.rule) for c in failures(raw2)}


def test_label_values_and_nulls(raw: pd.DataFrame) -> None:
    raw.loc[7, "default"] = "2"
    raw.loc[8, "default"] = None
    rules = {(c.column, c.rule, c.failed_rows) for c in failures(raw)}
    assert rules == {("default", "label in [0, 1]", 1), ("default", "not null", 1)}


def test_too_few_rows(raw: pd.DataFrame) -> None:
    [bad] = failures(raw.head(50))
    assert bad.rule == "at least 100 rows" and "50 rows" in bad.message


def test_coerce_types(raw: pd.DataFrame) -> None:
    typed = coerce(raw, SCHEMA)
    assert typed["age"].dtype == np.float64
    assert pd.api.types.is_datetime64_any_dtype(typed["application_date"])
    assert set(typed["term"].dropna()) <= {"36 months", "60 months"}
    assert typed["credit_score"].isna().sum() == raw["credit_score"].isna().sum()


def test_schema_rejects_inconsistent_feature() -> None:
    with pytest.raises(ValueError, match="needs `categories`"):
        Schema.model_validate({"target": "y", "time_column": "t",
                               "features": [{"name": "c", "type": "categorical"}]})


def test_the_id_column_is_a_column_of_its_own() -> None:
    data = SCHEMA.model_dump()
    with pytest.raises(ValueError, match="id_column 'age' is also the target, the time, a "
                                         "feature or an ignored column"):
        Schema.model_validate({**data, "id_column": "age"})
    typed = coerce(pd.DataFrame({**{c: ["1"] for c in SCHEMA.columns},
                                 "application_id": [1042]}), SCHEMA)
    assert typed["application_id"].tolist() == ["1042"]  # ids are text, as the log keeps them


def test_a_boolean_feature_takes_what_files_hold_and_names_anything_else() -> None:
    """True/False in any case and 1/0 become 1.0/0.0 for the model; "maybe" is a type error
    naming the column, the count and the row; a range or categories on a boolean is refused."""
    schema = Schema.model_validate({"target": "y", "time_column": "t", "features": [
        {"name": "is_customer", "type": "boolean"}]})
    assert schema.numeric == ["is_customer"] and schema.boolean == ["is_customer"]
    values = ["True", "false", "TRUE", "1", "0", 1, 0, True, False, "maybe"]
    raw = pd.DataFrame({"t": ["2026-01-05"] * len(values), "y": [0, 1] * 5,
                        "is_customer": values})
    typed = coerce(raw, schema)
    assert typed["is_customer"].tolist()[:9] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    failed = [c for c in check_frame(raw, schema, min_rows=1, max_unknown_category_share=0,
                                     max_out_of_range_share=0) if not c.passed]
    assert [(c.column, c.rule, c.failed_rows) for c in failed] == [
        ("is_customer", "type boolean", 1)]
    assert "'maybe' at row 9" in failed[0].message  # the frame's index
    with pytest.raises(ValueError, match="boolean feature 'b' cannot have `categories`, `min`"):
        Schema.model_validate({"target": "y", "time_column": "t", "features": [
            {"name": "b", "type": "boolean", "max": 1}]})
