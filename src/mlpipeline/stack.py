"""`python -m mlpipeline.stack up|down|status`: the production topology on one machine.

PostgreSQL (the `pgserver` package) is MLflow's backend store; an S3 endpoint (`moto_server`,
in memory) is its artefact store, reached only through the tracking server's proxy, so clients
need no S3 credentials; `mlflow server` runs in its light form (one worker, no job runner); the
DVC default remote is on the same bucket; N service replicas serve the champion and reload on
MLflow's alias webhook. Every part is a real process bound to 127.0.0.1. `up` records them in
`<stack.dir>/stack.json`; `down` stops them all and removes the stack's data (S3 lives in
memory, so PostgreSQL's rows would point at artefacts that no longer exist).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from mlpipeline.config import ENGINE_MASTER_ENV, Params, StackParams, load_params

STATE_FILE = "stack.json"
ENV_FILE = "env.sh"
DVC_REMOTE = "stack"
BIN = Path(sys.executable).parent
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
         "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port(configured: int) -> int:
    return configured or _free_port()


def _wait_http(url: str, process: subprocess.Popen | None, what: str, log: Path,
               timeout: float = 120) -> None:
    """Wait until GET `url` answers 200; fail naming the part and its log if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"stack: {what} exited ({process.returncode}) while starting; "
                             f"see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"stack: {what} did not answer {url} within {timeout:.0f} s; see {log}")


