"""The FastAPI application that serves the registry's champion.

Endpoints: POST /predict (one record or a batch), GET /health, /ready, /model, /metrics,
POST /admin/reload (bearer token), POST /admin/webhook (MLflow's signed registry webhook);
GET /docs and /redoc (drawn from local files: serving/docs.py);
and MLflow's scoring protocol: POST /invocations, GET /ping, /version.
Nothing lets a caller name a model URI or a file: the service serves
`models:/<registered_model>@champion` from params.yaml and nothing else. Requests are checked
against the served version's own contract (logged with it), and the OpenAPI document follows
the champion when it changes.
"""


import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import importlib.metadata
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Header, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from mlpipeline.config import ServiceConfig, load_service_config
from mlpipeline.tasks import Answers, PredictMethodError
from serving import scoring
from serving.champion import Champion, LoadedModel
from serving.docs import add_docs
from serving.metrics import MetricsAndLimits, ServiceMetrics
from serving.prediction_log import PredictionLog
from serving.schemas import PredictResponse, RequestContract, valid_id
from serving.shadow import ShadowScorer

log = logging.getLogger("serving")

# What /predict and /invocations both answer besides 200 (each adds its own 400 and 415).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"description": "the body did not arrive within serving.read_timeout_seconds"},
    413: {"description": "a body over serving.max_body_bytes"},
    422: {"description": "a record breaks the schema (`detail` names the record index and "
                         "the field: a number beyond a float or not finite, a value out of "
                         "range...), or the batch is empty or over serving.max_records"},
    503: {"description": "no champion model is loaded"},
}


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


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


