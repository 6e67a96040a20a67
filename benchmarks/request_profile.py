"""Where one request's time goes: one-record `POST /invocations` through the service's ASGI
app in process (no HTTP, no load generator), beside the floor app (benchmarks/floor_app.py)
and a bare parse-and-return POST, and the time spent in each step of the service's path.

The apps are called directly, as uvicorn calls them, so the figures are stable on a noisy
machine: the total per request for each app (median and range of ROUNDS interleaved rounds),
then a second pass with each step wrapped in a timer (a wrapper adds ~0.3 us to its step).
Steps the code does not have (an older checkout) are left out.

    python benchmarks/request_profile.py [--requests N]   (in a project folder, after make demo)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROUNDS = 5
# (module, attribute path, label, coroutine?): the service's path, top to bottom
STEPS = [
    ("serving.metrics", "MetricsAndLimits.__call__", "middleware, all it wraps", True),
    ("serving.metrics", "MetricsAndLimits._read_body", "  body read under its timeout", True),
    ("serving.metrics", "MetricsAndLimits._header_problem", "  header checks", False),
    ("serving.metrics", "MetricsAndLimits._count", "  request counters", False),
    ("serving.routes.scoring", "invocations", "endpoint, all it calls", True),
    ("serving.scoring", "parse_payload", "  parse the payload", False),
    ("serving.routes.scoring", "served_model", "  the served model", False),
    ("serving.routes.scoring", "scored_inline", "  inline or thread", False),
    ("model", "requests.columns_valid", "  the column check", False),
    ("model", "scores", "  score (ONNX)", False),
    ("serving.routes.scoring", "record", "  answers, log, counts", False),
    ("task", "answers", "    answers", False),
    ("serving.prediction_log", "PredictionLog.append", "    log hand-off", False),
    ("task", "count", "    label counts", False),
    ("serving.routes.scoring", "next_request_id", "    request id", False),
]


def scope_for(path: str, body: bytes) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000), "state": {},
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]}


async def per_request_us(app: Any, path: str, body: bytes, requests: int) -> float:
    """Microseconds per request, `requests` in a row (after a warm-up)."""
    scope = scope_for(path, body)
    message = {"type": "http.request", "body": body, "more_body": False}
    statuses = set()

    async def receive() -> dict[str, Any]:
        return message

    async def send(sent: dict[str, Any]) -> None:
        if sent["type"] == "http.response.start":
            statuses.add(sent["status"])

    for _ in range(200):
        await app(dict(scope), receive, send)
    if statuses != {200}:
        raise SystemExit(f"{path} answered {statuses}")
    started = time.perf_counter()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / requests * 1e6


def timed(owner: Any, attribute: str, label: str, is_async: bool,
          spent: dict[str, float]) -> None:
    """Wrap owner.attribute so its time adds to spent[label]."""
    original = getattr(owner, attribute)
    if is_async:
        @functools.wraps(original)  # the same signature: FastAPI reads it
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started
    else:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started
    try:
        setattr(owner, attribute, wrapper)
    except AttributeError:  # a frozen dataclass (the loaded model, its contract)
        object.__setattr__(owner, attribute, wrapper)


def wrap_steps(model: Any, spent: dict[str, float]) -> list[str]:
    """Wrap every step this checkout has; the labels of those it has."""
    found = []
    for module_name, path, label, is_async in STEPS:
        owner: Any = {"model": model, "task": type(model.task)}.get(module_name)
        if owner is None:
            owner = importlib.import_module(module_name)
        *parents, attribute = path.split(".")
        try:
            for parent in parents:
                owner = getattr(owner, parent)
            getattr(owner, attribute)
        except AttributeError:
            continue
        timed(owner, attribute, label, is_async, spent)
        found.append(label)
    return found


async def profile(requests: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from floor_app import create_floor_app

    from mlpipeline.config import load_params
    from serving.app import create_app
    from serving.routes import scoring as scoring_routes

    params = load_params()
    body = single_record_body(params)
    service = create_app(params, start_poller=False)
    floor = create_floor_app(params)
    async with service.router.lifespan_context(service):
        totals: dict[str, list[float]] = {"this service": [], "floor app": [], "bare POST": []}
        for _ in range(ROUNDS):
            totals["this service"].append(
                await per_request_us(service, "/invocations", body, requests))
            totals["floor app"].append(await per_request_us(floor, "/invocations", body,
                                                            requests))
            totals["bare POST"].append(await per_request_us(floor, "/parse", body, requests))
        share = [f / s for f, s in zip(totals["floor app"], totals["this service"], strict=True)]
        beyond = [s - f for f, s in zip(totals["floor app"], totals["this service"],
                                        strict=True)]
        print(f"one-record /invocations in process, {requests} requests a round, {ROUNDS} "
              "interleaved rounds; us per request, median [range]")
        for label, values in totals.items():
            print(f"  {label}: {spread(values)}")
        print(f"  the service's share of the floor: {spread(share, 2)}; beyond the floor: "
              f"{spread(beyond)} us")

        spent: dict[str, float] = collections.defaultdict(float)
        model = service.state.champion.current
        labels = wrap_steps(model, spent)
        route: Any
        for route in service.router.routes:  # the route holds the endpoint it was given
            if getattr(route, "path", "") == "/invocations":
                route.endpoint = scoring_routes.invocations
                route.app = type(route)(route.path, scoring_routes.invocations,
                                        methods=["POST"]).app
        await per_request_us(service, "/invocations", body, 200)
        spent.clear()
        total = await per_request_us(service, "/invocations", body, requests)
        print(f"\nthe service's steps (timed, {total:.1f} us a request with the timers):")
        for label in labels:
            print(f"  {spent[label] / (requests + 200) * 1e6:6.1f} us  {label}")


def single_record_body(params: Any) -> bytes:
    import json

    import pandas as pd

    from mlpipeline.config import TEST_SPLIT

    frame = pd.read_parquet(params.path(TEST_SPLIT))[params.schema.feature_names].head(1)
    split = json.loads(frame.to_json(orient="split", index=False))
    return json.dumps({"dataframe_split": split}).encode()


def spread(values: list[float], digits: int = 1) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"[{min(values):.{digits}f}-{max(values):.{digits}f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="per app and round")
    asyncio.run(profile(parser.parse_args().requests))


if __name__ == "__main__":
    main()
