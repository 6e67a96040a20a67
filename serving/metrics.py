"""Prometheus metrics and the ASGI middleware that counts requests and enforces the body limit.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware) keeps the per-request cost to a
few microseconds.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

KNOWN_PATHS = {"/predict", "/health", "/ready", "/model", "/metrics", "/admin/reload",
               "/admin/webhook", "/docs", "/openapi.json"}


class ServiceMetrics:
    """One registry per app, so tests can start several apps in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("http_requests_total", "HTTP requests",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram(
            "http_request_duration_seconds", "Request latency", ["endpoint", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.predictions = Counter("predictions_total", "Predicted records by class",
                                   ["label", "model_version"], registry=r)
        self.model_info = Info("served_model", "The model being served", registry=r)
        self.model_loaded = Gauge("model_loaded", "1 when a model is loaded", registry=r)
        self.registry_reachable = Gauge(
            "model_registry_reachable", "1 when the last champion check reached the registry",
            registry=r)
        self.reload_checks = Counter("model_reload_checks_total",
                                     "Champion alias checks by outcome and trigger",
                                     ["outcome", "trigger"], registry=r)
        self.log_written = Gauge("prediction_log_records_written",
                                 "Records written to the prediction log", registry=r)
        self.log_failures = Gauge("prediction_log_records_failed",
                                  "Records the prediction log failed to write", registry=r)


class MetricsAndLimits:
    """Counts every request by endpoint and status; answers 413 to oversized bodies."""

    def __init__(self, app: Any, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in KNOWN_PATHS else "other"
        method = scope["method"]
        started = time.perf_counter()
        status = 500

        async def send_counting(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and int(length) > self.max_body_bytes:
                await self._too_large(send_counting, int(length))
                return
            received = 0

            async def receive_limited() -> dict:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
                return message

            await self.app(scope, receive_limited, send_counting)
        except _BodyTooLarge:
            await self._too_large(send_counting, None)
        finally:
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint, method).observe(time.perf_counter() - started)

    async def _too_large(self, send: Any, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "the body"
        body = json.dumps({"detail": f"request body too large: {size} exceeds the limit of "
                                     f"{self.max_body_bytes} bytes (serving.max_body_bytes)"}
                          ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
