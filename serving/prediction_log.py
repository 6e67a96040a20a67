"""The prediction log: every served record with its prediction, for monitoring.

Requests only put a reference on a queue; a background thread turns batches into Parquet
parts under `<dir>/date=YYYY-MM-DD/`, written to a temporary name and renamed, so a reader
never sees half a file. `close()` drains the queue, so a clean shutdown loses nothing.
Each part's name carries the replica's name and process id: replicas sharing one folder (or
one bucket) never overwrite each other, and the drift check reads them all as one window.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_STOP = object()


class PredictionLog:
    def __init__(self, folder: Path, flush_records: int, flush_seconds: float,
                 replica: str = "",
                 on_write: Callable[[int, int], None] | None = None) -> None:
        self.folder = folder
        self.on_write = on_write  # told the running totals (written, failed) after each part
        self.replica = re.sub(r"[^A-Za-z0-9_.-]", "_", replica) or "replica"
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.written = 0
        self.failures = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, columns: dict[str, list], answers: dict[str, list], version: str,
               request_id: str, role: str = "champion") -> None:
        """Hand one request's features (lists by name) and answers (the task's log columns:
        `prediction` and, e.g., `probability`) to the writer; costs a queue put on the
        request path. `role`: champion (what was served) or shadow (promotion.mode shadow)."""
        self._queue.put((columns, answers, version, request_id, dt.datetime.now(dt.UTC),
                         role))

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
                rows += len(item[1]["prediction"])
            if pending and (item is None or item is _STOP or rows >= self.flush_records):
                self._write(pending)
                pending, rows = [], 0
            if item is None or not pending:
                deadline = time.monotonic() + self.flush_seconds
            if item is _STOP:
                return

    def _write(self, items: list[tuple]) -> None:
        # One Arrow table built from plain column lists: a few milliseconds for a flush, where
        # a DataFrame per request plus a concat held the GIL long enough to stall requests.
        columns: dict[str, list] = {}
        # A swap to a version with other features can fall inside one part: every feature
        # any request carried becomes a column, null where a request did not have it.
        names = list(dict.fromkeys(name for item in items for name in item[0]))
        answer_names = list(dict.fromkeys(name for item in items for name in item[1]))
        for features, answers, version, request_id, at, role in items:
            n = len(answers["prediction"])
            for name in names:
                columns.setdefault(name, []).extend(features.get(name) or [None] * n)
            for name in answer_names:
                columns.setdefault(name, []).extend(answers.get(name) or [None] * n)
            columns.setdefault("model_version", []).extend([version] * n)
            columns.setdefault("request_id", []).extend([request_id] * n)
            columns.setdefault("role", []).extend([role] * n)
            # As microseconds: Arrow converts a list of ints ~8x faster than of datetimes,
            # and this thread shares the GIL with the requests.
            columns.setdefault("served_at", []).extend([_microseconds(at)] * n)
        served_at = pa.array(columns.pop("served_at"), type=pa.timestamp("us", tz="UTC"))
        table = pa.table({**columns, "served_at": served_at})
        now = dt.datetime.now(dt.UTC)
        folder = self.folder / f"date={now.date().isoformat()}"
        self._seq += 1
        name = f"part-{now:%H%M%S%f}-{self.replica}-{os.getpid()}-{self._seq:06d}.parquet"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.tmp"
            pq.write_table(table, tmp)
            tmp.rename(folder / name)
            self.written += table.num_rows
        except OSError:
            self.failures += table.num_rows  # counted in /metrics; the service keeps serving
        if self.on_write is not None:
            self.on_write(self.written, self.failures)


def _microseconds(at: dt.datetime) -> int:
    return int(at.timestamp() * 1_000_000)
