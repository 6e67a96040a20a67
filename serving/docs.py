"""/docs (Swagger UI) and /redoc drawn from files this service serves, never from a CDN, and
the OpenAPI document they show, which follows the served champion's contract.

FastAPI's own pages load their JavaScript from cdn.jsdelivr.net and are blank offline; this is
FastAPI's self-hosting recipe with the assets of the `fastapi-offline` package. A
Content-Security-Policy makes the browser load nothing from another host: ReDoc's sidebar
shows a logo from cdn.redoc.ly, which the policy blocks (ReDoc hides the image when it fails).
"""

from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from serving import scoring
from serving.schemas import RequestContract

ASSETS_PATH = "/docs/static"
# 'unsafe-inline' scripts: Swagger UI is started by an inline script; ReDoc searches in a
# blob: worker.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:"
)


def offline(page: HTMLResponse) -> HTMLResponse:
    """`page` with the policy that keeps the browser on this host."""
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def add_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc for `app` (created with docs_url=None, redoc_url=None)."""
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return offline(get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            # None: no badge that sends the document to validator.swagger.io.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None}))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return offline(get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png", with_google_fonts=False))


def follow_the_contract(app: FastAPI, max_records: int) -> None:
    """Make `app`'s OpenAPI document the champion's: rebuilt when its contract changes."""
    def openapi() -> dict[str, Any]:
        champion = getattr(app.state, "champion", None)
        requests = champion.current.requests if champion and champion.current else None
        if app.openapi_schema is None or app.state.openapi_contract is not requests:
            document = get_openapi(title=app.title, version=app.version,
                                   description=app.description, routes=app.routes)
            app.openapi_schema = document_request_bodies(document, requests, max_records)
            app.state.openapi_contract = requests
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
