"""MLflow's scoring protocol, as `mlflow models serve` speaks it, turned into plain records.

`POST /invocations` takes JSON with one of `dataframe_split` ({"columns", "data"}),
`dataframe_records` ([{...}]), `instances` or `inputs` (a list of records or a dict of
columns), and optional `params`; or `text/csv` with a header row. The records then go
through the same strict validation as `/predict`. MLflow's clients (its scoring-server
client, `mlflow.deployments`, `pyfunc.spark_udf`...) send these shapes.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import orjson
from pydantic_core import PydanticCustomError

from mlpipeline.schema import FeatureSpec, Schema
from serving.schemas import ID_MAX_LENGTH, ID_MESSAGE, valid_id

PAYLOAD_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
ALLOWED_KEYS = frozenset([*PAYLOAD_KEYS, "params"])
CONTENT_TYPES = ("application/json", "text/csv")
PREDICT_METHODS = ("predict", "predict_proba")
# A body nested past orjson's 1,024 levels (or past the standard parser's recursion limit,
# about 1,000, where a NaN sends it there) is refused; a scoring payload needs 4 levels.
TOO_DEEP = ("the body nests JSON arrays and objects too deeply: a scoring payload needs 4 "
            "levels, the parser stops at about 1,000")

TOO_LONG = "the body holds an integer of more than 4,300 digits: no field takes one"


class PayloadError(ValueError):
    """The body is not a scoring-protocol payload; the message says what is wrong."""


def parse_payload(body: bytes, content_type: str, exact: Sequence[str] = ()
                  ) -> tuple[Any, dict[str, Any]]:
    """The records (a list) or columns (a dict of lists), unvalidated, and the `params` of
    one /invocations body. `exact`: columns whose integers must stay as sent (the id and
    the time, logged as text)."""
    if content_type == "text/csv":
        return _csv_records(body), {}
    try:
        payload = orjson.loads(body)  # the fast path
    except orjson.JSONDecodeError as error:
        if str(error).startswith("depth limit exceeded"):
            raise PayloadError(TOO_DEEP) from None
        return _shaped(_json_with_nan(body))
    shaped = _shaped(payload)
    if exact and _rounded(shaped[0], exact):
        return _shaped(_json_with_nan(body))  # the standard parser keeps integers exact
    return shaped


# orjson reads an integer past 64 bits as the nearest float (99999999999999999999 as 1e20),
# which would change an id: a float this large in an exact column means the body is parsed
# again by the standard parser.
ROUNDED = 2.0**63


def _rounded(raw: Any, names: Sequence[str]) -> bool:
    if isinstance(raw, dict):
        if raw.keys().isdisjoint(names):  # the common case: no id or time column sent
            return False
        values: Iterable[Any] = itertools.chain.from_iterable(raw.get(name) or () for name in names)
    else:
        values = (record.get(name) for record in raw if isinstance(record, dict)
                  for name in names)
    return any(type(value) is float and abs(value) >= ROUNDED for value in values)


def _shaped(payload: Any) -> tuple[Any, dict[str, Any]]:
    """The records or columns of a parsed payload, and its `params`."""
    if not isinstance(payload, dict):
        raise PayloadError(f"the body must be a JSON object with one of {_keys()}")
    found = [key for key in PAYLOAD_KEYS if key in payload]
    unknown = sorted(payload.keys() - ALLOWED_KEYS)
    if len(found) != 1 or unknown:
        raise PayloadError(f"the body must have exactly one of {_keys()} (and optionally "
                           f"`params`); it has {sorted(payload) or 'no keys'}")
    params = payload.get("params", {})
    if not isinstance(params, dict):  # null too: the document says an object
        raise PayloadError("`params` must be a JSON object")
    key = found[0]
    data = payload[key]
    if key == "dataframe_split":
        return _split_columns(data), params
    if key in ("instances", "inputs") and isinstance(data, dict):
        return _columns(data, key), params
    if not isinstance(data, list):
        raise PayloadError(f"`{key}` must be a list of records")
    return data, params


def predict_method(params: dict[str, Any]) -> str:
    """`params.predict_method`: one of the two we serve; no other parameter is taken (the
    OpenAPI document says so)."""
    unknown = sorted(set(params) - {"predict_method"})
    if unknown:
        raise PayloadError(f"params {', '.join(map(repr, unknown))} not taken: the only "
                           "parameter is predict_method")
    method = params.get("predict_method", "predict")
    if method not in PREDICT_METHODS:
        raise PayloadError(f"params.predict_method {method!r} is not served: use one of "
                           f"{', '.join(PREDICT_METHODS)}")
    return str(method)


def payload_json_schema(record: dict[str, Any], max_records: int) -> dict[str, Any]:
    """The JSON payloads in the OpenAPI document, built from the record's own JSON schema.

    `text/csv` is accepted too, but is not described: a JSON schema cannot say which CSV
    texts are valid, and the document should promise nothing it cannot keep."""
    fields = record["properties"]
    params = {"type": "object", "additionalProperties": False,
              "properties": {"predict_method": {"enum": list(PREDICT_METHODS)}}}
    rows = {"type": "array", "minItems": 1, "maxItems": max_records}

    def shape(key: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "required": [key], "additionalProperties": False,
                "properties": {key: data, "params": params}}

    records = {**rows, "items": {"$ref": "#/components/schemas/Record"}}

    def split_of(names: list[str]) -> dict[str, Any]:
        return {"type": "object", "required": ["columns", "data"], "properties": {
            "columns": {"const": names},
            "data": {**rows, "items": {"type": "array",
                                       "prefixItems": [fields[name] for name in names],
                                       "minItems": len(names), "maxItems": len(names)}},
            "index": {"type": "array"}}}

    # The features, then any of the optional columns (the id, the time) in the record's order.
    required = [name for name in fields if name in record.get("required", [])]
    optional = [name for name in fields if name not in required]
    variants = [split_of([*required, *chosen]) for n in range(len(optional) + 1)
                for chosen in itertools.combinations(optional, n)]
    split = variants[0] if len(variants) == 1 else {"oneOf": variants}
    return {"oneOf": [shape("dataframe_split", split), shape("dataframe_records", records),
                      shape("instances", records), shape("inputs", records)]}


def _split_columns(data: Any) -> dict[str, list[Any]]:
    """pandas' `split` orientation, {"columns": [...], "data": [[...], ...]}, as columns."""
    if not isinstance(data, dict) or not isinstance(data.get("columns"), list) or (
            not isinstance(data.get("data"), list)):
        raise PayloadError('`dataframe_split` must be {"columns": [...], "data": [[...], ...]}')
    if not isinstance(data.get("index", []), list):  # pandas' row labels, unused here
        raise PayloadError("`dataframe_split` index must be a list (the row labels)")
    names, rows = data["columns"], data["data"]
    # Checked by C-level passes (set, map) over the names and rows: this is on every request.
    if not set(map(type, names)) <= {str} or len(set(names)) != len(names):
        raise PayloadError("`dataframe_split` columns must be distinct names")
    if not set(map(type, rows)) <= {list} or not set(map(len, rows)) <= {len(names)}:
        bad = next(i for i, row in enumerate(rows)
                   if not isinstance(row, list) or len(row) != len(names))
        raise PayloadError(f"`dataframe_split` row {bad} must be a list of {len(names)} "
                           "values, one per column")
    if not rows:
        return {name: [] for name in names}
    return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))


