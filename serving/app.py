"""The FastAPI application that serves the registry's champion.

Endpoints, by concern (serving.routes): scoring, POST /predict (one record or a batch) and
MLflow's POST /invocations; the model and health, GET /ping, /version, /health, /ready,
/model, /metrics; admin, POST /admin/reload (bearer token) and /admin/webhook (MLflow's
signed registry webhook); and GET /docs and /redoc, drawn from local files (serving.docs).
Nothing lets a caller name a model URI or a file: the service serves
`models:/<registered_model>@champion` from params.yaml and nothing else. Requests are checked
against the served version's own contract (logged with it), and the OpenAPI document follows
the champion when it changes. What the routers share is on `app.state` (serving.state).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from mlpipeline.config import ServiceConfig, load_service_config
from serving.champion import Champion
from serving.docs import add_docs, follow_the_contract
from serving.metrics import MetricsAndLimits, ServiceMetrics
from serving.prediction_log import PredictionLog
from serving.routes import admin, health
from serving.routes import scoring as scoring_routes
from serving.scoring import CONTENT_TYPES
from serving.shadow import ShadowScorer
from serving.state import AppState, check_champion


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
                                        settings.shadow_queue_requests, metrics)
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

    async def poll(app: FastAPI) -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            await check_champion(app, "poll")

    app = FastAPI(
        docs_url=None, redoc_url=None,  # drawn from local files (serving/docs.py)
        title="Model service",
        description=f"Serves `models:/{params.mlflow.registered_model}@champion` from the "
                    "MLflow registry; requests are validated against the served version's "
                    "own contract (its training schema), which this document shows.",
        version="1.0",
        lifespan=lifespan,
        telemetry={"tracing": settings.opentelemetry, "metrics": settings.opentelemetry,
                   "logs": settings.opentelemetry},
    )

    app.state = AppState()
    follow_the_contract(app, settings.max_records)
    add_docs(app)
    app.add_middleware(MetricsAndLimits, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       read_timeout_seconds=settings.read_timeout_seconds,
                       content_types={"/predict": ("application/json",),
                                      "/invocations": CONTENT_TYPES})
    app.state.metrics = metrics
    app.state.params = params
    app.state.webhook_deliveries = {}
    # Their routes themselves, not `include_router`: FastAPI 0.165 keeps an included router
    # nested and matches through it on every request (about 9 us per request). Scoring
    # first: routes are matched in order, and nearly every request is a prediction.
    app.router.routes[:0] = [*scoring_routes.router.routes, *health.router.routes,
                             *admin.router.routes]
    return app
