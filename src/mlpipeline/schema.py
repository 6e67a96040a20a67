"""The data schema, declared once in params.yaml and used by every consumer.

The `validate` stage checks raw tables against it, training picks its feature lists from it,
the service builds its request model from it and monitoring takes its column list from it.
The checks here are plain functions on a DataFrame: no files, no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: Literal["numeric", "categorical"]
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    max_null_share: float = Field(0.0, ge=0, le=1)
    description: str = ""
    example: float | str | None = None  # a typical value, shown in the API's examples

    def example_value(self) -> float | str:
        if self.example is not None:
            return self.example
        if self.type == "categorical":
            return (self.categories or [""])[0]
        return self.min if self.min is not None else (self.max if self.max is not None else 0.0)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs `categories`")
        if self.type == "numeric" and self.categories:
            raise ValueError(f"numeric feature {self.name!r} cannot have `categories`")
        return self


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    classes: list[int] = [0, 1]  # allowed label values; the last one is the positive class
    time_column: str
    features: list[FeatureSpec]

    @property
    def positive_class(self) -> int:
        return self.classes[-1]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.type == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.type == "categorical"]

    def feature(self, name: str) -> FeatureSpec:
        return next(f for f in self.features if f.name == name)


@dataclass(frozen=True)
class Check:
    """One rule applied to one column: how many rows broke it, and whether that is too many."""

    column: str
    rule: str
    failed_rows: int
    total_rows: int
    threshold: float  # largest share of failing rows that still passes
    passed: bool
    example: str = ""
    detail: str = ""  # replaces the row-share sentence for table-level rules

    @property
    def message(self) -> str:
        if self.detail:
            return f"column {self.column!r}, rule {self.rule}: {self.detail}"
        share = self.failed_rows / self.total_rows if self.total_rows else 0.0
        text = (
            f"column {self.column!r}, rule {self.rule}: {self.failed_rows} of "
            f"{self.total_rows} rows ({share:.2%}) broke it, allowed {self.threshold:.2%}"
        )
        return f"{text}; e.g. {self.example}" if self.example else text


def _check(
    column: str, rule: str, bad: pd.Series, threshold: float, values: pd.Series
) -> Check:
    """Count the rows flagged in `bad`; quote the first offending value from `values`."""
    total = len(values)
    n_bad = int(bad.sum())
    example = ""
    if n_bad:
        row = int(bad.to_numpy().nonzero()[0][0])
        example = f"{values.iloc[row]!r} at row {row}"
    share = n_bad / total if total else 0.0
    return Check(column, rule, n_bad, total, threshold, share <= threshold, example)


def coerce(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Typed copy of the schema's columns: numbers as float, categories as str, time as datetime.

    Values that do not parse become missing; `check_frame` counts them as type errors.
    """
    out = pd.DataFrame(index=frame.index)
    out[schema.time_column] = pd.to_datetime(frame[schema.time_column], errors="coerce")
    for spec in schema.features:
        if spec.type == "numeric":
            out[spec.name] = pd.to_numeric(frame[spec.name], errors="coerce").astype("float64")
        else:
            col = frame[spec.name]
            out[spec.name] = col.where(col.isna(), col.astype(str)).astype(object)
    out[schema.target] = pd.to_numeric(frame[schema.target], errors="coerce")
    return out


def check_frame(
    frame: pd.DataFrame,
    schema: Schema,
    *,
    min_rows: int,
    max_unknown_category_share: float,
    max_out_of_range_share: float,
) -> list[Check]:
    """Every schema rule on a raw (string or typed) table; the verdict is in each `Check.passed`."""
    total = len(frame)
    enough = total >= min_rows
    checks = [Check("*", f"at least {min_rows} rows", 0 if enough else total, total, 0.0, enough,
                    detail=f"the table has {total} rows")]
    required = [schema.time_column, schema.target, *schema.feature_names]
    missing = [c for c in required if c not in frame.columns]
    checks += [Check(c, "column present", total, total, 0.0, False) for c in missing]
    if missing:
        return checks  # the per-value rules need every column

    typed = coerce(frame, schema)
    for name in [schema.time_column, schema.target, *schema.numeric]:
        # A value that was there but did not parse is a type error, not a null.
        unparsable = frame[name].notna() & typed[name].isna()
        kind = "timestamp" if name == schema.time_column else "numeric"
        checks.append(_check(name, f"type {kind}", unparsable, 0.0, frame[name]))

    for name in (schema.time_column, schema.target):
        checks.append(_check(name, "not null", frame[name].isna(), 0.0, frame[name]))
    bad_label = typed[schema.target].notna() & ~typed[schema.target].isin(schema.classes)
    checks.append(
        _check(schema.target, f"label in {schema.classes}", bad_label, 0.0, frame[schema.target])
    )

    for spec in schema.features:
        value = typed[spec.name]
        raw = frame[spec.name]
        checks.append(_check(spec.name, "share of nulls", raw.isna(), spec.max_null_share, raw))
        if spec.type == "numeric":
            lo = spec.min if spec.min is not None else -float("inf")
            hi = spec.max if spec.max is not None else float("inf")
            out = value.notna() & ((value < lo) | (value > hi))
            rule = f"range [{spec.min}, {spec.max}]"
            checks.append(_check(spec.name, rule, out, max_out_of_range_share, raw))
        else:
            unknown = value.notna() & ~value.isin(spec.categories or [])
            rule = "allowed categories"
            checks.append(_check(spec.name, rule, unknown, max_unknown_category_share, raw))
    return checks
