"""Scoring: POST /predict (one record or a batch, by the served version's contract) and
POST /invocations (MLflow's scoring protocol). The hot path, top to bottom: read the body;
small bodies for an ONNX model are scored on the event loop, larger ones on a worker
thread; parse and check the records against the contract; score; turn scores into the
task's answers; hand them to the prediction log (and the shadow); count them; answer.
"""

import itertools
import json
import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from mlpipeline.tasks import Answers, PredictMethodError
from serving import scoring
from serving.champion import LoadedModel
from serving.schemas import PredictResponse, RequestContract, logged_as_text
from serving.state import json_response, request_body, request_media_type


class RequestRoute(APIRoute):
    """A route whose endpoint takes the Request and returns a Response, called as it is:
    FastAPI's dependency solving and body handling, which these endpoints do not use, were
    a visible share of a prediction's profile. FastAPI's documented way to customise a
    route; the OpenAPI document is drawn from the declaration as before."""

    def get_route_handler(self) -> Any:
        return self.endpoint


router = APIRouter(route_class=RequestRoute)

# What /predict and /invocations both answer besides 200 (each adds its own 400 and 415).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"description": "the body did not arrive within serving.read_timeout_seconds"},
    413: {"description": "a body over serving.max_body_bytes"},
    422: {"description": "a record breaks the schema (`detail` names the record index and "
                         "the field: a number beyond a float or not finite, a value out of "
                         "range...), or the batch is empty or over serving.max_records"},
    503: {"description": "no champion model is loaded"},
}


class Scored(NamedTuple):
    """One request's answers, as logged."""

    model: str
    version: str
    answers: Answers
    request_id: str


def _validation_errors(found: Sequence[Any], limit: int) -> list[dict[str, Any]]:
    """Pydantic's errors on a body, with the record index and field spelled out for the
    caller (loc starts at "body", without the one-record-or-batch tag); the first `limit`."""
    errors = []
    for error in found[:limit]:
        loc = ["body", *(p for p in error["loc"] if p not in ("single", "batch"))]
        record = next((p for p in loc[1:] if isinstance(p, int)), None)
        field = next((p for p in reversed(loc) if isinstance(p, str) and p != "body"), None)
        message = error["msg"]
        if error.get("input", ...) is None and error["type"] != "missing" and field:
            message = f"null is not allowed for {field!r}: {message}"
        errors.append({"loc": loc, "record": record, "field": field, "msg": message,
                       "type": error["type"]})
    return listed(errors, len(found), limit)


def listed(errors: list[dict[str, Any]], total: int, limit: int) -> list[dict[str, Any]]:
    """At most `limit` of a body's `total` problems, and one more entry counting the rest: a
    body of 100,000 unknown keys would otherwise get an answer eight times its size."""
    if total <= limit:
        return errors
    return [*errors[:limit], {"loc": ["body"], "record": None, "field": None,
                              "type": "too_many_errors",
                              "msg": f"{total - limit} more problem(s) not listed: an answer "
                                     f"lists the first {limit} (serving.max_errors)"}]


def batch_problem(count: int, max_records: int) -> Response | None:
    # Too many records breaks the documented `maxItems`: a 422 like any schema
    # violation (413 is for bodies over serving.max_body_bytes).
    if count > max_records:
        message, kind = (f"{count} records in one request; the limit is "
                         f"{max_records} (serving.max_records)", "too_long")
    elif not count:
        message, kind = "the batch is empty", "too_short"
    else:
        return None
    return json_response({"detail": [{"loc": ["body"], "record": None, "field": None,
                                      "msg": message, "type": kind}]}, 422)


def no_model(state: State) -> Response:
    """503: a request read the champion (once: its contract and model serve it start to
    end, whatever a swap does meanwhile) and there was none."""
    return json_response({"detail": f"no model to serve: {state.champion.not_ready_reason}"},
                         503)


def scored_inline(state: State, body: bytes) -> bool:
    """A small body for an ONNX model is scored on the event loop: a few records cost
    less (~0.1 ms) than the hop to a worker thread and back."""
    model = state.champion.current
    return (len(body) <= state.params.serving.inline_body_bytes
            and model is not None and model.onnx_session is not None)


def record(state: State, model: LoadedModel, columns: dict[str, list[Any]],
           scores: np.ndarray) -> Scored:
    """Turn scores into the task's answers; log them and count them."""
    answers = model.task.answers(scores)
    request_id = next_request_id()
    state.prediction_log.append(columns, answers.log, model.version, request_id,
                                types=model.requests.log_types)
    state.shadow.submit(columns, request_id)  # when the registry has a shadow
    model.task.count(state.metrics, answers.predictions, model.version)
    return Scored(model.name, model.version, answers, request_id)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses={**BODY_ERRORS, 400: {"description": "the body is not UTF-8 text (JSON "
                                                 "nested past 200 levels: 422)"},
               415: {"description": "the body is not application/json"}},
    summary="Predict one record or a batch",
    description="One record (a JSON object) or a batch (an array of records), as the "
                "served version's contract describes them (see `Record`).",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictBody"}}}}},
)
async def predict(request: Request) -> Response:
    body = await request_body(request)
    state = request.app.state
    if scored_inline(state, body):
        return predict_body(state, body)
    return await run_in_threadpool(predict_body, state, body)


def predict_body(state: State, body: bytes) -> Response:
    settings = state.params.serving
    model = state.champion.current
    if model is None:
        return no_model(state)
    try:
        parsed = model.requests.body.validate_json(body)
    except ValidationError as error:
        return body_errors(error, body, model.requests, settings.max_errors)
    records: list[Any] = parsed if isinstance(parsed, list) else [parsed]
    problem = batch_problem(len(records), settings.max_records)
    if problem:
        return problem
    columns = model.requests.columns(records)
    scored = record(state, model, columns, model.scores(columns))
    return json_response({
                "model": {"name": scored.model, "version": scored.version},
                "request_id": scored.request_id,
                "predictions": scored.answers.records(),
            })


