"""The FastAPI application that serves the registry's champion.

Endpoints: POST /predict (one record or a batch), GET /health, /ready, /model, /metrics,
POST /admin/reload (bearer token), POST /admin/webhook (MLflow's signed registry webhook);
and MLflow's scoring protocol: POST /invocations, GET /ping, /version.
Nothing lets a caller name a model URI or a file: the service serves
`models:/<registered_model>@champion` from params.yaml and nothing else.
"""


import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import importlib.metadata
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlpipeline.config import Params, load_params
from serving import scoring
from serving.champion import Champion
from serving.metrics import MetricsAndLimits, ServiceMetrics
from serving.prediction_log import PredictionLog
from serving.schemas import PredictResponse, record_model, request_body

log = logging.getLogger("serving")

# What /predict and /invocations both answer besides 200 (each adds its own 400 and 415).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"description": "the body did not arrive within serving.read_timeout_seconds"},
    413: {"description": "a body over serving.max_body_bytes"},
    422: {"description": "a record breaks the schema (`detail` names the record index and "
                         "the field), or the batch is empty or over serving.max_records"},
    503: {"description": "no champion model is loaded"},
}


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def _validation_errors(found: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors (loc starting at "body"), with the record index and field spelled
    out for the caller."""
    errors = []
    for error in found:
        loc = [p for p in error["loc"] if p not in ("single", "batch")]
        if error["type"] == "json_invalid":  # loc holds a character position, not a record
            position = loc[-1] if isinstance(loc[-1], int) else None
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            errors.append({"loc": ["body"], "record": None, "field": None,
                           "position": position, "type": "json_invalid",
                           "msg": f"the body is not valid JSON: {reason} at character "
                                  f"{position}"})
            continue
        record = next((p for p in loc[1:] if isinstance(p, int)), None)
        field = next((p for p in reversed(loc) if isinstance(p, str) and p != "body"), None)
        message = error["msg"]
        if error.get("input", ...) is None and error["type"] != "missing" and field:
            message = f"null is not allowed for {field!r}: {message}"
        errors.append({"loc": loc, "record": record, "field": field, "msg": message,
                       "type": error["type"]})
    return errors


def create_app(params: Params | None = None, *, start_poller: bool = True,
               replica: str = "") -> FastAPI:
    params = params or load_params()
    settings = params.serving
    schema = params.schema
    threshold = params.evaluate.threshold
    negative_class = schema.negative_class
    Record = record_model(schema)
    Body_ = request_body(Record, settings.max_records)
    batch_of_records = TypeAdapter(list[Record])  # type: ignore[valid-type]
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        champion = Champion(params)
        app.state.champion = champion
        app.state.prediction_log = PredictionLog(
            params.path(settings.prediction_log_dir), settings.log_flush_records,
            settings.log_flush_seconds, replica)
        await check_champion(app, "startup")
        poller = asyncio.create_task(poll(app)) if start_poller else None
        try:
            yield
        finally:
            if poller:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await asyncio.to_thread(app.state.prediction_log.close)

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
            metrics.model_info.info({"name": current.name, "version": current.version,
                                     "run_id": current.run_id})
            freeze_long_lived_objects()
        return outcome

    async def poll(app: FastAPI) -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            await check_champion(app, "poll")

    app = FastAPI(
        title="Model service",
        description=f"Serves `models:/{params.mlflow.registered_model}@champion` from the "
                    "MLflow registry; requests are validated against the training schema.",
        version="1.0",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsAndLimits, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       read_timeout_seconds=settings.read_timeout_seconds,
                       content_types={"/predict": ("application/json",),
                                      "/invocations": scoring.CONTENT_TYPES})
    app.state.metrics = metrics
    app.state.params = params

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the body could not be read as JSON: it must be UTF-8 text"
        return _json({"detail": detail}, exc.status_code)

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

    def as_columns(records: list[Any]) -> dict[str, list[Any]]:
        return {name: [r.__dict__[name] for r in records] for name in schema.feature_names}

    def score(request: Request, columns: dict[str, list[Any]]) -> Scored | Response:
        """Predict validated columns with the champion, log them and count them."""
        model = request.app.state.champion.current  # one reference for the whole request
        if model is None:
            return _json({"detail": "no model to serve: "
                                    f"{request.app.state.champion.not_ready_reason}"}, 503)
        proba = model.positive_proba(columns)
        labels = [schema.positive_class if p >= threshold else negative_class for p in proba]
        probabilities = np.round(proba.astype(np.float64), 6).tolist()
        request_id = uuid.uuid4().hex
        request.app.state.prediction_log.append(columns, labels, probabilities, model.version,
                                                request_id)
        for label in set(labels):
            metrics.predictions.labels(str(label), model.version).inc(labels.count(label))
        return Scored(model.name, model.version, model.positive_index, labels, probabilities,
                      request_id)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={**BODY_ERRORS, 400: {"description": "the body is not UTF-8 text"},
                   415: {"description": "the body is not application/json"}},
        summary="Predict one record or a batch",
    )
    # Body_ is built from the schema at start-up: a real type to FastAPI, a variable to mypy.
    def predict(request: Request, body: Annotated[Body_, Body()]) -> Response:  # type: ignore[valid-type]
        records: list[Any] = body if isinstance(body, list) else [body]
        scored = batch_problem(len(records)) or score(request, as_columns(records))
        if isinstance(scored, Response):
            return scored
        return _json({
            "model": {"name": scored.model, "version": scored.version},
            "request_id": scored.request_id,
            "predictions": [{"label": lab, "probability": p} for lab, p in
                            zip(scored.labels, scored.probabilities, strict=True)],
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
            "application/json": {"schema": scoring.payload_json_schema(
                Record.model_json_schema(), settings.max_records)}}}},
        responses={**BODY_ERRORS,
                   400: {"description": "not a scoring-protocol payload (or not UTF-8)"},
                   415: {"description": "neither application/json nor text/csv"}},
    )
    async def invocations(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json")
        return await run_in_threadpool(invoke, request, body,
                                       content_type.split(";")[0].strip().lower())

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
        if isinstance(raw, dict):  # columns (dataframe_split): checked a column at a time
            columns, detail = raw, scoring.column_errors(raw, schema)
        else:
            try:
                columns, detail = as_columns(batch_of_records.validate_python(raw)), []
            except ValidationError as error:
                detail = _validation_errors([{**e, "loc": ("body", *e["loc"])}
                                             for e in error.errors()])
        if detail:
            return _json({"error_code": "BAD_REQUEST", "message": detail[0]["msg"],
                          "detail": detail}, 422)
        scored = score(request, columns)
        if isinstance(scored, Response):
            return scored
        if method == "predict_proba":  # one row per record, columns in the model's class order
            predictions: list[Any] = [
                [1 - p, p] if scored.positive_index == 1 else [p, 1 - p]
                for p in scored.probabilities]
        else:
            predictions = scored.labels
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

    @app.get("/ready", summary="A model is loaded and predictions will be served",
             responses={503: {"description": "not ready, with the reason"}})
    def ready(request: Request) -> Response:
        champion = request.app.state.champion
        registry = champion.registry_status()
        if champion.current is None:
            return _json({"ready": False, "reason": champion.not_ready_reason,
                          "registry": registry}, 503)
        # Still ready when the registry is down: the model in memory serves on, and a 503
        # here would take every replica out of the load balancer at once.
        return _json({"ready": True, "model": champion.current.name,
                      "version": champion.current.version, "registry": registry})

    @app.get("/model", summary="The served model and where it came from",
             responses={503: {"description": "no model loaded"}})
    def model_info(request: Request) -> Response:
        champion = request.app.state.champion
        if champion.current is None:
            return _json({"detail": champion.not_ready_reason}, 503)
        return _json({**champion.current.metadata,
                      "last_reload_error": champion.last_check_error or None})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus(request: Request) -> Response:
        plog = request.app.state.prediction_log
        metrics.log_written.set(plog.written)
        metrics.log_failures.set(plog.failures)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", summary="Check the champion alias now (bearer token)",
              responses={401: {"description": "missing or wrong token"},
                         403: {"description": "no admin token configured"}})
    async def reload(request: Request,
                     authorization: Annotated[str | None, Header()] = None) -> Response:
        expected = os.environ.get(settings.admin_token_env, "")
        if not expected:
            return _json({"detail": f"admin endpoints are disabled: set "
                                    f"{settings.admin_token_env} to enable them"}, 403)
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), expected.encode()):
            return _json({"detail": "missing or wrong bearer token"}, 401)
        outcome = await check_champion(request.app, "admin")
        current = request.app.state.champion.current
        return _json({"outcome": outcome, "version": current.version if current else None,
                      "error": request.app.state.champion.last_check_error or None})

    @app.post("/admin/webhook", status_code=202,
              summary="MLflow registry webhook: reload now when `champion` moved (signed)",
              responses={401: {"description": "unsigned, wrongly signed or stale call"},
                         403: {"description": "no webhook secret configured"}})
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
        event = json.loads(body)
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
    """One request's predictions, as logged."""

    model: str
    version: str
    positive_index: int
    labels: list[Any]
    probabilities: list[float]
    request_id: str


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