def _spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """A detached child in its own process group (its workers included), logging to `log`."""
    with log.open("w") as out:
        return subprocess.Popen(args, cwd=cwd, env={**os.environ, **QUIET, **env}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_process(pid: int, timeout: float = 30) -> bool:
    """SIGTERM to the process group `pid` leads, then SIGKILL whatever is left after `timeout`.
    Returns False when it was not running."""
    import psutil

    try:
        leader = psutil.Process(pid)
        group = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in group:
            try:
                if sig == signal.SIGTERM and proc.pid == pid:
                    os.killpg(pid, sig)
                else:
                    proc.send_signal(sig)
            except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while (group := [proc for proc in group if not _exited(proc)]) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        if not group:
            return True
    return True


def _exited(proc: Any) -> bool:
    """Gone, or a zombie: a part restarted by another process (`start_part` in a test or a
    notebook) stays a zombie until that parent reaps it, and no signal changes that."""
    import psutil

    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# PostgreSQL: pgserver bundles the binaries and runs them as a system user when we are root.
def _pgserver() -> Any:
    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" (a fallback)
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def start_postgres(pgdata: Path) -> str:
    """Start (or find running) PostgreSQL on a unix socket; returns the SQLAlchemy URI."""
    server = _pgserver().get_server(pgdata, cleanup_mode=None)  # outlives this process
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


def stop_postgres(pgdata: Path) -> bool:
    """Stop the PostgreSQL whose data is `pgdata` (fast shutdown); False if it was not up."""
    pgserver = _pgserver()
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    server.cleanup()  # pg_ctl -w stop, then terminate/kill if that fails
    return True


def _s3_client(url: str, credentials: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"])


def _dvc(root: Path, *args: str) -> None:
    subprocess.run([str(BIN / "dvc"), *args], cwd=root, check=True, capture_output=True,
                   env={**os.environ, **QUIET})


def mlflow_server_command(port: int, backend_uri: str, artifacts: str) -> list[str]:
    return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts]


def start_mlflow(state: dict[str, Any], folder: Path, root: Path) -> None:
    """`mlflow server` for `state` (also used to restart it after a fault)."""
    part = state["mlflow"]
    log = folder / "logs" / "mlflow.log"
    process = _spawn(mlflow_server_command(part["port"], state["postgres"]["uri"],
                                           part["artifacts"]),
                     {**state["s3"]["credentials"], **part["env"]}, log, root)
    part["pid"] = process.pid
    _wait_http(f"{part['url']}/health", process, "mlflow server", log)


def start_replicas(state: dict[str, Any], folder: Path, root: Path) -> None:
    """Start every replica, then wait for all (each pays the mlflow import: start together)."""
    started = []
    for replica in state["replicas"]:
        log = folder / "logs" / f"{replica['name']}.log"
        process = _spawn(
            [sys.executable, "-m", "serving", "--port", str(replica["port"]),
             "--poll-seconds", str(state["poll_seconds"]), "--replica", replica["name"]],
            {"MLFLOW_TRACKING_URI": state["mlflow"]["url"], **state["replica_env"]}, log, root)
        replica["pid"] = process.pid
        started.append((replica, process, log))
    _save(folder, state)
    for replica, process, log in started:
        _wait_http(f"{replica['url']}/health", process, f"replica {replica['name']}", log)


def stop_part(params: Params, name: str) -> None:
    """Stop one part (`mlflow` or `postgres`) of a running stack: for fault drills."""
    state = _require_state(params)
    if name == "postgres":
        stop_postgres(Path(state["postgres"]["pgdata"]))
    else:
        stop_process(state[name]["pid"])


def start_part(params: Params, name: str) -> None:
    """Start a part `stop_part` stopped again, with the same settings."""
    state = _require_state(params)
    folder = Path(state["folder"])
    if name == "postgres":
        start_postgres(Path(state["postgres"]["pgdata"]))
    else:
        start_mlflow(state, folder, params.root)
    _save(folder, state)


def _require_state(params: Params) -> dict[str, Any]:
    state = read_state(params)
    if state is None:
        raise SystemExit("stack: not up (make stack)")
    return state


def up(params: Params) -> dict[str, Any]:
    """Start every part; returns the state written to `<stack.dir>/stack.json`."""
    settings, root = params.stack, params.root
    folder = params.path(settings.dir).resolve()
    if (folder / STATE_FILE).exists():
        raise SystemExit(f"stack: already up ({folder / STATE_FILE}); `make stack-down` first")
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # it holds the stack's credentials and webhook secret
    credentials = {"AWS_ACCESS_KEY_ID": "stack" + secrets.token_hex(4),
                   "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16)}
    s3_port, mlflow_port = _port(settings.s3_port), _port(settings.mlflow_port)
    state: dict[str, Any] = {"root": str(root), "folder": str(folder),
                             "poll_seconds": settings.poll_seconds}
    try:
        state["postgres"] = {"pgdata": str(folder / "pg"),
                             "uri": start_postgres(folder / "pg")}
        _save(folder, state)  # from here on, `down` can stop what has started

        s3_url = f"http://127.0.0.1:{s3_port}"
        s3 = _spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], {},
                    folder / "logs" / "s3.log", root)
        state["s3"] = {"pid": s3.pid, "url": s3_url, "bucket": settings.bucket,
                       "credentials": credentials}
        _save(folder, state)
        _wait_http(f"{s3_url}/moto-api/", s3, "moto_server (S3)", folder / "logs" / "s3.log")
        _s3_client(s3_url, credentials).create_bucket(Bucket=settings.bucket)

        # Webhook secrets are stored encrypted; without a fixed key a restarted server could
        # not decrypt them (MLflow generates a new key per process).
        from cryptography.fernet import Fernet

        state["mlflow"] = {
            "port": mlflow_port, "url": f"http://127.0.0.1:{mlflow_port}",
            "artifacts": f"s3://{settings.bucket}/mlartifacts",
            "env": {"MLFLOW_S3_ENDPOINT_URL": s3_url,
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    # The replicas' webhooks are loopback http URLs, which MLflow refuses
                    # by default (SSRF protection); a real deployment uses https names.
                    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode()}}
        start_mlflow(state, folder, root)
        _save(folder, state)

        remote = f"s3://{settings.bucket}/dvc"
        _dvc(root, "remote", "add", "--local", "--default", "--force", DVC_REMOTE, remote)
        _dvc(root, "remote", "modify", "--local", DVC_REMOTE, "endpointurl", s3_url)
        _dvc(root, "remote", "modify", "--local", DVC_REMOTE, "access_key_id",
             credentials["AWS_ACCESS_KEY_ID"])
        _dvc(root, "remote", "modify", "--local", DVC_REMOTE, "secret_access_key",
             credentials["AWS_SECRET_ACCESS_KEY"])
        state["dvc_remote"] = remote

        webhook_secret = secrets.token_urlsafe(32)
        state["replica_env"] = {params.serving.webhook_secret_env: webhook_secret,
                                params.serving.admin_token_env: secrets.token_urlsafe(24)}
        state["replicas"] = [
            {"name": f"replica-{i}", "port": port, "url": f"http://127.0.0.1:{port}"}
            for i, port in enumerate(map(_port, settings.replica_ports), start=1)]
        start_replicas(state, folder, root)
        if settings.spark_workers:
            state["spark"] = start_spark_cluster(folder, settings)
            _save(folder, state)
        if settings.webhooks:
            register_webhooks(state, params.mlflow.registered_model, webhook_secret)
        _save(folder, state)
        _write_env(folder, state)
    except BaseException:
        down(params)
        raise
    return state


