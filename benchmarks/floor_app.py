"""The floor of the prediction path (issue 35): what a request costs with nothing but the
parse and the model, under the same uvicorn settings as the service.

`POST /invocations` parses the same `dataframe_split` body, scores it with the champion's
own scorer (the same ONNX input, `onnx_feed`, and the same ONNX twin) and returns the
labels; `POST /parse` parses
the body and returns a constant (the HTTP stack and JSON alone). No validation, no log, no
metrics: `make bench` runs it beside the service, interleaved, and prints the service's
share of it.

    python benchmarks/floor_app.py --port N   (in a project folder, after `make demo`)
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from mlpipeline.config import Params, load_params
from serving.connections import uvicorn_options


def create_floor_app(params: Params) -> FastAPI:
    from serving.champion import Champion

    champion = Champion(params)  # loads exactly what the service loads
    if champion.check() != "loaded" or champion.current is None:
        raise SystemExit(f"no champion: {champion.not_ready_reason}")
    model = champion.current
    if model.onnx_session is None:
        raise SystemExit("the champion has no ONNX twin: the floor app runs the twin only")
    task = model.task
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        split = orjson.loads(await request.body())["dataframe_split"]
        columns = dict(zip(split["columns"], map(list, zip(*split["data"], strict=True)),
                           strict=True))
        scores = model.scores(columns)  # the service's own scorer: onnx_feed, the twin
        return Response(orjson.dumps({"predictions": task.predictions(scores).tolist()}),
                        media_type="application/json")

    @app.post("/parse")
    async def parse(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(b'{"predictions": [0]}', media_type="application/json")

    @app.get("/ping")
    async def ping() -> Response:
        return Response(b"\n", media_type="text/plain")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    params = load_params()
    uvicorn.run(create_floor_app(params), host="127.0.0.1", port=args.port,
                **uvicorn_options(params.serving))


if __name__ == "__main__":
    main()