@router.post(
    "/invocations",
    summary="MLflow's scoring protocol (as `mlflow models serve`)",
    description="JSON with one of `dataframe_split`, `dataframe_records`, `instances`, "
                "`inputs` (and optional `params`, e.g. `{\"predict_method\": "
                "\"predict_proba\"}`), or `text/csv` with a header row. Answers "
                "`{\"predictions\": [...]}`; the model version and request id are in "
                "the `X-Model-Version` and `X-Request-Id` headers.",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ScoringPayload"}}}}},
    responses={**BODY_ERRORS,
               400: {"description": "not a scoring-protocol payload: not UTF-8, nested "
                                    "past about 1,000 levels, or a parameter other than "
                                    "predict_method"},
               415: {"description": "neither application/json nor text/csv"}},
)
async def invocations(request: Request) -> Response:
    body = await request_body(request)
    content_type = request_media_type(request) or "application/json"
    state = request.app.state
    if scored_inline(state, body):
        return invoke(state, body, content_type)
    return await run_in_threadpool(invoke, state, body, content_type)


def invoke(state: State, body: bytes, content_type: str) -> Response:
    settings = state.params.serving
    model = state.champion.current
    try:
        raw, extra = scoring.parse_payload(
            body, content_type, model.schema.logged_columns if model else ())
        method = scoring.predict_method(extra)
    except scoring.PayloadError as error:
        return json_response({"error_code": "BAD_REQUEST", "message": str(error)}, 400)
    count = len(raw) if isinstance(raw, list) else len(next(iter(raw.values()), []))
    problem = batch_problem(count, settings.max_records)
    if problem:
        return problem
    if model is None:
        return no_model(state)
    if isinstance(raw, dict):  # columns (dataframe_split): checked a column at a time
        detail = ([] if model.requests.columns_valid(raw)
                  else scoring.column_errors(raw, model.schema))
        detail = listed(detail, len(detail), settings.max_errors)
        columns = raw if detail else logged_as_text(raw, model.schema.logged_columns)
    else:
        try:
            columns = model.requests.columns(model.requests.records.validate_python(raw))
            detail = []
        except ValidationError as error:
            detail = _validation_errors(error.errors(), settings.max_errors)
    if detail:
        return json_response({"error_code": "BAD_REQUEST", "message": detail[0]["msg"],
                              "detail": detail}, 422)
    scores = model.scores(columns)
    if method == "predict_proba":  # one row per record, a column per class (model order)
        try:
            predictions: list[Any] = model.task.proba_rows(scores, model.model)
        except PredictMethodError as error:
            return json_response({"error_code": "BAD_REQUEST", "message": str(error)}, 400)
    scored = record(state, model, columns, scores)
    if method == "predict":
        predictions = scored.answers.predictions
    return Response(orjson.dumps({"predictions": predictions}), media_type="application/json",
                    headers={"X-Model-Version": scored.version,
                             "X-Request-Id": scored.request_id})


def body_errors(error: ValidationError, body: bytes, requests: RequestContract,
                max_errors: int) -> Response:
    """/predict's answer to a body its contract refuses: 400 if it is not UTF-8 text, else 422
    naming the record and field (or, for broken JSON, the character position)."""
    found = error.errors()
    if found and found[0]["type"] == "json_invalid" and "recursion limit" in found[0]["msg"]:
        # pydantic's parser stops at about 200 levels (a record needs 2); the standard
        # parser below would recurse until the interpreter's own limit: a 500.
        return json_response({"detail": [{"loc": ["body"], "record": None, "field": None,
                                          "type": "json_invalid",
                                          "msg": "the body nests JSON arrays and objects "
                                                 "too deeply: a record needs 2 levels, the "
                                                 f"parser stops at {PREDICT_MAX_DEPTH}"}]},
                             422)
    if found and found[0]["type"] == "json_invalid":
        try:
            parsed = json.loads(body)  # the standard parser names the position as a character
        except UnicodeDecodeError:
            return json_response({"detail": "the body could not be read as JSON: it must be UTF-8 "
                                            "text"}, 400)
        except json.JSONDecodeError as decode_error:
            position, reason = decode_error.pos, decode_error.msg
            return json_response({"detail": [{"loc": ["body"], "record": None, "field": None,
                                              "position": position, "type": "json_invalid",
                                              "msg": f"the body is not valid JSON: {reason} at "
                                                     f"character {position}"}]}, 422)
        except ValueError:  # the only other: an integer past Python's 4,300 digits
            return json_response({"detail": [{"loc": ["body"], "record": None, "field": None,
                                              "type": "json_invalid",
                                              "msg": scoring.TOO_LONG}]}, 422)
        # JSON the standard parser reads and pydantic's does not: a lone surrogate ("\ud800"),
        # which no UTF-8 writer (the log, Parquet) takes. Checked as parsed, the record model
        # names the field that carries it.
        try:
            requests.body.validate_python(parsed)
        except ValidationError as named:
            found = named.errors()
    return json_response({"detail": _validation_errors(found, max_errors)}, 422)


# pydantic's JSON parser (jiter) refuses deeper bodies: /predict's documented nesting limit.
PREDICT_MAX_DEPTH = 200


# Request ids: this process's random prefix and a counter, 32 hex digits like a UUID's but
# without a system call per request (uuid4 reads os.urandom each time).
_REQUEST_ID_PREFIX = secrets.token_hex(10)
_request_numbers = itertools.count()


def next_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):012x}"