def _columns(data: dict[str, Any], key: str) -> dict[str, list[Any]]:
    """A dict of columns ({"age": [41, 35], ...}), as TensorFlow-serving-style clients send."""
    lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
    if len(lengths) > 1 or -1 in lengths:
        raise PayloadError(f"`{key}` as a dict must map each column to a list, all of one "
                           "length")
    return data


def column_errors(columns: dict[str, list[Any]], schema: Schema) -> list[dict[str, Any]]:
    """What breaks the schema in a batch given as columns, checked a column at a time.

    The same rules and error types as the record model of `/predict` (strict numbers,
    finite and in range, known categories, nulls only where the schema allows them, no
    unknown fields), with the record index and field of each error."""
    known = {*schema.feature_names, *schema.logged_columns}
    errors = [_error(None, name, "extra_forbidden", "Extra inputs are not permitted")
              for name in columns if name not in known]
    for name in schema.logged_columns:  # the id and the time: short text or an integer
        if name in columns:
            errors += _logged_value_errors(columns[name], name)
    for spec in schema.features:
        if spec.name not in columns:
            errors.append(_error(None, spec.name, "missing", "Field required"))
        elif spec.type == "numeric":
            errors += _numeric_errors(columns[spec.name], spec)
        elif spec.type == "boolean":
            errors += _boolean_errors(columns[spec.name], spec)
        else:
            errors += _category_errors(columns[spec.name], spec)
    return errors


LARGEST_FLOAT = 1.7976931348623157e308
SMALL_ID = 10**100  # integers below this are ids whatever their sign (the limit: 128 digits)