def create_app(params: ServiceConfig | None = None, *, start_poller: bool = True,
               replica: str = "") -> FastAPI:
    params = params or load_service_config()
    settings = params.serving
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        champion = Champion(params)
        app.state.champion = champion
        app.state.prediction_log = PredictionLog(
            params.path(settings.prediction_log_dir), settings.log_flush_records,
            settings.log_flush_seconds, replica, on_write=metrics.logged,
            max_queued_records=settings.log_queue_records)
        app.state.shadow = ShadowScorer(champion, app.state.prediction_log,
                                        settings.shadow_queue_requests)
        await check_champion(app, "startup")
        poller = asyncio.create_task(poll(app)) if start_poller else None
        try:
            yield
        finally:
            if poller:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await asyncio.to_thread(app.state.shadow.close)  # its answers go to the log
            await asyncio.to_thread(app.state.prediction_log.close)
            metrics.worker_exits()

    async def check_champion(app: FastAPI, trigger: str) -> str:
        """Check the alias; `trigger` (startup, poll, webhook, admin) is counted and kept."""
        outcome = await asyncio.to_thread(app.state.champion.check)
        metrics.reload_checks.labels(outcome, trigger).inc()
        current = app.state.champion.current
        if current and outcome == "loaded":
            current.metadata["loaded_by"] = trigger
        metrics.model_loaded.set(1 if current else 0)
        metrics.registry_reachable.set(0 if outcome == "error" else 1)
        if current and outcome == "loaded":
            metrics.serving(current.name, current.version, current.run_id, current.task.name)
            metrics.use_value_buckets(current.requests.contract.value_buckets)
            freeze_long_lived_objects()
        return outcome

    async def poll(app: FastAPI) -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            await check_champion(app, "poll")

    app = FastAPI(
        docs_url=None, redoc_url=None,  # drawn from local files below (serving/docs.py)
        title="Model service",
        description=f"Serves `models:/{params.mlflow.registered_model}@champion` from the "
                    "MLflow registry; requests are validated against the served version's "
                    "own contract (its training schema), which this document shows.",
        version="1.0",
        lifespan=lifespan,
    )

    def openapi() -> dict[str, Any]:
        """The document for the champion being served, rebuilt when its contract changes."""
        champion = getattr(app.state, "champion", None)
        requests = champion.current.requests if champion and champion.current else None
        if app.openapi_schema is None or app.state.openapi_contract is not requests:
            document = get_openapi(title=app.title, version=app.version,
                                   description=app.description, routes=app.routes)
            app.openapi_schema = document_request_bodies(document, requests,
                                                         settings.max_records)
            app.state.openapi_contract = requests
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    add_docs(app)
    app.add_middleware(MetricsAndLimits, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       read_timeout_seconds=settings.read_timeout_seconds,
                       content_types={"/predict": ("application/json",),
                                      "/invocations": scoring.CONTENT_TYPES})
    app.state.metrics = metrics
    app.state.params = params

    def batch_problem(count: int) -> Response | None:
        # Too many records breaks the documented `maxItems`: a 422 like any schema
        # violation (413 is for bodies over serving.max_body_bytes).
        if count > settings.max_records:
            message, kind = (f"{count} records in one request; the limit is "
                             f"{settings.max_records} (serving.max_records)", "too_long")
        elif not count:
            message, kind = "the batch is empty", "too_short"
        else:
            return None
        return _json({"detail": [{"loc": ["body"], "record": None, "field": None,
                                  "msg": message, "type": kind}]}, 422)

    def served_model(request: Request) -> LoadedModel | Response:
        """The champion this request is checked against and scored by, start to end (a swap
        in between changes neither its contract nor its model)."""
        model = request.app.state.champion.current
        if model is None:
            return _json({"detail": "no model to serve: "
                                    f"{request.app.state.champion.not_ready_reason}"}, 503)
        return model

    def scored_inline(request: Request, body: bytes) -> bool:
        """A small body for an ONNX model is scored on the event loop: a few records cost
        less (~0.1 ms) than the hop to a worker thread and back."""
        model = request.app.state.champion.current
        return (len(body) <= settings.inline_body_bytes and model is not None
                and model.onnx_session is not None)

    def record(request: Request, model: LoadedModel, columns: dict[str, list[Any]],
               scores: np.ndarray) -> Scored:
        """Turn scores into the task's answers; log them and count them."""
        answers = model.task.answers(scores)
        request_id = next_request_id()
        request.app.state.prediction_log.append(columns, answers.log, model.version, request_id,
                                                types=model.requests.log_types)
        request.app.state.shadow.submit(columns, request_id)  # when the registry has a shadow
        model.task.count(metrics, answers.predictions, model.version)
        return Scored(model.name, model.version, answers, request_id)

    @app.post(
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
        body = await request.body()
        if scored_inline(request, body):
            return predict_body(request, body)
        return await run_in_threadpool(predict_body, request, body)

    def predict_body(request: Request, body: bytes) -> Response:
        model = served_model(request)
        if isinstance(model, Response):
            return model
        try:
            parsed = model.requests.body.validate_json(body)
        except ValidationError as error:
            return body_errors(error, body, model.requests, settings.max_errors)
        records: list[Any] = parsed if isinstance(parsed, list) else [parsed]
        problem = batch_problem(len(records))
        if problem:
            return problem
        columns = model.requests.columns(records)
        scored = record(request, model, columns, model.scores(columns))
        return _json({
            "model": {"name": scored.model, "version": scored.version},
            "request_id": scored.request_id,
            "predictions": scored.answers.records(),
        })

    @app.post(
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
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json")
        content_type = content_type.split(";")[0].strip().lower()
        if scored_inline(request, body):
            return invoke(request, body, content_type)
        return await run_in_threadpool(invoke, request, body, content_type)

    def invoke(request: Request, body: bytes, content_type: str) -> Response:
        try:
            raw, extra = scoring.parse_payload(body, content_type)
            method = scoring.predict_method(extra)
        except scoring.PayloadError as error:
            return _json({"error_code": "BAD_REQUEST", "message": str(error)}, 400)
        count = len(raw) if isinstance(raw, list) else len(next(iter(raw.values()), []))
        problem = batch_problem(count)
        if problem:
            return problem
        model = served_model(request)
        if isinstance(model, Response):
            return model
        if isinstance(raw, dict):  # columns (dataframe_split): checked a column at a time
            columns, detail = raw, scoring.column_errors(raw, model.schema)
            detail = listed(detail, len(detail), settings.max_errors)
            for name in model.schema.logged_columns:  # as text, as the log keeps them
                if name in columns and not detail:
                    columns[name] = [valid_id(value) for value in columns[name]]
        else:
            try:
                columns = model.requests.columns(model.requests.records.validate_python(raw))
                detail = []
            except ValidationError as error:
                detail = _validation_errors(error.errors(), settings.max_errors)
        if detail:
            return _json({"error_code": "BAD_REQUEST", "message": detail[0]["msg"],
                          "detail": detail}, 422)
        scores = model.scores(columns)
        if method == "predict_proba":  # one row per record, a column per class (model order)
            try:
                predictions: list[Any] = model.task.proba_rows(scores, model.model)
            except PredictMethodError as error:
                return _json({"error_code": "BAD_REQUEST", "message": str(error)}, 400)
        scored = record(request, model, columns, scores)
        if method == "predict":
            predictions = scored.answers.predictions
        return Response(json.dumps({"predictions": predictions}), media_type="application/json",
                        headers={"X-Model-Version": scored.version,
                                 "X-Request-Id": scored.request_id})

    @app.get("/ping", summary="MLflow's health check: 200 once a model is loaded",
             response_class=PlainTextResponse,
             responses={503: {"description": "no model loaded",
                              "content": {"text/plain": {}}}})
    def ping(request: Request) -> Response:
        loaded = request.app.state.champion.current is not None
        return PlainTextResponse("\n", status_code=200 if loaded else 503)

    @app.get("/version", summary="The MLflow version serving the model",
             response_class=PlainTextResponse)
    def version() -> Response:
        return PlainTextResponse(importlib.metadata.version("mlflow"))

    @app.get("/health", summary="The process is alive")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="A model is loaded and predictions will be served and logged",
             responses={503: {"description": "not ready, with the reason"}})
    def ready(request: Request) -> Response:
        champion = request.app.state.champion
        registry = champion.registry_status()
        prediction_log = request.app.state.prediction_log.state()
        if champion.current is None:
            return _json({"ready": False, "reason": champion.not_ready_reason,
                          "registry": registry, "prediction_log": prediction_log}, 503)
        if prediction_log["state"] == "stopped":  # this process would log nothing again
            return _json({"ready": False, "reason": "the prediction log's writer stopped: "
                          "restart this replica", "registry": registry,
                          "prediction_log": prediction_log}, 503)
        # Still ready when the registry is down, or when the log's queue is full (records
        # dropped and counted): the cause is shared (the registry, the log's volume), and a
        # 503 here would take every replica out of the load balancer at once.
        return _json({"ready": True, "model": champion.current.name,
                      "version": champion.current.version, "registry": registry,
                      "prediction_log": prediction_log})

    @app.get("/model", summary="The served model and where it came from",
             responses={503: {"description": "no model loaded"}})
    def model_info(request: Request) -> Response:
        champion = request.app.state.champion
        if champion.current is None:
            return _json({"detail": champion.not_ready_reason}, 503)
        return _json({**champion.current.metadata,
                      "last_reload_error": champion.last_check_error or None,
                      "shadow": request.app.state.shadow.state()})

    @app.get("/metrics", summary="Prometheus metrics (all workers of this replica)",
             response_class=PlainTextResponse)
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", summary="Check the champion alias now (bearer token)",
              responses={401: {"description": "missing or wrong token"},
                         403: {"description": "no admin token configured"}})
    async def reload(request: Request,
                     authorization: Annotated[str | None, Header()] = None) -> Response:
        expected = os.environ.get(settings.admin_token_env, "")
        if not expected:
            return _json({"detail": f"admin endpoints are disabled: set "
                                    f"{settings.admin_token_env} to enable them"}, 403)
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
                given.strip().encode(), expected.encode()):
            return _json({"detail": "missing or wrong bearer token: send "
                                    "`Authorization: Bearer <token>`"}, 401)
        outcome = await check_champion(request.app, "admin")
        current = request.app.state.champion.current
        return _json({"outcome": outcome, "version": current.version if current else None,
                      "error": request.app.state.champion.last_check_error or None})

    deliveries: dict[str, float] = {}  # accepted delivery ids, when (this worker's)

    @app.post("/admin/webhook", status_code=202,
              summary="MLflow registry webhook: reload now when `champion` moved (signed)",
              responses={400: {"description": "a signed body that is not JSON"},
                         401: {"description": "unsigned, wrongly signed or stale call"},
                         403: {"description": "no webhook secret configured"},
                         409: {"description": "a delivery already accepted (a replay)"}})
    async def webhook(request: Request) -> Response:
        secret = os.environ.get(settings.webhook_secret_env, "")
        if not secret:
            return _json({"detail": f"webhooks are disabled: set {settings.webhook_secret_env} "
                                    "to the secret the MLflow webhook was created with"}, 403)
        body = await request.body()
        problem = webhook_signature_problem(secret, request.headers, body, time.time(),
                                            settings.webhook_max_age_seconds)
        if problem:
            log.warning("webhook refused: %s", problem)
            return _json({"detail": problem}, 401)
        try:
            event = orjson.loads(body)  # orjson stops past 1,024 levels where json recurses
        except orjson.JSONDecodeError as error:
            return _json({"detail": f"the webhook body is not JSON: {error}"}, 400)
        # A signed delivery is good for webhook_max_age_seconds: within that, once.
        now, delivery = time.monotonic(), request.headers["x-mlflow-delivery-id"]
        for seen, at in list(deliveries.items()):
            if now - at > settings.webhook_max_age_seconds:
                del deliveries[seen]
        if delivery in deliveries:
            return _json({"detail": f"delivery {delivery!r} was already accepted"}, 409)
        deliveries[delivery] = now
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict) or (event.get("entity"), data.get("name"),
                                          data.get("alias")) != (
                "model_version_alias", params.mlflow.registered_model, "champion"):
            return _json({"outcome": "ignored"}, 202)
        # Reload in the background: MLflow's delivery need not wait for a model download.
        request.app.state.webhook_reload = asyncio.create_task(
            check_champion(request.app, "webhook"))
        return _json({"outcome": "reloading", "version": data.get("version")}, 202)

    return app