def start_spark_cluster(folder: Path, settings: StackParams) -> dict[str, Any]:
    """A Spark standalone master and `settings.spark_workers` workers on 127.0.0.1, from the
    environment's pyspark (its `spark-class`); returns once every worker has registered."""
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spark_class = str(BIN / "spark-class")
    if not Path(spark_class).exists():
        raise SystemExit("stack: no spark-class beside this Python: `uv sync --extra spark` "
                         "(make setup does), or set stack.spark_workers: 0")
    # Executors run this interpreter (pandas, pyarrow, the project), not `python3` from PATH.
    env = {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_CONF_DIR": str(spark_defaults(folder))}
    port, ui_port = _port(settings.spark_master_port), _port(settings.spark_ui_port)
    master = _spawn([spark_class, "org.apache.spark.deploy.master.Master", "--host",
                     "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)],
                    env, logs / "spark-master.log", folder)
    cluster: dict[str, Any] = {"pid": master.pid, "url": f"spark://127.0.0.1:{port}",
                               "ui": f"http://127.0.0.1:{ui_port}", "workers": [],
                               "conf_dir": env["SPARK_CONF_DIR"]}
    try:
        _wait_http(f"{cluster['ui']}/json/", master, "Spark master", logs / "spark-master.log")
        for i in range(1, settings.spark_workers + 1):
            worker = _spawn([spark_class, "org.apache.spark.deploy.worker.Worker", "--host",
                             "127.0.0.1", "--cores", str(settings.spark_worker_cores),
                             "--memory", settings.spark_worker_memory,
                             "--webui-port", str(_free_port()),
                             "--work-dir", str(folder / "spark-work"), cluster["url"]],
                            env, logs / f"spark-worker-{i}.log", folder)
            cluster["workers"].append(worker.pid)
        deadline = time.monotonic() + 120
        while len(spark_applications(cluster, "workers")) < settings.spark_workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"stack: Spark workers did not register within 120 s; see "
                                 f"{logs}/spark-worker-*.log")
            time.sleep(0.5)
    except BaseException:
        stop_spark_cluster(cluster)
        raise
    return cluster


def spark_defaults(folder: Path) -> Path:
    """The stack's SPARK_CONF_DIR (env.sh exports it): JVMs tuned for its short jobs. A stage
    is a few seconds of work behind a JVM start for its driver and for each executor; the
    client compiler alone (no C2) and the serial collector start them about a third sooner
    here (a stage on the cluster: 25 s against 38 s). `defaultJavaOptions` come before a
    session's own `extraJavaOptions`, which engine.conf still sets."""
    conf_dir = folder / "spark-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    short_jobs = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    (conf_dir / "spark-defaults.conf").write_text(
        f"spark.driver.defaultJavaOptions {short_jobs}\n"
        f"spark.executor.defaultJavaOptions {short_jobs}\n")
    return conf_dir


def spark_applications(cluster: dict[str, Any], key: str = "completedapps") -> list[dict]:
    """The master's own account (its JSON): `workers` alive, `activeapps`, `completedapps`."""
    with urllib.request.urlopen(f"{cluster['ui']}/json/", timeout=5) as response:
        listed = json.load(response).get(key, [])
    return [w for w in listed if key != "workers" or w.get("state") == "ALIVE"]


def stop_spark_cluster(cluster: dict[str, Any]) -> None:
    for pid in [*cluster.get("workers", []), cluster["pid"]]:
        stop_process(pid)


