"""The data schema, declared once in params.yaml and used by every consumer.

The `validate` stage checks raw tables against it, training picks its feature lists from it,
the service builds its request model from it and monitoring takes its column list from it.
The checks here are plain functions on a DataFrame: no files, no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Columns `ingest` adds to every row so a failing value can be traced to its file and row.
BATCH_COLUMN = "_batch"  # the batch file's name, e.g. 2026-01-19.csv
ROW_COLUMN = "_row"  # the row's number inside that file (1 = the first data row)
# The model's own prediction on each row of the monitoring reference it logs, which
# prediction drift compares the served predictions with.
PREDICTION_COLUMN = "_prediction"


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    # boolean: true/false in JSON; true/false (any case), 1/0 in batch files; the model
    # sees 1.0/0.0 (it is one of `Schema.numeric`), the log keeps a boolean
    type: Literal["numeric", "categorical", "boolean"]
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    max_null_share: float = Field(0.0, ge=0, le=1)
    description: str = ""
    example: bool | float | str | None = None  # a typical value, shown in the API's examples
    # The domain's rule for a number, checked by the gate on every challenger: moving it up
    # one `step` (null: its standard deviation on the test rows) must move the score this way.
    expect: Literal["increasing", "decreasing"] | None = None
    step: float | None = Field(None, gt=0)

    def example_value(self) -> bool | float | str:
        if self.example is not None:
            return self.example
        if self.type == "boolean":
            return True
        if self.type == "categorical":
            return (self.categories or [""])[0]
        return self.min if self.min is not None else (self.max if self.max is not None else 0.0)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs `categories`")
        if self.type == "numeric" and self.categories:
            raise ValueError(f"numeric feature {self.name!r} cannot have `categories`")
        if self.type != "numeric" and (self.expect or self.step):
            raise ValueError(f"{self.type} feature {self.name!r} cannot have `expect` or "
                             "`step`: a direction needs a number")
        if self.type == "boolean" and (self.categories or self.min is not None
                                       or self.max is not None):
            raise ValueError(f"boolean feature {self.name!r} cannot have `categories`, "
                             "`min` or `max`: its values are true and false")
        return self


TASKS = ("binary", "multiclass", "regression")


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # What the model predicts (mlpipeline.tasks owns everything that depends on it): a label
    # of two classes, of three or more, or a number.
    task: Literal["binary", "multiclass", "regression"] = "binary"
    target: str
    # The label values, as they appear in the data. binary: two, the positive class last
    # (e.g. [0, 1] or [repaid, default]; [0, 1] when left out); multiclass: three or more, in
    # the order the model's per-class outputs follow; regression: none.
    classes: list[int] | list[str] | None = None
    # regression: the range a target value must lie in, validated like a feature's.
    target_min: float | None = None
    target_max: float | None = None
    time_column: str
    features: list[FeatureSpec]
    # Columns the batches may carry that the model does not use (ids, free text): dropped
    # by `ingest`. Any other column not named here is refused as unexpected.
    ignore_columns: list[str] = []
    # A column naming each row (an application id the source knows): never a feature; a
    # request may carry it per record, the service logs it, and monitoring joins the
    # outcomes that arrive later with the logged predictions on it. Optional in batches
    # and requests; unique where present.
    id_column: str | None = None

    @field_validator("classes", mode="before")
    @classmethod
    def _plain_classes(cls, value: Any) -> Any:
        if isinstance(value, list) and any(isinstance(v, bool) for v in value):
            raise ValueError("YAML reads yes/no/true/false as booleans: quote the class "
                             "names, e.g. classes: ['no', 'yes']")
        return value

    @model_validator(mode="after")
    def _classes_fit_the_task(self) -> Schema:
        if self.task == "regression":
            if self.classes is not None:
                raise ValueError("a regression target has no classes: remove schema.classes")
            return self
        if self.target_min is not None or self.target_max is not None:
            raise ValueError(f"schema.target_min/target_max are for a numeric target "
                             f"(task: regression); a {self.task} target has `classes`")
        if self.classes is None and self.task == "binary":
            self.classes = [0, 1]
        distinct = len(set(map(str, self.classes or [])))
        if distinct != len(self.classes or []):
            raise ValueError(f"classes must be distinct, got {self.classes}")
        if self.task == "binary" and distinct != 2:
            raise ValueError(f"classes must name exactly two labels for task: binary, got "
                             f"{self.classes}; for three or more set schema.task: multiclass")
        if self.task == "multiclass" and distinct < 3:
            raise ValueError(f"task: multiclass needs schema.classes with three or more labels "
                             f"as the data has them, got {self.classes}"
                             + ("; for two use task: binary" if distinct == 2 else ""))
        return self

    @model_validator(mode="after")
    def _id_is_not_a_feature(self) -> Schema:
        named = {self.target, self.time_column, *self.feature_names, *self.ignore_columns}
        if self.id_column is not None and self.id_column in named:
            raise ValueError(f"id_column {self.id_column!r} is also the target, the time, a "
                             "feature or an ignored column: name a column of its own")
        return self

    @property
    def labels(self) -> list[int] | list[str]:
        """The classes of a classification target ([] for regression)."""
        return self.classes or []

    @property
    def positive_class(self) -> int | str:
        return self.labels[-1]

    @property
    def negative_class(self) -> int | str:
        return self.labels[0]

    @property
    def string_labels(self) -> bool:
        return bool(self.classes) and isinstance(self.labels[0], str)

    @property
    def numeric_target(self) -> FeatureSpec | None:
        """A numeric (regression) target as a feature spec, so it is checked like one: a
        number, in range, never null. None for a label."""
        if self.classes is not None:
            return None
        return FeatureSpec(name=self.target, type="numeric", min=self.target_min,
                           max=self.target_max)

    @property
    def columns(self) -> list[str]:
        """Every column a batch must have: time, target, features."""
        return [self.time_column, self.target, *self.feature_names]

    @property
    def optional_columns(self) -> list[str]:
        """Columns a batch may carry and the pipeline keeps: the id."""
        return [self.id_column] if self.id_column is not None else []

    @property
    def logged_columns(self) -> list[str]:
        """What a request may carry beside the features, logged as text and never scored:
        the id and the time column (a replayed batch row still has both)."""
        return [*self.optional_columns, self.time_column]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        """The model's numeric inputs: numbers, and booleans as 1.0/0.0."""
        return [f.name for f in self.features if f.type in ("numeric", "boolean")]

    @property
    def boolean(self) -> list[str]:
        return [f.name for f in self.features if f.type == "boolean"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.type == "categorical"]

    def feature(self, name: str) -> FeatureSpec:
        return next(f for f in self.features if f.name == name)


