"""`python -m serving [--port N] [--poll-seconds S]`: the service under uvicorn.

Binds serving.host (127.0.0.1 by default); every other setting comes from params.yaml.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from mlpipeline.config import load_params
from serving.app import create_app


def main() -> None:
    params = load_params()
    parser = argparse.ArgumentParser(prog="python -m serving")
    parser.add_argument("--host", default=params.serving.host)
    parser.add_argument("--port", type=int, default=params.serving.port)
    parser.add_argument("--poll-seconds", type=float, default=params.serving.poll_seconds)
    args = parser.parse_args()
    params = params.model_copy(update={"serving": params.serving.model_copy(
        update={"poll_seconds": args.poll_seconds})})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(params), host=args.host, port=args.port, access_log=False,
                log_level="info")


if __name__ == "__main__":
    main()