@dataclass(frozen=True)
class Scored:
    """One request's answers, as logged."""

    model: str
    version: str
    answers: Answers
    request_id: str


def body_errors(error: ValidationError, body: bytes, requests: RequestContract,
                max_errors: int) -> Response:
    """/predict's answer to a body its contract refuses: 400 if it is not UTF-8 text, else 422
    naming the record and field (or, for broken JSON, the character position)."""
    found = error.errors()
    if found and found[0]["type"] == "json_invalid" and "recursion limit" in found[0]["msg"]:
        # pydantic's parser stops at about 200 levels (a record needs 2); the standard
        # parser below would recurse until the interpreter's own limit: a 500.
        return _json({"detail": [{"loc": ["body"], "record": None, "field": None,
                                  "type": "json_invalid",
                                  "msg": "the body nests JSON arrays and objects too deeply: "
                                         "a record needs 2 levels, the parser stops at "
                                         f"{PREDICT_MAX_DEPTH}"}]}, 422)
    if found and found[0]["type"] == "json_invalid":
        try:
            parsed = json.loads(body)  # the standard parser names the position as a character
        except UnicodeDecodeError:
            return _json({"detail": "the body could not be read as JSON: it must be UTF-8 "
                                    "text"}, 400)
        except json.JSONDecodeError as decode_error:
            position, reason = decode_error.pos, decode_error.msg
            return _json({"detail": [{"loc": ["body"], "record": None, "field": None,
                                      "position": position, "type": "json_invalid",
                                      "msg": f"the body is not valid JSON: {reason} at "
                                             f"character {position}"}]}, 422)
        except ValueError:  # the only other: an integer past Python's 4,300 digits
            return _json({"detail": [{"loc": ["body"], "record": None, "field": None,
                                      "type": "json_invalid", "msg": scoring.TOO_LONG}]}, 422)
        # JSON the standard parser reads and pydantic's does not: a lone surrogate ("\ud800"),
        # which no UTF-8 writer (the log, Parquet) takes. Checked as parsed, the record model
        # names the field that carries it.
        try:
            requests.body.validate_python(parsed)
        except ValidationError as named:
            found = named.errors()
    return _json({"detail": _validation_errors(found, max_errors)}, 422)