# The contract's file inside each logged model (beside MLmodel), as MLflow's extra_files put it.
CONTRACT_FILE = "contract.json"


class ModelContract(BaseModel):
    """What one model version takes and answers: its schema (the task; features with types,
    ranges, categories and nullability; the classes) and its decision threshold (binary).

    `evaluate` logs it with the model, so the contract travels with the version: the
    service builds its request models and its answers from the champion's own contract,
    not from the params.yaml beside the process."""

    model_config = ConfigDict(extra="forbid")

    schema_: Schema = Field(alias="schema")
    threshold: float = Field(0.5, ge=0, le=1)
    # regression: bucket bounds for the service's histogram of predicted values
    value_buckets: list[float] = []

    @property
    def schema(self) -> Schema:  # type: ignore[override]  # shadows pydantic v1's schema()
        return self.schema_

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


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
    batch: str = ""  # the batch file checked on its own; "" = the whole window

    @property
    def message(self) -> str:
        where = f"batch {self.batch}: " if self.batch else ""
        if self.column != "*":  # "*": a rule about the whole file or table
            where += f"column {self.column!r}, "
        if self.detail:
            return f"{where}rule {self.rule}: {self.detail}"
        share = self.failed_rows / self.total_rows if self.total_rows else 0.0
        text = (
            f"{where}rule {self.rule}: {self.failed_rows} of "
            f"{self.total_rows} rows ({share:.2%}) broke it, allowed {self.threshold:.2%}"
        )
        return f"{text}; e.g. {self.example}" if self.example else text