def register_webhooks(state: dict[str, Any], model: str, secret: str) -> None:
    """One webhook per replica on `model_version_alias.created`, signed with `secret`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=state["mlflow"]["url"])
    for replica in state["replicas"]:
        hook = client.create_webhook(
            name=f"{model}-reload-{replica['name']}", url=f"{replica['url']}/admin/webhook",
            events=["model_version_alias.created"], secret=secret,
            description=f"{replica['name']} reloads when an alias of {model} moves")
        replica["webhook_id"] = hook.webhook_id


def _save(folder: Path, state: dict[str, Any]) -> None:
    path = folder / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.chmod(0o600)
    tmp.replace(path)


def _write_env(folder: Path, state: dict[str, Any]) -> None:
    # The tracking URI is all a client needs: artefacts go through the server's proxy, and
    # DVC's remote (with its credentials) is in .dvc/config.local.
    spark = (f"export {ENGINE_MASTER_ENV}={state['spark']['url']}\n"
             f"export SPARK_CONF_DIR={shlex.quote(state['spark']['conf_dir'])}\n"
             if state.get("spark") else "")
    (folder / ENV_FILE).write_text(f"export MLFLOW_TRACKING_URI={state['mlflow']['url']}\n"
                                   + spark)


def read_state(params: Params) -> dict[str, Any] | None:
    path = params.path(params.stack.dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def down(params: Params) -> list[str]:
    """Stop every part `up` recorded, drop the DVC remote and the stack's data; keep logs.
    Returns each part stopped, with how long it took to stop."""
    state = read_state(params)
    folder = params.path(params.stack.dir).resolve()
    stopped = []

    def timed(name: str, stop: Any) -> None:
        started = time.monotonic()
        if stop():
            stopped.append(f"{name} ({time.monotonic() - started:.1f} s)")

    if state:
        for replica in state.get("replicas", []):
            if replica.get("pid"):
                timed(replica["name"], lambda pid=replica["pid"]: stop_process(pid))
        if state.get("spark"):
            started = time.monotonic()
            stop_spark_cluster(state["spark"])
            stopped.append(f"spark ({time.monotonic() - started:.1f} s)")
        for name in ("mlflow", "s3"):
            pid = state.get(name, {}).get("pid")
            if pid:
                timed(name, lambda pid=pid: stop_process(pid))
        if state.get("dvc_remote"):
            subprocess.run([str(BIN / "dvc"), "remote", "remove", "--local", DVC_REMOTE],
                           cwd=params.root, capture_output=True, env={**os.environ, **QUIET})
    if (folder / "pg").exists():
        timed("postgres", lambda: stop_postgres(folder / "pg"))
        shutil.rmtree(folder / "pg", ignore_errors=True)
    for name in (STATE_FILE, ENV_FILE):
        (folder / name).unlink(missing_ok=True)
    return stopped


def describe(state: dict[str, Any]) -> str:
    lines = [
        f"  PostgreSQL   {state['postgres']['uri']}  (MLflow's backend store)",
        f"  S3 (moto)    {state['s3']['url']}  bucket {state['s3']['bucket']}",
        f"  MLflow       {state['mlflow']['url']}  artefacts {state['mlflow']['artifacts']} "
        "(proxied: clients need no S3 credentials)",
        f"  DVC remote   {state['dvc_remote']}  (default, in .dvc/config.local)",
    ]
    lines += [f"  {r['name']:<12} {r['url']}  (/ready, /predict, /metrics)"
              for r in state["replicas"]]
    if state.get("spark"):
        spark = state["spark"]
        lines.append(f"  Spark        {spark['url']}  {len(spark['workers'])} workers, UI "
                     f"{spark['ui']} (engine.kind: spark; ENGINE_MASTER in env.sh)")
    folder = Path(state["folder"])
    lines += ["", f"Point a shell at it:  source {folder / ENV_FILE}",
              f"Logs: {folder / 'logs'}/   Stop: make stack-down"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlpipeline.stack", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    params = load_params()
    if args.action == "up":
        started = time.monotonic()
        state = up(params)
        print(f"stack: up in {time.monotonic() - started:.1f} s\n{describe(state)}")
    elif args.action == "down":
        stopped = down(params)
        print(f"stack: stopped {', '.join(stopped) if stopped else 'nothing (it was not up)'}")
    else:
        running = read_state(params)
        print(describe(running) if running else "stack: not up (make stack)")


if __name__ == "__main__":
    main()