# pydantic's JSON parser (jiter) refuses deeper bodies: /predict's documented nesting limit.
PREDICT_MAX_DEPTH = 200


def document_request_bodies(document: dict[str, Any], requests: RequestContract | None,
                            max_records: int) -> dict[str, Any]:
    """Put the served contract's record, and the bodies built from it, in the document:
    `Record`, `PredictBody` (one record or 1 to max_records of them) and `ScoringPayload`
    (MLflow's payloads); and its task's answer, `Prediction`. Before a model is loaded, a
    record and a prediction are any object."""
    record = requests.record_json_schema() if requests else {
        "type": "object", "title": "Record",
        "description": "no model is loaded yet: its contract decides the fields"}
    record = {**record, "properties": record.get("properties", {})}
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components["Record"] = record
    components["PredictBody"] = {"oneOf": [
        {"$ref": "#/components/schemas/Record"},
        {"type": "array", "minItems": 1, "maxItems": max_records,
         "items": {"$ref": "#/components/schemas/Record"}}]}
    components["ScoringPayload"] = scoring.payload_json_schema(record, max_records)
    components["Prediction"] = requests.task.prediction_json_schema() if requests else {
        "type": "object", "title": "Prediction",
        "description": "no model is loaded yet: its task decides the fields"}
    response = components.get("PredictResponse", {}).get("properties", {})
    if "predictions" in response:
        response["predictions"] = {"type": "array", "title": "Predictions",
                                   "items": {"$ref": "#/components/schemas/Prediction"}}
    return document