def column_checker(schema: Schema) -> Callable[[dict[str, list[Any]]], bool]:
    """A yes/no check of a batch given as columns, compiled once per contract: True only when
    `column_errors` would find nothing. The common case, a valid batch, costs one pass over
    the values; anything else (False) goes to `column_errors`, which names each problem."""
    known = frozenset([*schema.feature_names, *schema.logged_columns])
    features = frozenset(schema.feature_names)
    numeric = [(s.name, s.max_null_share > 0,
                -LARGEST_FLOAT if s.min is None else s.min,
                LARGEST_FLOAT if s.max is None else s.max)
               for s in schema.features if s.type == "numeric"]
    boolean = [(s.name, s.max_null_share > 0) for s in schema.features if s.type == "boolean"]
    categorical = [(s.name, frozenset([*(s.categories or []),
                                       *([None] if s.max_null_share > 0 else [])]))
                   for s in schema.features if s.type == "categorical"]
    logged = schema.logged_columns

    def valid(columns: dict[str, list[Any]]) -> bool:
        if not features <= columns.keys() or not known >= columns.keys():
            return False
        for name, nullable, low, high in numeric:
            for value in columns[name]:
                kind = type(value)
                # Bounds within the largest float: inf, NaN and integers no float holds fail.
                if not ((kind is float or kind is int) and low <= value <= high
                        and -LARGEST_FLOAT <= value <= LARGEST_FLOAT) and not (
                        value is None and nullable):
                    return False
        for name, nullable in boolean:
            for value in columns[name]:
                if type(value) is not bool and not (value is None and nullable):
                    return False
        try:
            for name, allowed in categorical:
                for value in columns[name]:
                    if (type(value) is not str and value is not None) or value not in allowed:
                        return False
        except TypeError:  # an unhashable value (a list): not a category
            return False
        for name in logged:  # the id and the time: short ASCII text, a small integer, null
            for value in columns.get(name, ()):
                kind = type(value)
                if not (value is None
                        or (kind is str and 0 < len(value) <= ID_MAX_LENGTH and value.isascii())
                        or (kind is int and -SMALL_ID < value < SMALL_ID)):
                    return False  # perhaps still valid: column_errors decides
        return True

    none = type(None)
    number_kinds, bool_kinds, text_kinds = {float, int}, {bool}, {str}

    def valid_many(columns: dict[str, list[Any]]) -> bool:
        """`valid` for a large batch: the same rules by C-level passes over each column
        (types as a set, bounds by min and max) instead of a loop over the values."""
        if not features <= columns.keys() or not known >= columns.keys():
            return False
        for name, nullable, low, high in numeric:
            values = columns[name]
            kinds = set(map(type, values))
            if nullable and none in kinds:
                kinds.discard(none)
                values = [v for v in values if v is not None]
            if not kinds <= number_kinds:
                return False
            try:  # inf and NaN fail (finite floats compare as numbers); so does 10**400
                if values and ((float in kinds and not all(map(math.isfinite, values)))
                               or min(values) < low or max(values) > high):
                    return False
            except OverflowError:
                return False
        for name, nullable in boolean:
            kinds = set(map(type, columns[name]))
            if not kinds <= (bool_kinds | {none} if nullable else bool_kinds):
                return False
        for name, allowed in categorical:
            values = columns[name]
            if not set(map(type, values)) <= {str, none} or not set(values) <= allowed:
                return False
        for name in logged:
            values = columns.get(name, [])
            kinds = set(map(type, values)) - {none}
            if not kinds <= {str, int}:
                return False
            texts = values if kinds == text_kinds and None not in values else [
                v for v in values if type(v) is str]
            numbers = [v for v in values if type(v) is int] if int in kinds else []
            if texts and (min(map(len, texts)) == 0 or max(map(len, texts)) > ID_MAX_LENGTH
                          or not all(map(str.isascii, texts))):
                return False
            if numbers and not (min(numbers) > -SMALL_ID and max(numbers) < SMALL_ID):
                return False
        return True

    def checked(columns: dict[str, list[Any]]) -> bool:
        rows = len(next(iter(columns.values()), ()))
        return valid(columns) if rows <= MANY_RECORDS else valid_many(columns)

    return checked


# From this many records a batch is checked by C-level passes over each column: their set-up
# costs more than a loop over a few values, and far less than one over thousands.
MANY_RECORDS = 16


