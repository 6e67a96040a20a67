"""The service against a registry made by the real pipeline: predictions, validation errors,
limits, readiness, metadata, metrics, the prediction log, admin reload and registry outages."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlpipeline.config import Params, ServingParams, load_params
from mlpipeline.prediction_log import read_log
from serving.app import create_app
from tests.conftest import Project

pytestmark = pytest.mark.slow

RECORD = {"age": 41, "annual_income": 58000, "employment_years": None, "credit_score": 690,
          "loan_amount": 14000, "interest_rate": 12.5, "debt_to_income": 18.2,
          "open_accounts": 8, "delinquencies_2y": 0, "term": "36 months",
          "home_ownership": "RENT", "purpose": "car", "region": "north"}


def service_params(project: Project, tmp_path: Path, **serving: Any) -> Params:
    params = load_params(project.root)
    settings = ServingParams(**{"prediction_log_dir": str(tmp_path / "log"), **serving})
    return params.model_copy(update={"serving": settings})


def champion_version(params: Params) -> str:
    from mlpipeline.registry import CHAMPION, Registry

    return str(Registry(params).version_by_alias(CHAMPION).version)


@pytest.fixture
def client(trained_project: Project, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(service_params(trained_project, tmp_path, max_records=5,
                                    max_body_bytes=20_000), start_poller=False)
    with TestClient(app) as c:
        yield c


def test_single_and_batch_predictions(client: TestClient) -> None:
    params = client.app.state.params
    one = client.post("/predict", json=RECORD)
    assert one.status_code == 200
    body = one.json()
    assert body["model"] == {"name": "loan-default", "version": champion_version(params)}
    [prediction] = body["predictions"]
    assert prediction["label"] in (0, 1) and 0 <= prediction["probability"] <= 1
    batch = client.post("/predict", json=[RECORD, {**RECORD, "credit_score": 420,
                                                    "debt_to_income": 55}]).json()
    assert len(batch["predictions"]) == 2
    # A riskier applicant gets a higher probability of default.
    assert batch["predictions"][1]["probability"] > batch["predictions"][0]["probability"]
    assert batch["request_id"] != body["request_id"]


@pytest.mark.parametrize("change, field, kind", [
    ({"age": "41"}, "age", "float_type"),  # a number as text
    ({"age": True}, "age", "float_type"),
    ({"region": "atlantis"}, "region", "literal_error"),
    ({"age": 130}, "age", "less_than_equal"),
    ({"annual_income": -5}, "annual_income", "greater_than_equal"),
    ({"age": None}, "age", "float_type"),  # nullable only where the schema allows nulls
    ({"model_uri": "models:/other/1"}, "model_uri", "extra_forbidden"),
    ({"term": None, "__drop__": "term"}, "term", "missing"),
])
def test_bad_record_gets_422_naming_record_and_field(client: TestClient, change: dict,
                                                     field: str, kind: str) -> None:
    bad = {**RECORD, **change}
    if "__drop__" in change:
        bad.pop("__drop__")
        bad.pop(change["__drop__"])
    response = client.post("/predict", json=[RECORD, RECORD, bad])
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["record"], error["field"], error["type"]) == (2, field, kind)
    single = client.post("/predict", json=bad).json()["detail"][0]
    assert (single["record"], single["field"]) == (None, field)
    if change.get(field, ...) is None and kind != "missing":
        assert f"null is not allowed for {field!r}" in error["msg"]


def test_http_edges_get_the_status_that_names_the_problem(client: TestClient) -> None:
    """Chunked bodies over the limit, broken JSON, a wrong content type, batch limits in
    the OpenAPI document."""
    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for _ in range(200):
            yield json.dumps(RECORD).encode() + b","

    chunked = client.post("/predict", content=chunks(),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "serving.max_body_bytes" in chunked.json()["detail"]

    broken = client.post("/predict", content=b'[{"age": 41, "term":',
                         headers={"content-type": "application/json"})
    assert broken.status_code == 422
    [error] = broken.json()["detail"]
    assert error["record"] is None and error["position"] == 20
    assert "not valid JSON" in error["msg"] and "character 20" in error["msg"]

    text = client.post("/predict", content=json.dumps(RECORD),
                       headers={"content-type": "text/plain"})
    assert text.status_code == 415 and "application/json" in text.json()["detail"]

    document = client.get("/openapi.json").json()
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/PredictBody"}
    [batch] = [s for s in document["components"]["schemas"]["PredictBody"]["oneOf"]
               if s.get("type") == "array"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 5)  # serving.max_records


def test_docs_pages_draw_offline_from_assets_the_service_serves(client: TestClient) -> None:
    # Swagger UI and ReDoc must not load from a CDN: users run this offline and behind
    # firewalls. Every URL the pages name is a path on this service, and each one answers.
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        other_hosts = re.findall(r"""(?:https?:)?//[\w.-]+""", html.text)
        assert other_hosts == [], f"{page} names another host: {other_hosts}"
        named = set(re.findall(r"""(?:src|href|spec-url|url:)\s*=?\s*["'](/[^"']*)["']""",
                               html.text))
        scripts = {path for path in named if path.endswith(".js")}
        assert scripts and "/openapi.json" in named, f"{page} names {sorted(named)}"
        for path in sorted(named):
            asset = client.get(path)
            assert asset.status_code == 200 and len(asset.content) > 100, f"{page}: {path}"
        # The browser is told to load nothing from another host (ReDoc's sidebar logo).
        policy = html.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "//" not in policy
    swagger = client.get("/docs").text
    assert '"validatorUrl": null' in swagger  # no badge fetched from validator.swagger.io