# Request ids: this process's random prefix and a counter, 32 hex digits like a UUID's but
# without a system call per request (uuid4 reads os.urandom each time).
_REQUEST_ID_PREFIX = secrets.token_hex(10)
_request_numbers = itertools.count()


def next_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):012x}"


def freeze_long_lived_objects() -> None:
    """Move what exists now (the app, the loaded model) out of the garbage collector's view.

    Every full collection would rescan these long-lived objects: at 16 connections that was
    a ~200 ms p99 tail. Unfreezing first lets the previous model's cycles be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def webhook_signature_problem(secret: str, headers: Any, body: bytes, now: float,
                              max_age_seconds: float) -> str | None:
    """Why a webhook call is not MLflow's, or None when its signature holds.

    MLflow signs `<delivery id>.<timestamp>.<body>` with HMAC-SHA256 and sends
    `X-MLflow-Signature: v1,<base64>` (the Standard Webhooks scheme)."""
    signature = headers.get("x-mlflow-signature", "")
    delivery = headers.get("x-mlflow-delivery-id", "")
    timestamp = headers.get("x-mlflow-timestamp", "")
    if not (signature and delivery and timestamp):
        return "unsigned: X-MLflow-Signature, -Delivery-Id and -Timestamp are required"
    try:
        age = abs(now - int(timestamp))
    except ValueError:
        return "X-MLflow-Timestamp is not a Unix time"
    if age > max_age_seconds:  # replay protection
        return f"stale call: signed {age:.0f} s ago (at most {max_age_seconds:g} s)"
    signed = f"{delivery}.{timestamp}.".encode() + body
    expected = "v1," + base64.b64encode(
        hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    if not secrets.compare_digest(signature.encode(), expected.encode()):
        return "wrong signature"
    return None
