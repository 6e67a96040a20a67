"""Benchmark: this service vs `mlflow models serve` on the same champion, same machine, one run.

Both servers get the same requests on the same path: POST /invocations with MLflow's
`dataframe_split` payload. Measures, for single-record requests at concurrency 1 and 16:
requests/s, p50 and p99 latency; GET /ping (the HTTP stack alone); and batch throughput
(records/s) for 1,000-record requests against in-process predict on the same rows. Two
workers and a service with a shadow (the champion registered again as the challenger
awaiting approval, tagged `shadow: true`, in a copy of the embedded store, so the project's
registry is untouched) are measured at concurrency 16. Every server is up at once and they
take turns, in three rounds (A/B/C/D, A/B/C/D, ...): each figure is the median and range of
the rounds, each ratio taken within a round, with the load average. Then the floor (issue
35): the service beside benchmarks/floor_app.py (the same body parsed, the same ONNX twin
called, nothing else) and a bare parse-and-return POST, interleaved the same way. Each target
is marked met or MISSED, with the shortfall.
Load comes from wrk (Debian package `wrk`) when installed,
otherwise from a Python load generator (slower: it shares the two cores with the servers).

Run from the project folder after `make demo`: `make bench` (after `make demo TASK=regression`,
`make bench TASK=regression` benchmarks that task's champion; or `uv run python
benchmarks/serve_bench.py` in a project's folder).
Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from mlpipeline.config import TEST_SPLIT, load_params
from mlpipeline.onnx_export import frame_records
from serving.launch import free_port, wait_http_ok

BIN = Path(sys.executable).parent


def run_wrk(url: str, body: str | None, connections: int, seconds: int) -> dict[str, float]:
    """POST `body` (GET when None) from `connections` connections for `seconds`."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is not None:
            script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = '
                         f'"application/json"\nwrk.body = {json.dumps(body)}\n')
    threads = min(connections, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                          "--latency", "-s", script.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses under load:\n{out}")

    def latency(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": latency("50"), "p99": latency("99")}


def run_python(url: str, body: str | None, connections: int, seconds: int
               ) -> dict[str, float]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    payload = body.encode() if body is not None else None

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while time.monotonic() < stop:
            started = time.perf_counter()
            if payload is None:
                conn.request("GET", parts.path)
            else:
                conn.request("POST", parts.path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"{url}: HTTP {response.status}")
            latencies.append((time.perf_counter() - started) * 1e3)

    workers = [threading.Thread(target=worker) for _ in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    latencies.sort()
    return {"rps": len(latencies) / seconds, "p50": latencies[len(latencies) // 2],
            "p99": latencies[int(len(latencies) * 0.99)]}


# What each server is measured on, in every round: one record at 1 and 16 connections, the
# HTTP stack alone (GET /ping), 1,000-record requests; the variants only at 16 connections.
MEASURES = {"this service": ("c1", "ping", "c16", "batch"),
            "mlflow models serve": ("c1", "ping", "c16", "batch"),
            "this service, 2 workers": ("c16",),
            "this service, with a shadow": ("c16",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="per load run")
    args = parser.parse_args()
    params = load_params()
    load = run_wrk if shutil.which("wrk") else run_python
    print(f"load generator: {'wrk' if load is run_wrk else 'python (install wrk for less noise)'}")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": params.tracking_uri()}

    name = params.mlflow.registered_model
    from serving.champion import Champion

    champion = Champion(params)  # loads exactly what the service loads
    if champion.check() != "loaded":
        raise SystemExit(f"no champion to benchmark: {champion.not_ready_reason}")
    served = champion.current
    schema = params.schema
    test = pd.read_parquet(params.path(TEST_SPLIT))[schema.feature_names]
    one = test.head(1)
    batch = test.head(1000)

    def median_ms(call, repeat: int) -> float:
        for _ in range(5):
            call()
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1e3)
        return statistics.median(times)

    def floor(frame: pd.DataFrame, repeat: int) -> float:
        """In-process predict with the runtime the service uses (records in, probabilities out)."""
        rows = frame_records(frame, schema)
        columns = {name: [r[name] for r in rows] for name in schema.feature_names}
        return median_ms(lambda: served.scores(columns), repeat)

    # Both servers get the same requests on the same path: MLflow's scoring protocol, as
    # MLflow's own client sends a DataFrame (`dataframe_split`).
    single = json.dumps({"dataframe_split": json.loads(one.to_json(orient="split", index=False))})
    many = json.dumps({"dataframe_split": json.loads(batch.to_json(orient="split", index=False))})
    shadow_root = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    shadow_uri = shadow_store(params, shadow_root)
    servers = {  # label: command, base URL, health path, folder, environment
        "this service": ["-m", "serving"],
        "mlflow models serve": None,
        "this service, 2 workers": ["-m", "serving", "--workers", "2"],
        "this service, with a shadow": ["-m", "serving"] if shadow_uri else None,
    }
    started: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for label, args_ in servers.items():  # all up at once: the rounds interleave them
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cwd, server_env, health = params.root, env, "/ready"
            if label == "mlflow models serve":
                cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion",
                       "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
                health = "/ping"
            elif args_ is None:
                continue
            else:
                cmd = [sys.executable, *args_, "--port", str(port)]
            if "shadow" in label:
                cwd, server_env = shadow_root, {**env, "MLFLOW_TRACKING_URI": str(shadow_uri)}
            process = subprocess.Popen(cmd, cwd=cwd, env=server_env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            started[label] = (process, url)
            wait_http_ok(url + health, process)
        if "this service, with a shadow" in started:
            url = started["this service, with a shadow"][1]
            if not json.loads(urllib.request.urlopen(url + "/model").read())["shadow"]:
                raise SystemExit("the shadow service loaded no shadow model")
        for _, url in started.values():  # warm-up (each worker loads its own model)
            load(url + "/invocations", single, 16, 3)
        results, in_process, before = interleaved(load, started, single, many, args.seconds,
                                                  lambda: floor(batch, 30))
        after = os.getloadavg()
        if "this service, with a shadow" in started:
            url = started["this service, with a shadow"][1]
            shadow_counts = json.loads(urllib.request.urlopen(url + "/model").read())["shadow"]
    finally:
        for process, _ in started.values():
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(shadow_root, ignore_errors=True)

    floor_one = floor(one, 300)
    sklearn_one = median_ms(lambda: served.task.scores(served.model, one), 100)
    ours, theirs = results["this service"], results["mlflow models serve"]

    def each(measure: str, key: str, of: dict[str, list[dict[str, float]]]) -> list[float]:
        return [run[key] for run in of[measure]]

    def ratio(measure: str, key: str, top: dict, bottom: dict) -> list[float]:
        return [a / b for a, b in zip(each(measure, key, top), each(measure, key, bottom),
                                      strict=True)]

    print(f"\nmodel: {name}@champion ({served.task.name}, {params.train.model}), "
          f"{os.cpu_count()} cores, {args.seconds} s per run, {ROUNDS} interleaved rounds "
          f"(load average {before[0]:.2f} before, {after[0]:.2f} after); median [range], "
          "the ratio taken in each round")
    print("| measure | this service | mlflow models serve | ratio |")
    print("|---|---|---|---|")
    for c in ("c1", "c16"):
        n = c[1:]
        print(f"| requests/s, 1 record, concurrency {n} | {spread(each(c, 'rps', ours), 0)} | "
              f"{spread(each(c, 'rps', theirs), 0)} | {spread(ratio(c, 'rps', ours, theirs))}x |")
        for p in ("p50", "p99"):
            print(f"| {p} latency ms, concurrency {n} | {spread(each(c, p, ours))} | "
                  f"{spread(each(c, p, theirs))} | {spread(ratio(c, p, ours, theirs))} |")
    records = [r * 1000 for r in each("batch", "rps", ours)]
    print(f"| records/s, 1,000-record requests | {spread(records, 0)} | "
          f"{spread([r * 1000 for r in each('batch', 'rps', theirs)], 0)} | "
          f"{spread(ratio('batch', 'rps', ours, theirs))}x |")
    print(f"\nserved runtime: {served.runtime}; scikit-learn's scores on 1 record: "
          f"{sklearn_one:.2f} ms (what mlflow models serve runs)")
    overhead = [p50 - floor_one for p50 in each("c1", "p50", ours)]
    print(f"in-process floor: predict on 1 record with {served.runtime} {floor_one:.3f} ms; "
          f"service overhead above it at concurrency 1: {spread(overhead)} ms")
    two = [w["rps"] / o["rps"] for w, o in zip(
        results["this service, 2 workers"]["c16"], ours["c16"], strict=True)]
    print(f"two workers (`--workers 2`), concurrency 16: "
          f"{spread(each('c16', 'rps', results['this service, 2 workers']), 0)} requests/s, "
          f"{spread(two)}x one worker")
    print(f"HTTP floor: GET /ping (does nothing) p50 at concurrency 1: "
          f"{spread(each('ping', 'p50', ours))} ms here, {spread(each('ping', 'p50', theirs))}"
          " ms on mlflow models serve")
    of_in_process = [r / (1000 / (ms / 1e3)) for r, ms in zip(records, in_process, strict=True)]
    print(f"in-process predict on the same 1,000 rows: "
          f"{spread([1000 / (ms / 1e3) for ms in in_process], 0)} records/s; the service "
          f"reaches {spread(of_in_process)} of it")
    request_ms = 1000 / statistics.median(records) * 1e3
    steps = batch_steps(served, many.encode(), median_ms)
    print(f"where one 1,000-record request's {request_ms:.1f} ms go (in-process medians): "
          + ", ".join(f"{name} {ms:.2f}" for name, ms in steps.items())
          + "; HTTP, framework and the rest (the log part aside: another thread) "
          f"{request_ms - sum(ms for step, ms in steps.items() if 'thread' not in step):.2f}")
    shadow_p99: list[float] = []
    if "this service, with a shadow" in started:
        shadowed = results["this service, with a shadow"]
        shadow_p99 = ratio("c16", "p99", shadowed, ours)
        counts = shadow_counts["requests"]
        print(f"\nwith a shadow (the registry's `shadow: true`), concurrency 16: p99 "
              f"{spread(each('c16', 'p99', shadowed))} ms, {spread(shadow_p99)}x the service's "
              f"without (target <= 1.5x: {verdict(shadow_p99, 1.5, False)}); "
              f"{spread(each('c16', 'rps', shadowed), 0)} requests/s; the shadow scored "
              f"{counts['scored']:.0f} requests, dropped {counts['dropped']:.0f}, "
              f"{counts['pending']:.0f} pending at the end")
    else:
        print("\nwith a shadow: not measured (the store is not the embedded SQLite file)")
    floor_targets = floor_comparison(load, single, FLOOR_SECONDS, env, params.root,
                                     served.onnx_session is not None)
    print("\ntargets (issue 15; the median of the rounds, their range in [ ]):")
    for text, values, target, limit, higher in [
        ("c=16 p99 / mlflow's", ratio("c16", "p99", ours, theirs), "<= 0.10", 0.1, False),
        ("c=16 p99 ms", each("c16", "p99", ours), "< 30", 30, False),
        ("c=16 requests/s / mlflow's", ratio("c16", "rps", ours, theirs), ">= 25", 25, True),
        ("c=1 overhead above in-process ms", overhead, "< 0.5", 0.5, False),
        ("1,000-record records/s / in-process", of_in_process, ">= 0.50", 0.5, True),
        ("c=16 requests/s, 2 workers / 1 worker", two, ">= 1.6", 1.6, True),
    ]:
        print(f"  {text}: {spread(values)} (target {target}) {verdict(values, limit, higher)}")
    if floor_targets:
        print("targets (issue 35, the median of the interleaved rounds; their range in [ ]):")
        for line in floor_targets:
            print(f"  {line}")


def interleaved(load: Any, started: dict[str, tuple[Any, str]], single: str, many: str,
                seconds: int, in_process_batch: Any
                ) -> tuple[dict[str, dict[str, list[dict[str, float]]]], list[float], Any]:
    """ROUNDS rounds of every server's measures in turn (A/B/C/D, A/B/C/D...), so a drift of
    the machine hits them all, and the in-process 1,000-record predict once per round."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        label: {measure: [] for measure in MEASURES[label]} for label in started}
    in_process: list[float] = []
    before = os.getloadavg()
    for _ in range(ROUNDS):
        for label, (_, url) in started.items():
            for measure in MEASURES[label]:
                if measure == "ping":
                    run = load(url + "/ping", None, 1, seconds)
                else:
                    body = many if measure == "batch" else single
                    run = load(url + "/invocations", body, 16 if measure == "c16" else 1,
                               seconds)
                results[label][measure].append(run)
        in_process.append(in_process_batch())
    return results, in_process, before


ROUNDS = 3
# The floor comparison's ratio is the target of issue 35, and this machine's speed drifts by
# 30 % within seconds: many short rounds, in alternating order, give a median that holds
# from run to run where three 5 s rounds did not (0.71 to 0.97 within ten minutes).
FLOOR_ROUNDS, FLOOR_SECONDS = 10, 2


def verdict(values: list[float], target: float, higher: bool) -> str:
    """met or MISSED (and by how much) for the median of `values`."""
    value = statistics.median(values)
    met = value >= target if higher else value <= target
    gap = "" if met else f", short by {abs(value - target) / target:.0%}"
    return f"{'met' if met else 'MISSED'}{gap}"


def spread(values: list[float], digits: int = 2) -> str:
    """A figure over rounds: its median and [min-max]."""
    return (f"{statistics.median(values):.{digits}f} "
            f"[{min(values):.{digits}f}-{max(values):.{digits}f}]")


def floor_comparison(load: Any, body: str, seconds: int, env: dict[str, str], root: Path,
                     has_twin: bool) -> list[str]:
    """The service against the floor app (benchmarks/floor_app.py) and a bare parse-and-
    return POST, one worker each, at concurrency 1 and 16, in FLOOR_ROUNDS interleaved
    rounds; prints the table and returns the target lines (met or MISSED)."""
    if not has_twin:
        print("\nfloor app: not measured (the champion has no ONNX twin)")
        return []
    service_port, floor_port = free_port(), free_port()
    service = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(service_port)],
                               cwd=root, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    floor = subprocess.Popen([sys.executable, str(Path(__file__).with_name("floor_app.py")),
                              "--port", str(floor_port)], cwd=root, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    targets = {"this service": f"http://127.0.0.1:{service_port}/invocations",
               "floor app (parse, ONNX, label)": f"http://127.0.0.1:{floor_port}/invocations",
               "bare POST (parse, constant)": f"http://127.0.0.1:{floor_port}/parse"}
    runs = [(label, url, connections) for connections in (16, 1)
            for label, url in targets.items()]
    rounds: dict[tuple[str, int], list[dict[str, float]]] = {
        (label, connections): [] for label, _, connections in runs}
    try:
        wait_http_ok(f"http://127.0.0.1:{service_port}/ready", service)
        wait_http_ok(f"http://127.0.0.1:{floor_port}/ping", floor)
        for url in targets.values():
            load(url, body, 16, 2)  # warm-up
        before = os.getloadavg()
        for i in range(FLOOR_ROUNDS):  # A/B/C, C/B/A, ...: drifts of the machine hit all,
            for label, url, connections in runs if i % 2 == 0 else runs[::-1]:  # none first
                rounds[label, connections].append(load(url, body, connections, seconds))
        after = os.getloadavg()
    finally:
        for process in (service, floor):
            process.terminate()
            process.wait(timeout=30)

    def ratios(key: str, top: str, bottom: str, connections: int) -> list[float]:
        return [a[key] / b[key] for a, b in zip(rounds[top, connections],
                                                rounds[bottom, connections], strict=True)]

    ours, floor_app, bare = targets
    print(f"\nthe floor: one worker each, {FLOOR_ROUNDS} interleaved rounds of {seconds} s "
          f"(load average {before[0]:.2f} before, {after[0]:.2f} after); median [range]")
    print("| server | concurrency | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for (label, connections), measured in rounds.items():
        print(f"| {label} | {connections} | " + " | ".join(
            spread([r[k] for r in measured], 0 if k == "rps" else 2)
            for k in ("rps", "p50", "p99")) + " |")
    share, p99 = ratios("rps", ours, floor_app, 16), ratios("p99", ours, floor_app, 16)
    beyond = [(a["p50"] - b["p50"]) * 1000 for a, b in zip(
        rounds[ours, 1], rounds[floor_app, 1], strict=True)]
    print(f"the service's share of the floor: {spread(share)} at concurrency 16, "
          f"{spread(ratios('rps', ours, floor_app, 1))} at 1; of the bare POST: "
          f"{spread(ratios('rps', ours, bare, 16))} at 16; its p99 / the floor's at 16: "
          f"{spread(p99)}; its p50 beyond the floor's at 1: {spread(beyond, 0)} us")
    return [f"c=16 requests/s / the floor app's: {spread(share)} (target >= 0.80) "
            f"{verdict(share, 0.80, True)}",
            f"c=16 p99 / the floor app's: {spread(p99)} (target <= 1.50) "
            f"{verdict(p99, 1.50, False)}"]


def shadow_store(params: Any, folder: Path) -> str | None:
    """A copy of the embedded store in `folder` whose challenger, awaiting approval and
    tagged `shadow: true`, is the champion registered again; None on another store."""
    from mlflow import MlflowClient

    from mlpipeline.config import PARAMS_FILE

    uri = params.tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    shutil.copy2(uri[len("sqlite:///"):], folder / "mlflow.db")
    copy = f"sqlite:///{folder / 'mlflow.db'}"
    shutil.copy2(params.path(PARAMS_FILE), folder / PARAMS_FILE)  # the registry's tag decides
    client, name = MlflowClient(copy), params.mlflow.registered_model
    champion = client.get_model_version_by_alias(name, "champion")
    twin = client.create_model_version(name, champion.source, champion.run_id,
                                       tags={"approval": "awaiting", "shadow": "true"},
                                       model_id=getattr(champion, "model_id", None))
    client.set_registered_model_alias(name, "challenger", twin.version)
    return copy


def batch_steps(served: Any, body: bytes, median_ms: Any) -> dict[str, float]:
    """The service's steps for one /invocations body, each timed on its own (ms)."""
    from serving import scoring
    from serving.prediction_log import PredictionLog, _Part

    columns, _ = scoring.parse_payload(body, "application/json")
    scores = served.scores(columns)
    answers = served.task.answers(scores)
    log = PredictionLog(Path(tempfile.mkdtemp()), 10**9, 3600)  # never flushes on its own
    part = _Part(served.requests.log_types)  # a part as the writer gets it: this request's
    part.add(columns, answers.log, ("1", "r", "champion", 0), len(answers.predictions))
    return {
        "parse JSON": median_ms(lambda: scoring.parse_payload(body, "application/json"), 30),
        "validate columns": median_ms(lambda: served.requests.columns_valid(columns), 30),
        f"predict ({served.runtime})": median_ms(lambda: served.scores(columns), 30),
        "answers": median_ms(lambda: served.task.answers(scores), 30),
        "answer JSON": median_ms(lambda: json.dumps({"predictions": answers.predictions}), 30),
        "log part (other thread)": median_ms(lambda: log._write(part), 10),
    }


if __name__ == "__main__":
    main()