def row_location(frame: pd.DataFrame, position: int) -> str:
    """Where row `position` of a table came from: `row R of FILE` once `ingest` has tagged
    the rows, else its position in the table."""
    if BATCH_COLUMN in frame.columns and ROW_COLUMN in frame.columns:
        return f"row {frame[ROW_COLUMN].iloc[position]} of {frame[BATCH_COLUMN].iloc[position]}"
    return f"row {position}"


def rule_check(column: str, rule: str, bad: pd.Series, threshold: float, values: pd.Series,
               frame: pd.DataFrame, batch: str = "") -> Check:
    """Count the rows flagged in `bad`; quote the first offending value from `values`."""
    n_bad = int(bad.sum())
    example = ""
    if n_bad:
        row = int(bad.to_numpy().nonzero()[0][0])
        example = f"{values.iloc[row]!r} at {row_location(frame, row)}"
    return counted_check(column, rule, n_bad, len(values), threshold, example, batch)


def counted_check(column: str, rule: str, failed: int, total: int, threshold: float,
                  example: str = "", batch: str = "") -> Check:
    """A rule's verdict from its counts: passed while the failing share is within threshold."""
    share = failed / total if total else 0.0
    return Check(column, rule, failed, total, threshold, share <= threshold, example,
                 batch=batch)


