"""The Spark engine (`engine.kind: spark`): a session on `engine.master`, and the one way the
data stages hand work to it.

The data stages keep their rules in one place (`schema.check_frame`, `validate.batch_checks`,
the split and the sample in `prepare`): on Spark each landed batch is one task that runs
the same pandas code on that batch alone, and what spans batches (repeated rows, ids used
before, the time cut, the reference sample) is a Spark aggregation over keys. So the two
engines give the same answers, and no stage gathers the window in one process.
pyspark is optional (`uv sync --extra spark`); nothing here imports it until a stage asks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipeline.config import ServiceConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Spark's own defaults that differ from what the stages need; engine.conf overrides them.
BASE_CONF: dict[str, str] = {
    # Timestamps as the embedded engine's pandas writes them: no time zone.
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.inferTimestampNTZ.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    # toPandas through Arrow (train's sample): columnar, without a Python object per value.
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}

LOG_CONF = Path(__file__).with_name("spark-log4j2.properties")  # the driver JVM's: errors only


def uses_spark(params: ServiceConfig) -> bool:
    return params.engine.kind == "spark"


def start_session(params: ServiceConfig, app: str) -> SparkSession:
    """A session on engine.master (or ENGINE_MASTER), its Python workers on this interpreter."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SystemExit("engine.kind is spark but pyspark is not installed: run "
                         "`uv sync --extra spark` (make setup does), or set engine.kind: "
                         "embedded") from None
    # Executors run this interpreter (with pandas and pyarrow), not `python3` from PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    master = params.engine.spark_master()
    if master.startswith("local") or "://127.0.0.1:" in master or "://localhost:" in master:
        # The driver's own ports on loopback too (a remote cluster must reach it: not then).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    quiet = {"spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{LOG_CONF}"}
    conf = {**BASE_CONF, **quiet, **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                     for k, v in params.engine.conf.items()}}
    # Spark Connect (sc://host:15002, e.g. Databricks) is a remote session without a local
    # JVM (it needs pyspark's `connect` extra: grpcio); anything else is a master URL.
    remote = master.startswith("sc://")
    builder = SparkSession.builder.remote(master) if remote else SparkSession.builder.master(
        master)
    builder = builder.appName(f"mlpipeline {app}")
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if not remote:
        session.sparkContext.setLogLevel("ERROR")
    return session


@contextlib.contextmanager
def session_for(params: ServiceConfig, app: str, spark: SparkSession | None = None
                ) -> Iterator[SparkSession]:
    """The caller's session (tests share one per module), else one for this stage, stopped
    when the stage ends so the cluster lists the application as finished."""
    if spark is not None:
        yield spark
        return
    session = start_session(params, app)
    try:
        yield session
    finally:
        session.stop()


def each_task(spark: SparkSession, items: list[dict[str, Any]],
              task: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """`task(item)` for every item, one Spark task each, on the executors; their (small)
    answers come back in the items' order. Items and answers are JSON."""
    if not items:
        return []
    import pandas as pd

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            answers = [json.dumps(task(json.loads(text))) for text in frame["item"]]
            yield pd.DataFrame({"index": frame["index"], "answer": answers})

    source = spark.createDataFrame(
        [(i, json.dumps(item)) for i, item in enumerate(items)], "index long, item string")
    rows = (source.repartition(len(items), "index")
            .mapInPandas(run, "index long, answer string").collect())
    return [json.loads(row["answer"]) for row in sorted(rows, key=lambda r: r["index"])]


def replace_path(path: Path) -> None:
    """Clear a stage's output, file or folder (the engines write one or the other)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def single_parquet(frame: Any, path: Path) -> None:
    """Write a Spark DataFrame, in its order, as one Parquet file at `path` (the splits stay
    files for train, evaluate and the data version's md5). One task writes it, streaming."""
    staging = path.with_name(f".{path.name}.spark-{os.getpid()}")
    replace_path(staging)
    frame.coalesce(1).write.parquet(str(staging))
    part = next(staging.glob("part-*.parquet"))
    replace_path(path)
    os.replace(part, path)
    shutil.rmtree(staging)
