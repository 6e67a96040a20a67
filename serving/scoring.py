"""MLflow's scoring protocol, as `mlflow models serve` speaks it, turned into plain records.

`POST /invocations` takes JSON with one of `dataframe_split` ({"columns", "data"}),
`dataframe_records` ([{...}]), `instances` or `inputs` (a list of records or a dict of
columns), and optional `params`; or `text/csv` with a header row. The records then go
through the same strict validation as `/predict`. MLflow's clients (its scoring-server
client, `mlflow.deployments`, `pyfunc.spark_udf`...) send these shapes.
"""

from __future__ import annotations

import io
import json
from typing import Any

PAYLOAD_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CONTENT_TYPES = ("application/json", "text/csv")
PREDICT_METHODS = ("predict", "predict_proba")


class PayloadError(ValueError):
    """The body is not a scoring-protocol payload; the message says what is wrong."""


def parse_payload(body: bytes, content_type: str) -> tuple[Any, dict[str, Any]]:
    """The records (a list, unvalidated) and the `params` of one /invocations body."""
    if content_type == "text/csv":
        return _csv_records(body), {}
    try:
        # pandas-based clients (MLflow's own) send a missing value as NaN: that is a null.
        payload = json.loads(body, parse_constant=_nan_is_null)
    except json.JSONDecodeError as error:
        raise PayloadError(f"the body is not valid JSON: {error.msg} at character "
                           f"{error.pos}") from None
    except UnicodeDecodeError as error:
        raise PayloadError(f"the body is not UTF-8 text: {error.reason} at byte "
                           f"{error.start}") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"the body must be a JSON object with one of {_keys()}")
    found = [key for key in PAYLOAD_KEYS if key in payload]
    unknown = sorted(set(payload) - set(PAYLOAD_KEYS) - {"params"})
    if len(found) != 1 or unknown:
        raise PayloadError(f"the body must have exactly one of {_keys()} (and optionally "
                           f"`params`); it has {sorted(payload) or 'no keys'}")
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise PayloadError("`params` must be a JSON object")
    key = found[0]
    data = payload[key]
    if key == "dataframe_split":
        return _split_records(data), params
    if key in ("instances", "inputs") and isinstance(data, dict):
        return _column_records(data, key), params
    if not isinstance(data, list):
        raise PayloadError(f"`{key}` must be a list of records")
    return data, params


def predict_method(params: dict[str, Any]) -> str:
    """MLflow's scikit-learn flavour takes `params.predict_method`; we serve two of them."""
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
    split = {"type": "object", "required": ["columns", "data"], "properties": {
        "columns": {"const": list(fields)},
        "data": {**rows, "items": {"type": "array", "prefixItems": list(fields.values()),
                                   "minItems": len(fields), "maxItems": len(fields)}},
        "index": {"type": "array"}}}
    return {"oneOf": [shape("dataframe_split", split), shape("dataframe_records", records),
                      shape("instances", records), shape("inputs", records)]}


def _split_records(data: Any) -> list[Any]:
    """pandas' `split` orientation: {"columns": [...], "data": [[...], ...]}."""
    if not isinstance(data, dict) or not isinstance(data.get("columns"), list) or (
            not isinstance(data.get("data"), list)):
        raise PayloadError('`dataframe_split` must be {"columns": [...], "data": [[...], ...]}')
    columns = data["columns"]
    records = []
    for index, row in enumerate(data["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise PayloadError(f"`dataframe_split` row {index} must be a list of "
                               f"{len(columns)} values, one per column")
        records.append(dict(zip(columns, row, strict=True)))
    return records


def _column_records(data: dict[str, Any], key: str) -> list[Any]:
    """A dict of columns ({"age": [41, 35], ...}), as TensorFlow-serving-style clients send."""
    lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise PayloadError(f"`{key}` as a dict must map each column to a list, all of one "
                           "length")
    columns = list(data)
    return [dict(zip(columns, values, strict=True))
            for values in zip(*data.values(), strict=True)]


def _csv_records(body: bytes) -> list[Any]:
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(body))
    except (ValueError, UnicodeDecodeError) as error:  # pandas' parser errors are ValueErrors
        raise PayloadError(f"the body is not CSV with a header row: {error}") from None
    # Through JSON: Python numbers (not numpy's), and an empty cell becomes null.
    return list(json.loads(frame.to_json(orient="records")))


def _nan_is_null(constant: str) -> float | None:
    return None if constant == "NaN" else float(constant)  # +-Infinity: refused as out of range


def _keys() -> str:
    return ", ".join(f"`{key}`" for key in PAYLOAD_KEYS)
