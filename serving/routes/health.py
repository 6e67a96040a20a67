"""The model and health: GET /ping and /version (MLflow's), /health (the process is
alive), /ready (a model is loaded and its answers will be logged), /model (what is served,
where it came from, its shadow) and /metrics (Prometheus)."""

import importlib.metadata

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from serving.state import json_response

router = APIRouter()


@router.get("/ping", summary="MLflow's health check: 200 once a model is loaded",
            response_class=PlainTextResponse,
            responses={503: {"description": "no model loaded",
                             "content": {"text/plain": {}}}})
def ping(request: Request) -> Response:
    loaded = request.app.state.champion.current is not None
    return PlainTextResponse("\n", status_code=200 if loaded else 503)


@router.get("/version", summary="The MLflow version serving the model",
            response_class=PlainTextResponse)
def version() -> Response:
    return PlainTextResponse(importlib.metadata.version("mlflow"))


@router.get("/health", summary="The process is alive")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="A model is loaded and predictions will be served and logged",
            responses={503: {"description": "not ready, with the reason"}})
def ready(request: Request) -> Response:
    champion = request.app.state.champion
    registry = champion.registry_status()
    prediction_log = request.app.state.prediction_log.state()
    if champion.current is None:
        return json_response({"ready": False, "reason": champion.not_ready_reason,
                              "registry": registry, "prediction_log": prediction_log}, 503)
    if prediction_log["state"] == "stopped":  # this process would log nothing again
        return json_response({"ready": False, "reason": "the prediction log's writer stopped: "
                              "restart this replica", "registry": registry,
                              "prediction_log": prediction_log}, 503)
    # Still ready when the registry is down, or when the log's queue is full (records
    # dropped and counted): the cause is shared (the registry, the log's volume), and a
    # 503 here would take every replica out of the load balancer at once.
    return json_response({"ready": True, "model": champion.current.name,
                          "version": champion.current.version, "registry": registry,
                          "prediction_log": prediction_log})


@router.get("/model", summary="The served model and where it came from",
            responses={503: {"description": "no model loaded"}})
def model_info(request: Request) -> Response:
    champion = request.app.state.champion
    if champion.current is None:
        return json_response({"detail": champion.not_ready_reason}, 503)
    return json_response({**champion.current.metadata,
                          "last_reload_error": champion.last_check_error or None,
                          "shadow": request.app.state.shadow.state()})


@router.get("/metrics", summary="Prometheus metrics (all workers of this replica)",
            response_class=PlainTextResponse)
def prometheus(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