def coerce(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Typed copy of the schema's columns: numbers as float, booleans as 1.0/0.0, categories
    as str, time as datetime.

    Values that do not parse become missing; `check_frame` counts them as type errors.
    """
    out = pd.DataFrame(index=frame.index)
    out[schema.time_column] = pd.to_datetime(frame[schema.time_column], errors="coerce")
    for spec in schema.features:
        if spec.type == "numeric":
            out[spec.name] = pd.to_numeric(frame[spec.name], errors="coerce").astype("float64")
        elif spec.type == "boolean":
            out[spec.name] = boolean_values(frame[spec.name])
        else:
            col = frame[spec.name]
            out[spec.name] = col.where(col.isna(), col.astype(str)).astype(object)
    out[schema.target] = coerce_target(frame[schema.target], schema)
    if schema.id_column is not None and schema.id_column in frame.columns:
        out[schema.id_column] = row_ids(frame[schema.id_column])
    return out


# What a batch file may hold for a boolean (any case): pandas writes True/False, other tools
# true/false or 1/0.
BOOLEAN_TEXT = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}


def boolean_values(values: pd.Series) -> pd.Series:
    """Booleans as the model sees them, 1.0/0.0; anything else is missing (a type error)."""
    text = values.where(values.isna(), values.astype(str).str.strip().str.lower())
    return text.map(BOOLEAN_TEXT).astype("float64")


def row_ids(values: pd.Series) -> pd.Series:
    """Ids as text (a feed may write 1042 or "1042"), missing where absent."""
    return values.where(values.isna(), values.astype(str).str.strip()).astype(object)


def coerce_target(values: pd.Series, schema: Schema) -> pd.Series:
    """Targets typed like the schema's: numbers for a numeric target or classes [0, 1], text
    for [repaid, default]. A value that does not parse (as a number) becomes missing."""
    if schema.string_labels:
        return values.where(values.isna(), values.astype(str).str.strip()).astype(object)
    number = pd.to_numeric(values, errors="coerce")
    return number.astype("float64") if schema.numeric_target else number


def training_target(values: pd.Series, schema: Schema) -> pd.Series:
    """Validated targets as the model learns them: ints for [0, 1], class names otherwise (so
    the model's `classes_`, and what the service answers, are the schema's own values),
    floats for a numeric target."""
    if schema.numeric_target:
        return values.astype("float64")
    return values.astype(str) if schema.string_labels else values.astype(int)


def check_frame(
    frame: pd.DataFrame,
    schema: Schema,
    *,
    min_rows: int,
    max_unknown_category_share: float,
    max_out_of_range_share: float,
    batch: str = "",
    typed: pd.DataFrame | None = None,
    duplicate_ids: pd.Series | None = None,
) -> list[Check]:
    """Every schema rule on a raw (string or typed) table; the verdict is in each `Check.passed`.

    `batch` names the file when the table is one batch, so every message says where to look.
    `typed` is `coerce(frame, schema)` when the caller has it already. `duplicate_ids`
    flags the rows whose id came before (the Spark engine checks a window batch by batch
    and finds ids repeated across batches on the cluster); by default, within `frame`.
    """
    total = len(frame)
    enough = total >= min_rows
    checks = [Check("*", f"at least {min_rows} rows", 0 if enough else total, total, 0.0, enough,
                    detail=f"{'the batch' if batch else 'the table'} has {total} rows",
                    batch=batch)]
    missing = [c for c in schema.columns if c not in frame.columns]
    checks += [Check(c, "column present", total, total, 0.0, False, batch=batch)
               for c in missing]
    if missing:
        return checks  # the per-value rules need every column

    def check(column: str, rule: str, bad: pd.Series, threshold: float) -> Check:
        return rule_check(column, rule, bad, threshold, frame[column], frame, batch)

    typed = coerce(frame, schema) if typed is None else typed
    kinds = {schema.time_column: "timestamp",
             **{f.name: f.type for f in schema.features if f.type != "categorical"}}
    if not schema.string_labels:  # numeric classes, or a numeric target
        kinds = {schema.time_column: "timestamp", schema.target: "numeric", **kinds}
    for name, kind in kinds.items():
        # A value that was there but did not parse is a type error, not a null.
        unparsable = frame[name].notna() & typed[name].isna()
        checks.append(check(name, f"type {kind}", unparsable, 0.0))

    for name in (schema.time_column, schema.target):
        checks.append(check(name, "not null", frame[name].isna(), 0.0))
    if schema.classes is not None:
        bad_label = typed[schema.target].notna() & ~typed[schema.target].isin(schema.classes)
        checks.append(check(schema.target, f"label in {schema.classes}", bad_label, 0.0))

    target = [schema.numeric_target] if schema.numeric_target else []
    for spec in [*schema.features, *target]:
        value = typed[spec.name]
        if spec.name != schema.target:  # the target allows no nulls (checked above)
            checks.append(check(spec.name, "share of nulls", frame[spec.name].isna(),
                                spec.max_null_share))
        if spec.type == "numeric":
            lo = spec.min if spec.min is not None else -float("inf")
            hi = spec.max if spec.max is not None else float("inf")
            out = value.notna() & ((value < lo) | (value > hi))
            rule = f"range [{spec.min}, {spec.max}]"
            checks.append(check(spec.name, rule, out, max_out_of_range_share))
        elif spec.type == "categorical":
            unknown = value.notna() & ~value.isin(spec.categories or [])
            checks.append(check(spec.name, "allowed categories", unknown,
                                max_unknown_category_share))
    if schema.id_column is not None and schema.id_column in frame.columns:
        # Outcomes are joined with predictions on the id: one id, one application.
        ids = row_ids(frame[schema.id_column])
        repeated = ids.duplicated() if duplicate_ids is None else duplicate_ids
        checks.append(check(schema.id_column, "unique ids", ids.notna() & repeated, 0.0))
    return checks
