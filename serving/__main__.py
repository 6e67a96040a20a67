"""`python -m serving [--port N] [--poll-seconds S]`: the service under uvicorn.

Binds serving.host (127.0.0.1 by default); every other setting comes from params.yaml.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

import uvicorn

from mlpipeline.config import load_params
from serving.app import create_app


def main() -> None:
    params = load_params()
    parser = argparse.ArgumentParser(prog="python -m serving")
    parser.add_argument("--host", default=params.serving.host)
    parser.add_argument("--port", type=int, default=params.serving.port)
    parser.add_argument("--poll-seconds", type=float, default=params.serving.poll_seconds)
    parser.add_argument("--replica", default=os.environ.get("SERVING_REPLICA")
                        or socket.gethostname(),
                        help="this replica's name, in its prediction log files "
                             "(default: $SERVING_REPLICA or the host name)")
    args = parser.parse_args()
    params = params.model_copy(update={"serving": params.serving.model_copy(
        update={"poll_seconds": args.poll_seconds})})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # A registry that is down would log a retry warning per poll; the service's own
    # champion log says it once (and when it recovers).
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    uvicorn.run(create_app(params, replica=args.replica), host=args.host, port=args.port,
                access_log=False, log_level="info")


if __name__ == "__main__":
    main()
