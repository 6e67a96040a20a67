"""Prometheus metrics and the ASGI middleware that counts requests and guards request bodies.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware) keeps the per-request cost to a
few microseconds.

With several worker processes on one port (`python -m serving --workers N`), each scrape
reaches one worker; so the parent sets PROMETHEUS_MULTIPROC_DIR for them (prometheus_client's
multiprocess mode: every worker writes its values to files there) and /metrics answers the
aggregate of all workers. Counters and histograms are summed; the gauges aggregate as each
one's `multiprocess_mode` says (documented beside it); a worker's live gauges leave with it.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set: the workers' values are aggregated

# Where the middleware leaves the body it read whole (the scope key), for the endpoints to
# take as it is rather than through the replayed receive channel.
BODY_READ = "serving.body"
CONTENT_TYPE_READ = "serving.content_type"  # and the media type it read (lower case)
KNOWN_PATHS = {"/predict", "/invocations", "/ping", "/version", "/health", "/ready", "/model",
               "/metrics", "/admin/reload", "/admin/webhook", "/docs", "/openapi.json"}


class ServiceMetrics:
    """One registry per app, so tests can start several apps in one process; in multiprocess
    mode the exposition aggregates every worker's files instead."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_ENV) or None
        r = self.registry
        self.requests = Counter("http_requests_total", "HTTP requests",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram(
            "http_request_duration_seconds", "Request latency", ["endpoint", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.predictions = Counter("predictions_total", "Predicted records by class",
                                   ["label", "model_version"], registry=r)
        # Labelled children by (metric, labels): `labels()` takes a lock and builds its key
        # on every call, and the request path asks for the same few over and over.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Regression: a histogram of the predicted values, its buckets from the served
        # version's contract (the training target's deciles); made when one is served.
        self.predicted_values: Histogram | None = None
        self._value_buckets: tuple[float, ...] = ()
        # 1 on the labels of the version a worker serves, 0 once it swapped away; across
        # workers the largest: during a swap both versions show 1.
        self.model_info = Gauge("served_model_info", "The model being served",
                                ["name", "version", "run_id", "task"], registry=r,
                                multiprocess_mode="livemax")
        self._served: tuple[str, ...] | None = None
        # Across workers the smallest: 1 only when every live worker has a model / reached
        # the registry at its last check.
        self.model_loaded = Gauge("model_loaded", "1 when a model is loaded", registry=r,
                                  multiprocess_mode="livemin")
        self.registry_reachable = Gauge(
            "model_registry_reachable", "1 when the last champion check reached the registry",
            registry=r, multiprocess_mode="livemin")
        self.reload_checks = Counter("model_reload_checks_total",
                                     "Champion alias checks by outcome and trigger",
                                     ["outcome", "trigger"], registry=r)
        # Each worker's running total, summed across workers (dead ones' included).
        self.log_written = Gauge("prediction_log_records_written",
                                 "Records written to the prediction log", registry=r,
                                 multiprocess_mode="sum")
        # By reason: queue_full, writer_stopped (dropped on the request path), or the
        # writer's error (OSError, UnicodeEncodeError...) for a part it could not write.
        self.log_failures = Gauge("prediction_log_records_failed",
                                  "Records the prediction log did not write, by reason",
                                  ["reason"], registry=r, multiprocess_mode="sum")
        # The shadow (serving.shadow), per shadow version, summed across workers: requests
        # it scored, dropped (its queue full) and failed; the requests waiting for it now.
        shadow = ["shadow_version"]
        self.shadow_scored = Counter("prediction_shadow_scored",
                                     "Requests the shadow scored and logged", shadow,
                                     registry=r)
        self.shadow_dropped = Counter("prediction_shadow_dropped",
                                      "Requests the shadow never scored: its queue was full "
                                      "(serving.shadow_queue_requests)", shadow, registry=r)
        self.shadow_failed = Counter("prediction_shadow_failed",
                                     "Requests the shadow could not score", shadow, registry=r)
        self.shadow_pending = Gauge("prediction_shadow_pending",
                                    "Requests queued for the shadow", registry=r,
                                    multiprocess_mode="livesum")

    def serving(self, name: str, version: str, run_id: str, task: str) -> None:
        """The version this worker now serves (the previous one's series goes to 0)."""
        if self._served is not None:
            self.model_info.labels(*self._served).set(0)
            if not self.multiprocess_dir:  # one process: the old series can simply go
                self.model_info.remove(*self._served)
        self._served = (name, version, run_id, task)
        self.model_info.labels(*self._served).set(1)

    def logged(self, written: int, failed: dict[str, int]) -> None:
        """The prediction log's running totals (its writer thread, or a request that found
        the queue full)."""
        self.log_written.set(written)
        for reason, records in failed.items():
            self.log_failures.labels(reason).set(records)

    def exposition(self) -> bytes:
        """The text /metrics answers: this app's registry, or every worker's files."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        forget_dead_workers(self.multiprocess_dir)
        aggregate = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregate, path=self.multiprocess_dir)
        return generate_latest(aggregate)

    def worker_exits(self) -> None:
        if self.multiprocess_dir:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def use_value_buckets(self, buckets: list[float]) -> None:
        """The histogram of predicted values with the served version's buckets. Another
        version's buckets start a new histogram (Prometheus cannot change them in place)."""
        if not buckets or tuple(buckets) == self._value_buckets:
            return
        if self.predicted_values is not None:
            self.registry.unregister(self.predicted_values)
        self._value_buckets = tuple(buckets)
        self.predicted_values = Histogram(
            "predicted_values", "Predicted values (regression), in buckets at the training "
            "target's deciles", ["model_version"], buckets=self._value_buckets,
            registry=self.registry)

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once."""
        key = (id(metric), labels)  # the metrics live as long as this object
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def count_labels(self, labels: list[object], version: str) -> None:
        if len(labels) == 1:  # one record: most requests
            self.child(self.predictions, str(labels[0]), version).inc()
            return
        for label in set(labels):
            self.child(self.predictions, str(label), version).inc(labels.count(label))

    def observe_values(self, values: list[float], version: str) -> None:
        if self.predicted_values is None:  # a version logged without buckets
            self.use_value_buckets(DEFAULT_VALUE_BUCKETS)
        histogram = self.predicted_values.labels(version)  # type: ignore[union-attr]
        for value in values:
            histogram.observe(value)


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges of workers that died without saying so (killed, crashed), so a
    worker uvicorn restarted does not count twice."""
    pids = {int(path.rsplit("_", 1)[1].removesuffix(".db"))
            for path in glob.glob(os.path.join(folder, "gauge_live*_*.db"))}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:  # alive, another user's
            pass


# For a version whose contract has no buckets: prometheus_client's defaults, widened.
DEFAULT_VALUE_BUCKETS = [0.1, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]


class MetricsAndLimits:
    """Counts every request by endpoint and status, and guards request bodies.

    A body is read here, whole, before the app sees it: over `max_body_bytes` (declared or
    chunked) is 413, not in within `read_timeout_seconds` is 408 (a stalled or slow
    client), and a content type a path does not take is 415."""

    def __init__(self, app: Any, metrics: ServiceMetrics, max_body_bytes: int,
                 read_timeout_seconds: float,
                 content_types: dict[str, tuple[str, ...]] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.read_timeout_seconds = read_timeout_seconds
        self.content_types = content_types or {}
        # Tasks reading a body, and since when. A sweep per event loop cancels the late ones
        # (so a body is cut off within 1.5 read timeouts): a timer per request
        # (asyncio.timeout) cost about 4 us.
        self._reading: dict[asyncio.Task, float] = {}
        self._late: set[asyncio.Task] = set()
        self._swept_loops: set[asyncio.AbstractEventLoop] = set()

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
            problem = self._header_problem(path, method, scope)
            if problem:
                await _answer(send_counting, *problem)
                return
            if method in ("POST", "PUT", "PATCH"):
                body = scope[BODY_READ] = await self._read_body(receive)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_counting)
        except _BodyTooLarge:
            await _answer(send_counting, 413, self._too_large(None))
        except TimeoutError:
            await _answer(send_counting, 408, "the request body did not arrive within "
                          f"{self.read_timeout_seconds:g} s (serving.read_timeout_seconds)")
        except _ClientGone:
            status = 499  # nginx's "client closed request": nobody to answer
        finally:
            self._count(endpoint, method, status, time.perf_counter() - started)

    def _count(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        metrics = self.metrics
        metrics.child(metrics.requests, endpoint, method, str(status)).inc()
        metrics.child(metrics.latency, endpoint, method).observe(seconds)

    def _header_problem(self, path: str, method: str, scope: dict
                        ) -> tuple[int, str] | None:
        """413 or 415 and why, from the headers, or None; the media type it read goes into
        the scope for the endpoints (CONTENT_TYPE_READ)."""
        length = given_type = None
        for name, value in scope["headers"]:  # the two it needs, without a dict of all
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                given_type = value
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return 413, self._too_large(int(length))
        accepted = self.content_types.get(path)
        given = (given_type or b"").decode("latin-1").split(";")[0].strip()
        scope[CONTENT_TYPE_READ] = given.lower()
        if accepted and method == "POST" and given and given.lower() not in accepted:
            return 415, (f"Content-Type {given!r} is not accepted on {path}: send "
                         + " or ".join(accepted))
        return None

    async def _read_body(self, receive: Any) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        if loop not in self._swept_loops:
            self._swept_loops.add(loop)
            self._sweep(loop)
        self._reading[task] = loop.time()
        chunks, size = [], 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _BodyTooLarge
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        except asyncio.CancelledError:
            if task not in self._late:
                raise
            task.uncancel()
            raise TimeoutError from None
        finally:
            self._reading.pop(task, None)
            self._late.discard(task)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the body reads that are late; again in half a read timeout."""
        if loop.is_closed():
            self._swept_loops.discard(loop)
            return
        now = loop.time()
        for task, since in list(self._reading.items()):
            if (task.get_loop() is loop and task not in self._late
                    and now - since > self.read_timeout_seconds):
                self._late.add(task)
                task.cancel()
        loop.call_later(self.read_timeout_seconds / 2, self._sweep, loop)

    def _too_large(self, length: int | None) -> str:
        size = f"{length} bytes" if length is not None else "the body"
        return (f"request body too large: {size} exceeds the limit of {self.max_body_bytes} "
                "bytes (serving.max_body_bytes)")


def _replay(body: bytes, receive: Any) -> Any:
    """A receive() that hands the app the body already read, then the real channel."""
    pending = True

    async def replay() -> dict:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass
