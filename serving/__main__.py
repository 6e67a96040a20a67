"""`python -m serving [--port N] [--poll-seconds S] [--workers W]`: the service under uvicorn.

Binds serving.host (127.0.0.1 by default); every other setting comes from params.yaml.
With `--workers` above 1, uvicorn runs that many processes on one socket; each loads the
champion, polls on its own and writes its own prediction-log files (named with its pid), and
their Prometheus values go to a folder of this run's (prometheus_client's multiprocess mode),
so that /metrics on any worker answers for all of them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import tempfile

import uvicorn
from fastapi import FastAPI

from mlpipeline.config import load_service_config
from serving.app import create_app
from serving.connections import uvicorn_options
from serving.metrics import MULTIPROCESS_ENV

# How the parent hands its command line to worker processes, which import `worker_app`.
REPLICA_ENV, POLL_ENV = "SERVING_REPLICA", "SERVING_POLL_SECONDS"


def worker_app() -> FastAPI:
    """The app as each worker process builds it (uvicorn's factory)."""
    params = load_service_config()
    poll = float(os.environ.get(POLL_ENV) or params.serving.poll_seconds)
    params = params.model_copy(update={"serving": params.serving.model_copy(
        update={"poll_seconds": poll})})
    return create_app(params, replica=os.environ.get(REPLICA_ENV) or socket.gethostname())


def main() -> None:
    params = load_service_config()
    parser = argparse.ArgumentParser(prog="python -m serving")
    parser.add_argument("--host", default=params.serving.host)
    parser.add_argument("--port", type=int, default=params.serving.port)
    parser.add_argument("--poll-seconds", type=float, default=params.serving.poll_seconds)
    parser.add_argument("--workers", type=int, default=params.serving.workers,
                        help="processes sharing the port (default: serving.workers)")
    parser.add_argument("--replica", default=os.environ.get(REPLICA_ENV)
                        or socket.gethostname(),
                        help="this replica's name, in its prediction log files "
                             f"(default: ${REPLICA_ENV} or the host name)")
    args = parser.parse_args()
    os.environ[REPLICA_ENV], os.environ[POLL_ENV] = args.replica, str(args.poll_seconds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # A registry that is down would log a retry warning per poll; the service's own
    # champion log says it once (and when it recovers).
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    common = {"host": args.host, "port": args.port, **uvicorn_options(params.serving)}
    if args.workers > 1:
        # A fresh folder per run: files a previous run left would be counted again.
        folder = tempfile.mkdtemp(prefix="serving-metrics-")
        os.environ[MULTIPROCESS_ENV] = folder  # the workers inherit it before their imports
        try:
            uvicorn.run("serving.__main__:worker_app", factory=True, workers=args.workers,
                        **common)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        uvicorn.run(worker_app(), **common)


if __name__ == "__main__":
    main()
