"""The prediction log: every served record with its prediction, for monitoring.

Requests only put a reference on a queue; a background thread turns batches into Parquet
parts under `<dir>/date=YYYY-MM-DD/`, written to a temporary name and renamed, so a reader
never sees half a file. `close()` drains the queue, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import threading
import time
from pathlib import Path

import pandas as pd

_STOP = object()


def read_log(folder: Path) -> pd.DataFrame:
    """All logged predictions (empty frame if none yet)."""
    parts = sorted(folder.glob("date=*/*.parquet"))
    if not parts:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


class PredictionLog:
    def __init__(self, folder: Path, flush_records: int, flush_seconds: float) -> None:
        self.folder = folder
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.written = 0
        self.failures = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, features: pd.DataFrame, labels: list[int], probabilities: list[float],
               version: str, request_id: str) -> None:
        """Hand one request's records to the writer; costs a queue put on the request path."""
        self._queue.put((features, labels, probabilities, version, request_id,
                         dt.datetime.now(dt.UTC)))

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        pending: list[tuple] = []
        rows = 0
        deadline = time.monotonic() + self.flush_seconds
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is not None and item is not _STOP:
                pending.append(item)
                rows += len(item[0])
            if pending and (item is None or item is _STOP or rows >= self.flush_records):
                self._write(pending)
                pending, rows = [], 0
            if item is None or not pending:
                deadline = time.monotonic() + self.flush_seconds
            if item is _STOP:
                return

    def _write(self, items: list[tuple]) -> None:
        frames = []
        for features, labels, probabilities, version, request_id, at in items:
            frame = features.reset_index(drop=True).copy()
            frame["prediction"] = labels
            frame["probability"] = probabilities
            frame["model_version"] = version
            frame["request_id"] = request_id
            frame["served_at"] = pd.Timestamp(at)
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True)
        now = dt.datetime.now(dt.UTC)
        folder = self.folder / f"date={now.date().isoformat()}"
        self._seq += 1
        name = f"part-{now:%H%M%S%f}-{os.getpid()}-{self._seq:06d}.parquet"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.tmp"
            table.to_parquet(tmp, index=False)
            tmp.rename(folder / name)
            self.written += len(table)
        except OSError:
            self.failures += len(table)  # counted in /metrics; the service keeps serving
