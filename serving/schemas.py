"""Request and response models, generated from the served model version's contract.

No feature list is written here: a version trained with another feature brings its own
contract, and the API takes the new field from the moment that version is served.
Validation is strict: a number must be a JSON number (not "42"), a boolean true or false
(not 1 or "true"), a category one of the schema's, a value inside the schema's range;
nullable only where the schema allows nulls; unknown fields are refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    TypeAdapter,
    WithJsonSchema,
    create_model,
)
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from mlpipeline.prediction_log import log_types
from mlpipeline.schema import FeatureSpec, ModelContract, Schema
from mlpipeline.tasks import Task, task_for


def _field(spec: FeatureSpec) -> tuple[Any, Any]:
    description = spec.description or (
        f"{spec.type}" + (f" in [{spec.min}, {spec.max}]" if spec.type == "numeric" else "")
        + ("; null allowed" if spec.max_null_share > 0 else ""))
    if spec.type == "numeric":
        kind: Any = Annotated[float, Field(ge=spec.min, le=spec.max, allow_inf_nan=False)]
    elif spec.type == "boolean":
        kind = bool  # strict: JSON true or false, not 1 or "true"
    else:
        kind = Literal[tuple(spec.categories or [])]
    if spec.max_null_share > 0:
        kind = kind | None  # required key, but the value may be null, as in training data
    return kind, Field(..., description=description, examples=[spec.example_value()])


# An id is logged, not scored: any short text, or an integer (logged as text); either way
# at most ID_MAX_LENGTH characters as the log keeps it.
ID_MAX_LENGTH = 128
ID_MESSAGE = (f"Input should be a text of 1 to {ID_MAX_LENGTH} characters (valid Unicode), "
              f"an integer of at most {ID_MAX_LENGTH} digits or null")


def logged_as_text(columns: dict[str, list[Any]], names: Sequence[str]
                   ) -> dict[str, list[Any]]:
    """Checked columns with the id and time columns (`names`) as the log keeps them: text.
    The same dict when it carries none of them (most requests)."""
    present = [name for name in names if name in columns]
    if not present:
        return columns
    return {**columns, **{name: [valid_id(value) for value in columns[name]]
                          for name in present}}


def valid_id(value: Any) -> str | None:
    """The id as the log keeps it (text); one error type for every wrong shape, where a
    pydantic union would answer one error per member."""
    if value is None:
        return None
    if type(value) is float and value.is_integer():  # JSON Schema's integer: 5.0 is 5
        value = int(value)
    if type(value) is int:
        # Python refuses to write an int past 4,300 digits (ValueError): fewer bits first.
        text = str(value) if value.bit_length() <= 4 * ID_MAX_LENGTH else ""
        if 1 <= len(text) <= ID_MAX_LENGTH:
            return text
    elif type(value) is str and 1 <= len(value) <= ID_MAX_LENGTH and storable_text(value):
        return value
    raise PydanticCustomError("id_type", ID_MESSAGE)


def storable_text(value: str) -> bool:
    """Text the log (Parquet, UTF-8) can store: JSON can carry a lone surrogate ("\\ud800")
    that no UTF-8 writer takes."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _logged_field(name: str, schema: Schema) -> tuple[Any, Any]:
    """The id or the time column: optional, any short text or an integer, logged as text."""
    kind = Annotated[Any, PlainValidator(valid_id), WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1, "maxLength": ID_MAX_LENGTH},
        # at most ID_MAX_LENGTH characters as text, the sign included
        {"type": "integer", "minimum": -(10 ** (ID_MAX_LENGTH - 1) - 1),
         "maximum": 10 ** ID_MAX_LENGTH - 1},
        {"type": "null"}]})]
    if name == schema.id_column:
        return kind, Field(None, description=f"optional: the record's {name}, logged with "
                           "the prediction so the outcome can be joined with it later; never "
                           "a feature", examples=["20260105-00001"])
    return kind, Field(None, description=f"optional: the record's {name} (the schema's time "
                       "column, as a batch row carries it), logged with the prediction; "
                       "never a feature", examples=["2026-01-05 08:12:00"])


def record_model(schema: Schema) -> type[BaseModel]:
    fields = {spec.name: _field(spec) for spec in schema.features}
    fields.update({name: _logged_field(name, schema) for name in schema.logged_columns})
    example = {spec.name: spec.example_value() for spec in schema.features}
    config = ConfigDict(strict=True, extra="forbid",
                        json_schema_extra={"examples": [cast(JsonDict, example)]})
    return create_model("Record", __config__=config, **fields)  # type: ignore[call-overload]


def request_body(record: type[BaseModel], max_records: int) -> Any:
    """One record (a JSON object) or a batch (a JSON array of 1 to `max_records` records).

    The discriminator looks at the JSON type, so a bad record gets the errors of its own
    shape only, not the union's. The batch size limits are documented in the OpenAPI
    document and checked by the endpoint (a 422 naming `serving.max_records`).
    """
    def shape(value: Any) -> str:
        return "batch" if isinstance(value, list) else "single"

    limits = Field(json_schema_extra={"minItems": 1, "maxItems": max_records})
    return Annotated[  # a type built at run time from the schema's record model
        Annotated[record, Tag("single")]
        | Annotated[list[record], Tag("batch"), limits],  # type: ignore[valid-type]
        Discriminator(shape),
    ]


@dataclass(frozen=True)
class RequestContract:
    """One model contract as the service applies it: the request models, the JSON schema
    the OpenAPI document shows, and the task that turns scores into answers."""

    contract: ModelContract
    record: type[BaseModel]
    body: TypeAdapter[Any]  # /predict: one record or a batch, validated from the JSON bytes
    records: TypeAdapter[Any]  # a list of records already parsed (MLflow's scoring payloads)

    task: Task
    log_types: dict[str, Any]  # the Arrow type of each feature, the id and the time, logged
    # columns -> True when they meet the contract (serving.scoring.column_checker)
    columns_valid: Callable[[dict[str, list[Any]]], bool]

    @property
    def schema(self) -> Schema:
        return self.contract.schema

    def columns(self, records: list[Any]) -> dict[str, list[Any]]:
        """Validated records as lists by feature name, the model's input, and the id and
        time columns (text, None where a record has none), which are only logged."""
        return {name: [r.__dict__[name] for r in records]  # id and time: text (valid_id)
                for name in (*self.schema.feature_names, *self.schema.logged_columns)}

    def record_json_schema(self) -> dict[str, Any]:
        return self.record.model_json_schema()


def request_contract(contract: ModelContract, max_records: int) -> RequestContract:
    """The request models for `contract`; versions that share a contract share them."""
    return _request_contract(contract.model_dump_json(by_alias=True), max_records)


@functools.lru_cache(maxsize=8)
def _request_contract(contract_json: str, max_records: int) -> RequestContract:
    contract = ModelContract.model_validate_json(contract_json)
    record = record_model(contract.schema)
    from serving.scoring import column_checker  # it imports this module

    return RequestContract(contract, record, TypeAdapter(request_body(record, max_records)),
                           TypeAdapter(list[record]),  # type: ignore[valid-type]
                           task_for(contract.schema, contract.threshold),
                           log_types(contract.schema), column_checker(contract.schema))


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    """/predict's answer. Each prediction's shape is the task's: `label` and `probability`
    (binary), `label` and `probabilities` (multiclass), `value` (regression); the OpenAPI
    document shows the served version's (`Prediction`)."""

    model: ModelRef
    request_id: str
    predictions: list[dict[str, Any]]