def _numeric_errors(values: list[Any], spec: FeatureSpec) -> list[dict[str, Any]]:
    nullable = spec.max_null_share > 0
    allowed = {int, float, type(None)} if nullable else {int, float}
    # The common case, a valid column, in a few C-level passes (no array for one record);
    # only a column that breaks a rule is gone through value by value to name each record.
    if set(map(type, values)) <= allowed:  # not bool, str, list... (one C-level pass)
        given = [v for v in values if v is not None] if nullable else values
        try:
            if not given or (all(map(math.isfinite, given))
                             and (spec.min is None or min(given) >= spec.min)
                             and (spec.max is None or max(given) <= spec.max)):
                return []
        except OverflowError:  # an integer beyond any float (10**400): named below
            pass
    # Value by value, as the record model judges each record: a value of another type, or an
    # integer no float can hold, is not a number (float_type); a NaN that was sent (not a
    # null) is a number that is not finite; numbers are held to the range.
    errors, numbers, sent = [], [], []
    for i, v in enumerate(values):
        number = type(v) in (int, float) and (type(v) is float or _fits_a_float(v))
        if type(v) not in allowed or (type(v) is int and not number):
            errors.append(_error(i, spec.name, "float_type", _null_message(spec, v)
                                 + "Input should be a valid number"))
        numbers.append(float(v) if number else math.nan)
        sent.append(number)
    array, present = np.array(numbers, dtype=np.float64), np.array(sent)
    errors += [_error(int(i), spec.name, "finite_number", "Input should be a finite number")
               for i in np.flatnonzero(present & ~np.isfinite(array))]
    if spec.min is not None:
        errors += [_error(int(i), spec.name, "greater_than_equal",
                          f"Input should be greater than or equal to {spec.min:g}")
                   for i in np.flatnonzero(present & np.isfinite(array) & (array < spec.min))]
    if spec.max is not None:
        errors += [_error(int(i), spec.name, "less_than_equal",
                          f"Input should be less than or equal to {spec.max:g}")
                   for i in np.flatnonzero(present & np.isfinite(array) & (array > spec.max))]
    return sorted(errors, key=lambda e: e["record"])


def _boolean_errors(values: list[Any], spec: FeatureSpec) -> list[dict[str, Any]]:
    allowed = {bool, type(None)} if spec.max_null_share > 0 else {bool}
    if set(map(type, values)) <= allowed:
        return []
    return [_error(i, spec.name, "bool_type", _null_message(spec, v)
                   + "Input should be a valid boolean")
            for i, v in enumerate(values) if type(v) not in allowed]


def _fits_a_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _logged_value_errors(values: list[Any], name: str) -> list[dict[str, Any]]:
    errors = []
    for i, value in enumerate(values):
        try:
            valid_id(value)
        except PydanticCustomError:
            errors.append(_error(i, name, "id_type", ID_MESSAGE))
    return errors


def _category_errors(values: list[Any], spec: FeatureSpec) -> list[dict[str, Any]]:
    allowed: set[str | None] = set(spec.categories or [])
    if spec.max_null_share > 0:
        allowed.add(None)
    if set(map(type, values)) <= {str, type(None)} and set(values) <= allowed:
        return []
    expected = " or ".join(repr(c) for c in spec.categories or [])
    return [_error(i, spec.name, "literal_error", _null_message(spec, v)
                   + f"Input should be {expected}")
            for i, v in enumerate(values)
            if not (v is None or isinstance(v, str)) or v not in allowed]


def _null_message(spec: FeatureSpec, value: Any) -> str:
    return f"null is not allowed for {spec.name!r}: " if value is None else ""


def _error(record: int | None, field: str, kind: str, message: str) -> dict[str, Any]:
    loc: list[Any] = ["body", field] if record is None else ["body", record, field]
    return {"loc": loc, "record": record, "field": field, "msg": message, "type": kind}


def _csv_records(body: bytes) -> list[Any]:
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(body))
    except (ValueError, UnicodeDecodeError) as error:  # pandas' parser errors are ValueErrors
        raise PayloadError(f"the body is not CSV with a header row: {error}") from None
    # Through JSON: Python numbers (not numpy's), and an empty cell becomes null.
    return list(json.loads(frame.to_json(orient="records")))


def _json_with_nan(body: bytes) -> Any:
    """The standard parser, for what orjson refuses (NaN, which pandas-based clients, MLflow's
    own, send for a missing value and which is a null here; an integer beyond a float; or a
    real error, named for the caller) and for what it would round (ROUNDED)."""
    try:
        return json.loads(body, parse_constant=_nan_is_null)
    except RecursionError:  # past the interpreter's recursion limit (TOO_DEEP)
        raise PayloadError(TOO_DEEP) from None
    except json.JSONDecodeError as error:
        raise PayloadError(f"the body is not valid JSON: {error.msg} at character "
                           f"{error.pos}") from None
    except UnicodeDecodeError as error:
        raise PayloadError(f"the body is not UTF-8 text: {error.reason} at byte "
                           f"{error.start}") from None
    except ValueError:  # the only other: an integer past Python's 4,300 digits
        raise PayloadError(TOO_LONG) from None


def _nan_is_null(constant: str) -> float | None:
    return None if constant == "NaN" else float(constant)  # +-Infinity: refused as out of range


def _keys() -> str:
    return ", ".join(f"`{key}`" for key in PAYLOAD_KEYS)