def test_limits_answer_422_for_records_and_413_for_bytes(client: TestClient) -> None:
    too_many = client.post("/predict", json=[RECORD] * 6)
    [error] = too_many.json()["detail"]
    assert too_many.status_code == 422 and error["type"] == "too_long"
    assert "limit is 5 (serving.max_records)" in error["msg"]
    too_big = client.post("/predict", content=json.dumps([RECORD] * 200),
                          headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and "20000 bytes" in too_big.json()["detail"]
    assert client.post("/predict", json=[]).status_code == 422


HUGE = "1" + "0" * 400  # an integer no float can hold


def shaped(shape: str, age: str, field: str = "age") -> tuple[str, str]:
    """(path, body) of one record whose `field` is the literal `age`, in each payload shape."""
    fields = {**RECORD, field: "AGE"}
    record = json.dumps(fields)
    row = json.dumps(list(fields.values()))
    columns = json.dumps({name: [value] for name, value in fields.items()})
    body = {"predict": record,
            "dataframe_records": f'{{"dataframe_records": [{record}]}}',
            "instances": f'{{"instances": [{record}]}}',
            "inputs": f'{{"inputs": [{record}]}}',
            "dataframe_split": f'{{"dataframe_split": {{"columns": {json.dumps(list(fields))}, '
                               f'"data": [{row}]}}}}',
            "inputs as columns": f'{{"inputs": {columns}}}'}[shape]
    return ("/predict" if shape == "predict" else "/invocations"), body.replace('"AGE"', age)


SHAPES = ["predict", "dataframe_records", "instances", "inputs", "dataframe_split",
          "inputs as columns"]


@pytest.mark.parametrize("age", [HUGE, "-" + HUGE, HUGE + ".5", "1e400", "-1e400", "Infinity",
                                 "-Infinity", "NaN"])
@pytest.mark.parametrize("shape", SHAPES)
def test_an_overflowing_or_non_finite_number_is_a_422_naming_the_field(
        client: TestClient, shape: str, age: str) -> None:
    path, body = shaped(shape, age)
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert (error["record"] in (0, None), error["field"]) == (True, "age")
    assert error["type"] in ("float_type", "finite_number")


@pytest.mark.parametrize("shape", SHAPES)
def test_a_value_the_log_could_not_store_is_a_422_and_later_traffic_is_logged(
        trained_project: Project, tmp_path: Path, shape: str) -> None:
    """A lone surrogate ("\\ud800") parses as JSON but no UTF-8 writer takes it: it stopped
    the log's writer for good on the column paths. An id over 128 characters, or an integer
    of 401 (or 5,000) digits, is not an id either. Each is refused naming the field, on every
    payload path, and what comes after is served and logged."""
    params = service_params(trained_project, tmp_path, log_flush_records=1)
    with TestClient(create_app(params, start_poller=False)) as c:
        for field, literal in (("application_id", '"\\ud800"'), ("region", '"\\udfff"'),
                               ("application_id", '"a\\ud800b"'),
                               ("application_id", "1" + "0" * 400),
                               ("application_id", "9" * 5000)):
            path, body = shaped(shape, literal, field)
            response = c.post(path, content=body, headers={"content-type": "application/json"})
            detail = response.json().get("detail")
            if len(literal) > 4300:  # past what Python reads as a number: no field is named
                assert response.status_code == (422 if path == "/predict" else 400)
                assert "more than 4,300 digits" in response.text
                continue
            assert response.status_code == 422, (field, literal[:20], response.text)
            assert [(e["record"] in (0, None), e["field"]) for e in detail] == [(True, field)]
        path, body = shaped(shape, '"app-1"', "application_id")
        assert c.post(path, content=body,
                      headers={"content-type": "application/json"}).status_code == 200
        assert c.get("/ready").json()["prediction_log"]["state"] == "writing"
    log = read_log(Path(params.serving.prediction_log_dir))
    assert log["application_id"].tolist() == ["app-1"]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_replayed_row_with_its_time_column_is_answered_and_the_time_logged(
        trained_project: Project, tmp_path: Path, shape: str) -> None:
    """A batch row replayed as a request still carries the time column: it was a 422
    ("application_date: Extra inputs are not permitted") while the id was taken. Both are
    logged as text and never scored; any other extra column is still refused."""
    params = service_params(trained_project, tmp_path)
    time_column = params.schema.time_column
    with TestClient(create_app(params, start_poller=False)) as c:
        answers = []
        for literal in ('"2026-01-05 08:12:00"', "1767600720000"):  # text; pandas' epoch ms
            path, body = shaped(shape, literal, time_column)
            response = c.post(path, content=body,
                              headers={"content-type": "application/json"})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        assert answers[0] == answers[1] or shape == "predict"  # the time changes no answer
        path, body = shaped(shape, '"a note"', "notes")
        refused = c.post(path, content=body, headers={"content-type": "application/json"})
        assert refused.status_code == 422
        assert [(e["field"], e["type"]) for e in refused.json()["detail"]] == [
            ("notes", "extra_forbidden")]
        record = c.get("/openapi.json").json()["components"]["schemas"]["Record"]
        assert time_column in record["properties"] and time_column not in record["required"]
    log = read_log(Path(params.serving.prediction_log_dir))
    assert log[time_column].tolist() == ["2026-01-05 08:12:00", "1767600720000"]
    assert log["probability"].nunique() == 1


def test_ready_says_when_the_log_writer_stopped(client: TestClient) -> None:
    assert client.post("/predict", json=RECORD).status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["prediction_log"]["state"] == "writing"
    client.app.state.prediction_log.close()  # what a writer that died would look like
    assert client.post("/predict", json=RECORD).status_code == 200  # still served ...
    stopped = client.get("/ready")  # ... but not logged: out of the load balancer
    assert stopped.status_code == 503 and "writer stopped" in stopped.json()["reason"]
    metrics = client.get("/metrics").text
    assert 'prediction_log_records_failed{reason="writer_stopped"} 1.0' in metrics


@pytest.mark.parametrize("path, depth, status, message", [
    ("/predict", 300, 422, "too deeply: a record needs 2 levels, the parser stops at 200"),
    ("/predict", 5000, 422, "too deeply: a record needs 2 levels, the parser stops at 200"),
    ("/invocations", 1024, 400, "too deeply: a scoring payload needs 4 levels"),
    ("/invocations", 5000, 400, "too deeply: a scoring payload needs 4 levels"),
])
def test_nesting_past_the_documented_depth_is_refused_by_name(
        client: TestClient, path: str, depth: int, status: int, message: str) -> None:
    nested = "[" * depth + "]" * depth
    body = nested if path == "/predict" else f'{{"inputs": {nested}}}'
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and message in response.text
    # With a NaN first, orjson stops there and the standard parser meets the depth.
    nan = f'{{"params": {{"a": NaN}}, "inputs": {"[" * 1000 + "]" * 1000}}}'
    answer = client.post("/invocations", content=nan,
                         headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "too deeply" in answer.text


def test_what_the_document_forbids_in_a_payload_is_refused(client: TestClient) -> None:
    """schemathesis --checks all (ST201) found these accepted: an unlisted parameter, a null
    `params`, a `dataframe_split` index that is not a list."""
    response = client.post("/invocations", json={"dataframe_records": [RECORD],
                                                 "params": {"predict_method": "predict",
                                                            "temperature": 0.2}})
    assert response.status_code == 400
    assert response.json()["message"] == ("params 'temperature' not taken: the only parameter "
                                          "is predict_method")
    null = client.post("/invocations", json={"dataframe_records": [RECORD], "params": None})
    assert null.status_code == 400 and null.json()["message"] == ("`params` must be a JSON "
                                                                  "object")
    split = {"columns": list(RECORD), "data": [list(RECORD.values())], "index": {}}
    index = client.post("/invocations", json={"dataframe_split": split})
    assert index.status_code == 400 and "index must be a list" in index.json()["message"]


def test_no_champion_yet_means_not_ready_and_503(trained_project: Project,
                                                 tmp_path: Path) -> None:
    params = service_params(trained_project, tmp_path)
    params = params.model_copy(update={"mlflow": params.mlflow.model_copy(
        update={"registered_model": "not-trained-yet"})})
    with TestClient(create_app(params, start_poller=False)) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and "no champion yet" in ready.json()["reason"]
        predict = c.post("/predict", json=RECORD)
        assert predict.status_code == 503 and "no champion yet" in predict.json()["detail"]


def test_model_endpoint_matches_the_registry(client: TestClient) -> None:
    from mlpipeline.registry import Registry

    params = client.app.state.params
    lineage = Registry(params).lineage(champion_version(params))
    info = client.get("/model").json()
    for key in ("version", "run_id", "data_version", "training_window", "git_commit", "gate"):
        assert info[key] == lineage[key], key
    assert info["metrics"]["roc_auc"] == pytest.approx(lineage["metrics"]["roc_auc"])
    assert info["runtime"] == "onnxruntime"  # the random forest ships a verified ONNX twin


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    client.post("/predict", json=[RECORD, RECORD])
    client.post("/predict", json={**RECORD, "age": "x"})
    client.get("/health")
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value
                for s in families["http_requests"].samples if s.name == "http_requests_total"}
    assert requests[("/predict", "200")] == 1 and requests[("/predict", "422")] == 1
    assert requests[("/health", "200")] == 1
    latency = [s for s in families["http_request_duration_seconds"].samples
               if s.name.endswith("_count") and s.labels["endpoint"] == "/predict"]
    assert latency and latency[0].value == 2
    predicted = sum(s.value for s in families["predictions"].samples
                    if s.name == "predictions_total")
    assert predicted == 2
    [info] = families["served_model_info"].samples
    assert info.labels["version"] == champion_version(client.app.state.params)


def test_prediction_log_holds_every_served_record(trained_project: Project,
                                                  tmp_path: Path) -> None:
    params = service_params(trained_project, tmp_path, log_flush_records=7,
                            log_flush_seconds=60)
    request_ids = []
    with TestClient(create_app(params, start_poller=False)) as c:
        for size in (1, 3, 5, 2, 1):
            request_ids += [c.post("/predict", json=[RECORD] * size).json()["request_id"]] * size
        c.post("/predict", json={**RECORD, "age": "bad"})  # refused: not logged
    log = read_log(Path(params.serving.prediction_log_dir))  # after a clean shutdown
    assert len(log) == 12
    assert sorted(log["request_id"]) == sorted(request_ids)
    assert set(log.columns) >= {*RECORD, "prediction", "probability", "model_version",
                                "served_at"}
    assert log["credit_score"].iloc[0] == 690 and log["region"].iloc[0] == "north"


def test_a_record_may_carry_its_id_which_is_logged_and_never_scored(
        trained_project: Project, tmp_path: Path) -> None:
    """schema.id_column (application_id): optional per record, any short text or integer,
    logged as text beside the prediction, and no input of the model."""
    params = service_params(trained_project, tmp_path)
    with TestClient(create_app(params, start_poller=False)) as c:
        answer = c.post("/predict", json=[{**RECORD, "application_id": "20260105-00001"},
                                          {**RECORD, "application_id": 77},
                                          {**RECORD, "application_id": 5.0}, RECORD])
        assert answer.status_code == 200
        assert len({p["probability"] for p in answer.json()["predictions"]}) == 1
        split = {"columns": [*RECORD, "application_id"],
                 "data": [[*RECORD.values(), "a-2"], [*RECORD.values(), None]]}
        assert c.post("/invocations", json={"dataframe_split": split}).status_code == 200
        for bad in ("", 1.5, True, "x" * 129):
            refused = c.post("/predict", json=[RECORD, {**RECORD, "application_id": bad}])
            assert refused.status_code == 422, bad
            assert {(e["record"], e["field"]) for e in refused.json()["detail"]} == {
                (1, "application_id")}
        split["data"][1][-1] = 1.5
        refused = c.post("/invocations", json={"dataframe_split": split})
        assert [(e["record"], e["field"]) for e in refused.json()["detail"]] == [
            (1, "application_id")]
        record = c.get("/openapi.json").json()["components"]["schemas"]["Record"]
        assert "application_id" in record["properties"]
        assert "application_id" not in record["required"]
        # The document bounds an integer id as the service does (128 characters as text):
        # a fuzzer once sent 1.797e308, an integer by JSON Schema, that the service refused.
        integer = next(kind for kind in record["properties"]["application_id"]["anyOf"]
                       if kind.get("type") == "integer")
        for edge in (integer["minimum"], integer["maximum"]):
            assert c.post("/predict", json={**RECORD, "application_id": edge}
                          ).status_code == 200, edge
        assert c.post("/predict", json={**RECORD, "application_id": integer["maximum"] + 1}
                      ).status_code == 422
    log = read_log(Path(params.serving.prediction_log_dir))
    assert log["application_id"].tolist()[:6] == ["20260105-00001", "77", "5", None, "a-2",
                                                  None]


def test_admin_reload_needs_a_configured_token(client: TestClient,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.post("/admin/reload").status_code == 403
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", "s3cret")
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    for bare in ("s3cret", "Basic s3cret", "Bearers3cret", "Token s3cret", " s3cret"):
        answer = client.post("/admin/reload", headers={"Authorization": bare})
        assert answer.status_code == 401 and "Bearer <token>" in answer.json()["detail"], bare
    assert client.post("/admin/reload",
                       headers={"Authorization": "bearer s3cret"}).status_code == 200
    ok = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["outcome"] == "unchanged"


def test_unreachable_registry_keeps_the_current_model(
        client: TestClient, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import mlflow

    monkeypatch.setenv("SERVING_ADMIN_TOKEN", "s3cret")
    champion = client.app.state.champion
    version, reachable_client = champion.current.version, champion.client
    # A real client for a tracking server that is not there (nothing listens on port 9).
    champion.client = mlflow.MlflowClient(tracking_uri="http://127.0.0.1:9",
                                          registry_uri="http://127.0.0.1:9")
    admin = {"Authorization": "Bearer s3cret"}
    with caplog.at_level("INFO", logger="serving.champion"):
        for _ in range(4):  # four polls' worth of failures
            response = client.post("/admin/reload", headers=admin).json()
            assert response["outcome"] == "error" and response["version"] == version
    # Said once, not once per check.
    said = [r.getMessage()[:22] for r in caplog.records if r.name == "serving.champion"]
    assert said == ["champion check failed,"]
    assert client.post("/predict", json=RECORD).json()["model"]["version"] == version
    assert client.get("/model").json()["last_reload_error"]
    # Still ready (the model in memory serves on), and it says the registry is unreachable.
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["registry"]["reachable"] is False
    assert ready.json()["registry"]["failing_since"]
    metrics = client.get("/metrics").text
    assert 'model_reload_checks_total{outcome="error",trigger="admin"} 4.0' in metrics
    assert "model_registry_reachable 0.0" in metrics

    caplog.clear()
    champion.client = reachable_client  # the registry is back
    with caplog.at_level("INFO", logger="serving.champion"):
        assert client.post("/admin/reload", headers=admin).json()["outcome"] == "unchanged"
    assert "work again" in caplog.text
    assert client.get("/ready").json()["registry"] == {"reachable": True, "error": None,
                                                      "failing_since": None}
    assert "model_registry_reachable 1.0" in client.get("/metrics").text


def signed_headers(secret: str, body: bytes, at: float, delivery: str = "d-1"
                   ) -> dict[str, str]:
    """Headers as MLflow's webhook delivery signs them (mlflow/webhooks/delivery.py)."""
    import base64
    import hashlib
    import hmac

    timestamp = str(int(at))
    digest = hmac.new(secret.encode(), f"{delivery}.{timestamp}.".encode() + body,
                      hashlib.sha256).digest()
    return {"X-MLflow-Signature": "v1," + base64.b64encode(digest).decode(),
            "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": timestamp,
            "Content-Type": "application/json"}


def alias_event(name: str = "loan-default", alias: str = "champion", version: str = "1"
                ) -> bytes:
    return json.dumps({"entity": "model_version_alias", "action": "created",
                       "timestamp": "2026-11-25T00:00:00+00:00",
                       "data": {"name": name, "alias": alias, "version": version}}).encode()


def test_webhook_reloads_only_on_a_valid_signature(client: TestClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    body = alias_event()
    now = time.time()
    assert client.post("/admin/webhook", content=body,
                       headers=signed_headers("k", body, now)).status_code == 403  # no secret
    monkeypatch.setenv("SERVING_WEBHOOK_SECRET", "whsec")
    refused = [
        {"Content-Type": "application/json"},  # unsigned
        signed_headers("other", body, now),  # wrong secret
        signed_headers("whsec", body, now - 3600),  # replayed an hour later
        {**signed_headers("whsec", body, now), "X-MLflow-Delivery-Id": "d-2"},  # tampered
    ]
    checks = 'model_reload_checks_total{outcome="unchanged",trigger="webhook"}'
    for headers in refused:
        response = client.post("/admin/webhook", content=body, headers=headers)
        assert response.status_code == 401, headers
    assert checks not in client.get("/metrics").text  # nothing was reloaded
    other_model = alias_event(name="another-model")
    ignored = client.post("/admin/webhook", content=other_model,
                          headers=signed_headers("whsec", other_model, now, "d-other"))
    assert ignored.status_code == 202 and ignored.json()["outcome"] == "ignored"
    accepted = client.post("/admin/webhook", content=body,
                           headers=signed_headers("whsec", body, now))
    assert accepted.status_code == 202 and accepted.json()["outcome"] == "reloading"
    replayed = client.post("/admin/webhook", content=body,
                           headers=signed_headers("whsec", body, now))  # within its window
    assert replayed.status_code == 409 and "already accepted" in replayed.json()["detail"]
    for n, junk in enumerate((b"not json", b"\xff\xfe", b"[" * 10_000, b"")):
        answer = client.post("/admin/webhook", content=junk,
                             headers=signed_headers("whsec", junk, now, f"junk-{n}"))
        assert answer.status_code == 400 and "not JSON" in answer.json()["detail"], junk[:10]
    deadline = time.monotonic() + 10
    while f"{checks} 1.0" not in client.get("/metrics").text:
        assert time.monotonic() < deadline, "the signed webhook did not trigger a check"
        time.sleep(0.05)


def test_replicas_sharing_a_log_folder_never_collide(tmp_path: Path) -> None:
    from serving.prediction_log import PredictionLog

    # Two replicas in one process: same pid, same clock, one folder (a shared volume).
    logs = [PredictionLog(tmp_path, flush_records=1, flush_seconds=60, replica=name)
            for name in ("replica-1", "replica/2")]
    for i, log in enumerate(logs):
        for n in range(3):
            columns = {name: [value] for name, value in RECORD.items()}
            log.append({**columns, "age": [20 + 10 * i + n]},
                       {"prediction": [0], "probability": [0.1]}, "1", f"{i}-{n}")
            # one part each: the writer takes whatever has gathered when it wakes
            deadline = time.monotonic() + 10
            while log.state()["written_records"] < n + 1:
                assert time.monotonic() < deadline, log.state()
                time.sleep(0.01)
    for log in logs:
        log.close()
    parts = sorted(p.name for p in tmp_path.glob("date=*/*.parquet"))
    assert len(parts) == 6
    assert sum("-replica-1-" in p for p in parts) == 3
    assert sum("-replica_2-" in p for p in parts) == 3  # a name is made safe for a file
    assert sorted(read_log(tmp_path)["age"]) == [20, 21, 22, 30, 31, 32]


def test_a_part_spanning_a_swap_to_another_contract_keeps_every_column(tmp_path: Path) -> None:
    """Requests before and after a swap to a version with one more feature can land in one
    part: each feature is a column, null where a request did not carry it."""
    from serving.prediction_log import PredictionLog

    log = PredictionLog(tmp_path, flush_records=100, flush_seconds=60)
    old = {name: [value, value] for name, value in RECORD.items()}
    log.append(old, {"prediction": [0, 0], "probability": [0.1, 0.2]}, "1", "before")
    log.append({**old, "has_cosigner": ["yes", "no"]},
               {"prediction": [1, 0], "probability": [0.9, 0.3]}, "2", "after")
    log.close()
    assert len(list(tmp_path.glob("date=*/*.parquet"))) == 1  # one part across the swap
    logged = read_log(tmp_path)
    assert len(logged) == 4 and list(logged["model_version"]) == ["1", "1", "2", "2"]
    assert list(logged["has_cosigner"]) == [None, None, "yes", "no"]
    assert list(logged["age"]) == [41] * 4


def test_loaded_model_is_frozen_out_of_the_gc_and_a_replaced_one_is_freed(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full collections must not rescan the model on every request burst (the p99 tail),
    and freezing must not keep a swapped-out model alive."""
    import gc
    import weakref

    assert gc.get_freeze_count() > 0  # start-up loaded the champion and froze it
    champion = client.app.state.champion
    replaced = weakref.ref(champion.current.model)
    champion.current = None  # the next check loads the champion again: a swap
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", "s3cret")
    reload = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert reload.json()["outcome"] == "loaded"
    assert replaced() is None, "the replaced model is still alive"
    assert gc.get_freeze_count() > 0
    assert client.post("/predict", json=RECORD).status_code == 200


@contextlib.contextmanager
def uvicorn_in_thread(app: Any) -> Iterator[int]:
    """The app under a real uvicorn on 127.0.0.1, in this process; yields its port."""
    import threading

    import uvicorn

    from serving.connections import uvicorn_options
    from serving.launch import free_port

    port = free_port()
    options = {**uvicorn_options(app.state.params.serving), "log_level": "warning"}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def raw_http(port: int, request: bytes, timeout: float) -> bytes:
    """Send `request` as is and read until the server closes or answers in full."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            data = conn.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_stalled_and_chunked_bodies_on_a_real_server(trained_project: Project,
                                                     tmp_path: Path) -> None:
    """A client that stops before its Content-Length gets 408 after the read timeout (not
    a connection held forever); a chunked body over the limit gets 413."""
    app = create_app(service_params(trained_project, tmp_path, max_body_bytes=20_000,
                                    read_timeout_seconds=1.0), start_poller=False)
    with uvicorn_in_thread(app) as port:
        started = time.monotonic()
        stalled = raw_http(port, b"POST /predict HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: application/json\r\nContent-Length: 500"
                                 b"\r\n\r\n" + json.dumps(RECORD)[:100].encode(), timeout=20)
        waited = time.monotonic() - started
        assert stalled.startswith(b"HTTP/1.1 408"), stalled[:200]
        assert b"serving.read_timeout_seconds" in stalled and 0.9 < waited < 15

        chunk = (json.dumps([RECORD] * 50)).encode()
        body = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(3))
        too_big = raw_http(port, b"POST /predict HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n",
                           timeout=20)
        assert too_big.startswith(b"HTTP/1.1 413"), too_big[:200]
        # The server still answers after both.
        ok = raw_http(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      timeout=20)
        assert ok.startswith(b"HTTP/1.1 200")


def test_half_sent_requests_are_closed_and_open_connections_are_bounded(
        trained_project: Project, tmp_path: Path) -> None:
    """Connections whose headers never finish held a file descriptor each for good (2,000
    were all open after 30 s): now 408 and closed after serving.header_timeout_seconds, and
    past serving.max_connections open, 503 and closed at once."""
    app = create_app(service_params(trained_project, tmp_path, header_timeout_seconds=1.0,
                                    max_connections=20), start_poller=False)
    with uvicorn_in_thread(app) as port:
        started = time.monotonic()
        held = []
        for _ in range(30):
            conn = socket.create_connection(("127.0.0.1", port), timeout=20)
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
            held.append(conn)
        answers = []
        for conn in held:
            with conn:
                answer = b""
                with contextlib.suppress(ConnectionResetError):  # closed with bytes unread
                    while data := conn.recv(65536):  # until the server closes it
                        answer += data
                answers.append(answer.split(b"\r\n")[0] or b"reset")
        waited = time.monotonic() - started
        assert answers[:20] == [b"HTTP/1.1 408 Request Timeout"] * 20
        assert set(answers[20:]) <= {b"HTTP/1.1 503 Service Unavailable", b"reset"}
        assert 0.9 < waited < 15
        # A kept-alive connection's next request is held to the same limit.
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /heal")
            answer = b""
            while data := conn.recv(65536):
                answer += data
        assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer
        assert b"serving.header_timeout_seconds" in answer


def test_a_body_with_many_problems_gets_the_first_few_and_a_count(client: TestClient) -> None:
    """100,000 unknown keys in 1.68 MB got a 13.2 MB answer listing every one."""
    extra = {f"unknown_{i}": i for i in range(500)}
    split = {"columns": [*RECORD, *extra], "data": [[*RECORD.values(), *extra.values()]]}
    for path, body in (("/predict", {**RECORD, **extra}),
                       ("/invocations", {"dataframe_records": [{**RECORD, **extra}]}),
                       ("/invocations", {"dataframe_split": split})):
        response = client.post(path, json=body)
        assert response.status_code == 422, path
        detail = response.json()["detail"]
        assert len(detail) == 21 and {e["type"] for e in detail[:20]} == {"extra_forbidden"}
        assert detail[-1]["type"] == "too_many_errors"
        assert detail[-1]["msg"].startswith("480 more problem(s) not listed")
        assert "serving.max_errors" in detail[-1]["msg"] and len(response.content) < 5000


def test_mlflow_scoring_protocol_with_mlflow_own_client(trained_project: Project,
                                                        tmp_path: Path) -> None:
    """/invocations answers MLflow's scoring client and every payload shape of
    `mlflow models serve` with the same predictions as /predict, validates as strictly,
    and logs what it served."""
    import mlflow
    import pandas as pd
    import requests
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from mlpipeline.config import TEST_SPLIT

    params = service_params(trained_project, tmp_path)
    test = pd.read_parquet(params.path(TEST_SPLIT))[params.schema.feature_names]
    missing = test["employment_years"].isna()
    features = pd.concat([test[missing].head(5), test[~missing].head(15)])  # NaN travels too
    records = json.loads(features.to_json(orient="records"))
    with uvicorn_in_thread(create_app(params, start_poller=False)) as port:
        url = f"http://127.0.0.1:{port}"
        scoring = ScoringServerClient("127.0.0.1", port)
        scoring.wait_server_ready(timeout=30)
        assert scoring.get_version() == mlflow.__version__
        expected = requests.post(f"{url}/predict", json=records).json()["predictions"]
        labels = [p["label"] for p in expected]
        served = scoring.invoke(features).get_predictions(predictions_format="ndarray")
        assert served.tolist() == labels  # dataframe_split, as MLflow's client sends it

        def invoke(payload: Any) -> requests.Response:  # NaN as NaN, as pandas clients send
            return requests.post(f"{url}/invocations", data=json.dumps(payload),
                                 headers={"Content-Type": "application/json"})

        columns = {name: [r[name] for r in records] for name in features.columns}
        for payload in ({"dataframe_records": records}, {"instances": records},
                        {"inputs": records}, {"inputs": columns}):
            response = invoke(payload)
            assert response.json() == {"predictions": labels}, list(payload)
            assert response.headers["X-Model-Version"] == champion_version(params)
        csv = requests.post(f"{url}/invocations", data=features.to_csv(index=False),
                            headers={"Content-Type": "text/csv"})
        assert csv.json() == {"predictions": labels}
        proba = invoke({"dataframe_records": records,
                        "params": {"predict_method": "predict_proba"}}).json()["predictions"]
        assert [round(row[1], 6) for row in proba] == [p["probability"] for p in expected]

        bad = features.to_dict(orient="split")
        bad["data"][3][bad["columns"].index("age")] = "41"
        refused = invoke({"dataframe_split": bad})
        assert refused.status_code == 422
        [error] = refused.json()["detail"]
        assert (error["record"], error["field"], error["type"]) == (3, "age", "float_type")
        shapeless = invoke({"rows": records})
        assert shapeless.status_code == 400 and "dataframe_split" in shapeless.json()["message"]
        assert invoke({"dataframe_records": []}).status_code == 422
        assert requests.post(f"{url}/invocations", data="x",
                             headers={"Content-Type": "text/plain"}).status_code == 415
        assert requests.get(f"{url}/ping").status_code == 200
    logged = read_log(tmp_path / "log")
    assert len(logged) == 20 * 8  # /predict, the client, four JSON shapes, CSV, predict_proba


def test_a_version_logged_without_a_contract_is_served_by_params_schema_or_refused(
        tmp_path: Path) -> None:
    """Versions registered before models carried their contract: the pipeline's own
    params.yaml still serves them (its schema and threshold); a replica given only the
    registry settings refuses them, naming the file and the fix."""
    from mlpipeline.config import ServiceConfig
    from mlpipeline.schema import ModelContract
    from serving.champion import Champion
    from tests.conftest import REPO

    params = load_params(REPO).model_copy(update={"root": tmp_path})
    missing = tmp_path / "extra_files" / "contract.json"
    assert Champion(params)._contract(missing, "3") == ModelContract(
        schema=params.schema, threshold=params.evaluate.threshold)
    with pytest.raises(ValueError, match=r"version 3 carries no contract\.json.*retrain"):
        Champion(ServiceConfig(root=tmp_path))._contract(missing, "3")


def test_a_model_is_swapped_in_already_naming_what_loaded_it(trained_project: Project,
                                                             tmp_path: Path) -> None:
    """The check runs on a worker thread while the event loop goes on answering `/model`:
    the trigger must be in the model's metadata at the swap, not written after it (CI saw
    a replica answer v1 without `loaded_by`)."""
    from serving.champion import Champion

    champion = Champion(service_params(trained_project, tmp_path))
    assert champion.check("webhook") == "loaded"
    assert champion.current is not None
    assert champion.current.metadata["loaded_by"] == "webhook"
    assert champion.current.version == champion_version(champion.params)
    assert champion.check("poll") == "unchanged"
    assert champion.current.metadata["loaded_by"] == "webhook"


def test_loading_a_version_leaves_nothing_in_the_temp_dir(
        trained_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica loads each new champion (and every shadow) into a scratch folder: it is
    removed once the model is in memory, and when the load fails (a leftover a load each
    poll would pile up; 6,000 empty folders were found in /tmp)."""
    import tempfile

    from serving.champion import Champion

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    champion = Champion(service_params(trained_project, tmp_path))
    assert champion.load().version == champion_version(champion.params)
    broken = champion.client.get_model_version(champion.name, champion_version(champion.params))
    monkeypatch.setattr(champion, "_contract", lambda *args: (_ for _ in ()).throw(
        ValueError("no contract")))
    with pytest.raises(ValueError, match="no contract"):
        champion._load(broken)
    assert list(scratch.iterdir()) == []


def test_a_shadow_scores_every_request_off_the_request_path_and_both_answers_are_logged(
        trained_project: Project, tmp_path: Path) -> None:
    """A service started under promotion.mode auto shadows the challenger the registry tags
    `shadow: true` within one poll: it answers each request too, on its own thread; held
    there, it delays no answer, and once free it logs every one. A newer shadow supersedes
    it with counters from zero; a decision stops the shadow, with no restart."""
    from mlpipeline.registry import Registry

    project = Project(tmp_path / "copy")
    shutil.copytree(trained_project.root, project.root, symlinks=True)
    params = service_params(project, tmp_path, log_flush_seconds=60, poll_seconds=0.2)
    assert params.promotion.mode == "auto"  # the replica's params do not decide
    registry = Registry(params)
    run = json.loads(project.read("reports/run.json"))
    champion = champion_version(params)
    held = threading.Event()

    def shadow_state(c: TestClient, version: str | None) -> dict[str, Any] | None:
        """/model's shadow once it is `version` (None: no shadow), polled to a deadline."""
        deadline = time.monotonic() + 30
        while True:
            state = c.get("/model").json()["shadow"]
            if (state or {}).get("version") == version:
                return state
            assert time.monotonic() < deadline, f"shadow {state} is not v{version} after 30 s"
            time.sleep(0.05)

    with TestClient(create_app(params)) as c:
        assert c.get("/model").json()["shadow"] is None
        waiting = registry.register(run)
        registry.hold(waiting, shadow=True, replaced=None)  # what register does in shadow
        shadow = shadow_state(c, waiting)  # the running service follows the registry
        assert shadow is not None and shadow["since"]
        model = c.app.state.champion.shadow  # type: ignore[attr-defined]
        scores = model.scores
        object.__setattr__(model, "scores", lambda columns: (held.wait(), scores(columns))[1])
        ids = []
        for size in (1, 3, 2):
            answer = c.post("/predict", json=[RECORD] * size)
            assert answer.status_code == 200  # answered while the shadow is held
            assert answer.json()["model"]["version"] == champion
            ids += [answer.json()["request_id"]] * size
        requests = c.get("/model").json()["shadow"]["requests"]
        assert requests["scored"] == 0 and requests["pending"] in (2, 3)
        held.set()
        deadline = time.monotonic() + 30
        while c.get("/model").json()["shadow"]["requests"]["scored"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        newer = registry.register(run)
        registry.hold(newer, shadow=True,
                      replaced=registry.client.get_model_version(registry.name, waiting))
        state = shadow_state(c, newer)
        assert state is not None and state["requests"] == {
            "scored": 0, "dropped": 0, "failed": 0, "pending": 0}  # its own, from zero
        registry.reject(newer, "decided")
        assert shadow_state(c, None) is None  # decided: the shadow stops
    log_dir = Path(params.serving.prediction_log_dir)
    served = read_log(log_dir)  # what monitoring reads: the champion's answers only
    assert sorted(served["request_id"]) == sorted(ids)
    assert set(served["model_version"]) == {champion}
    both = read_log(log_dir, shadow=True)
    shadowed = both[both["role"] == "shadow"]
    assert sorted(shadowed["request_id"]) == sorted(ids)  # every request, once
    assert set(shadowed["model_version"]) == {waiting}
    pairs = served.merge(shadowed, on=["request_id", "credit_score", "age"],
                         suffixes=("", "_shadow"))
    assert (pairs["probability"] == pairs["probability_shadow"]).all()  # the same model here
