"""Admin: POST /admin/reload (check the champion alias now; bearer token) and POST
/admin/webhook (MLflow's signed registry webhook: reload at once when `champion` moves)."""

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from serving.state import check_champion, json_response

log = logging.getLogger("serving")
router = APIRouter()


@router.post("/admin/reload", summary="Check the champion alias now (bearer token)",
             responses={401: {"description": "missing or wrong token"},
                        403: {"description": "no admin token configured"}})
async def reload(request: Request,
                 authorization: Annotated[str | None, Header()] = None) -> Response:
    settings = request.app.state.params.serving
    expected = os.environ.get(settings.admin_token_env, "")
    if not expected:
        return json_response({"detail": f"admin endpoints are disabled: set "
                                        f"{settings.admin_token_env} to enable them"}, 403)
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), expected.encode()):
        return json_response({"detail": "missing or wrong bearer token: send "
                                        "`Authorization: Bearer <token>`"}, 401)
    outcome = await check_champion(request.app, "admin")
    current = request.app.state.champion.current
    return json_response({"outcome": outcome, "version": current.version if current else None,
                          "error": request.app.state.champion.last_check_error or None})


@router.post("/admin/webhook", status_code=202,
             summary="MLflow registry webhook: reload now when `champion` moved (signed)",
             responses={400: {"description": "a signed body that is not JSON"},
                        401: {"description": "unsigned, wrongly signed or stale call"},
                        403: {"description": "no webhook secret configured"},
                        409: {"description": "a delivery already accepted (a replay)"}})
async def webhook(request: Request) -> Response:
    params = request.app.state.params
    settings = params.serving
    deliveries = request.app.state.webhook_deliveries  # accepted ids, when (this worker's)
    secret = os.environ.get(settings.webhook_secret_env, "")
    if not secret:
        return json_response({"detail": f"webhooks are disabled: set {settings.webhook_secret_env} "
                                        "to the secret the MLflow webhook was created with"}, 403)
    body = await request.body()
    problem = webhook_signature_problem(secret, request.headers, body, time.time(),
                                        settings.webhook_max_age_seconds)
    if problem:
        log.warning("webhook refused: %s", problem)
        return json_response({"detail": problem}, 401)
    try:
        event = orjson.loads(body)  # orjson stops past 1,024 levels where json recurses
    except orjson.JSONDecodeError as error:
        return json_response({"detail": f"the webhook body is not JSON: {error}"}, 400)
    # A signed delivery is good for webhook_max_age_seconds: within that, once.
    now, delivery = time.monotonic(), request.headers["x-mlflow-delivery-id"]
    for seen, at in list(deliveries.items()):
        if now - at > settings.webhook_max_age_seconds:
            del deliveries[seen]
    if delivery in deliveries:
        return json_response({"detail": f"delivery {delivery!r} was already accepted"}, 409)
    deliveries[delivery] = now
    data = event.get("data") if isinstance(event, dict) else None
    if not isinstance(data, dict) or (event.get("entity"), data.get("name"),
                                      data.get("alias")) != (
            "model_version_alias", params.mlflow.registered_model, "champion"):
        return json_response({"outcome": "ignored"}, 202)
    # Reload in the background: MLflow's delivery need not wait for a model download.
    request.app.state.webhook_reload = asyncio.create_task(
        check_champion(request.app, "webhook"))
    return json_response({"outcome": "reloading", "version": data.get("version")}, 202)


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
