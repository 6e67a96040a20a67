"""The prediction log: every served record with its prediction, for monitoring.

Requests only put a reference on a queue; a background thread turns batches into Parquet
parts under `<dir>/date=YYYY-MM-DD/`, written to a temporary name and renamed, so a reader
never sees half a file. `close()` drains the queue, so a clean shutdown loses nothing.
Each part's name carries the replica's name and process id: replicas sharing one folder (or
one bucket) never overwrite each other, and the drift check reads them all as one window.

Nothing is lost silently. A batch the writer cannot write (a full disk, a value Parquet
refuses) is counted by reason and logged, and the writer goes on with the next; records
that arrive while `max_queued_records` wait, or after the writer stopped, are dropped and
counted the same way (`prediction_log_records_failed{reason=...}`), so memory stays bounded.
A process killed outright (SIGKILL, OOM) loses what it had not written: at most
`max_queued_records` plus one part (`serving.log_flush_records` and one request's records),
or the last `serving.log_flush_seconds` of traffic when it is light.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("serving.prediction_log")
_STOP = object()
# Why records were not written (the `reason` label), besides the writer's own errors, which
# are named by their exception type (OSError, UnicodeEncodeError, ArrowInvalid...).
QUEUE_FULL, WRITER_STOPPED = "queue_full", "writer_stopped"


class PredictionLog:
    def __init__(self, folder: Path, flush_records: int, flush_seconds: float,
                 replica: str = "",
                 on_write: Callable[[int, dict[str, int]], None] | None = None,
                 max_queued_records: int = 100_000) -> None:
        self.folder = folder
        # told the running totals (written, failed by reason) after each part or drop
        self.on_write = on_write
        self.replica = re.sub(r"[^A-Za-z0-9_.-]", "_", replica) or "replica"
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.max_queued_records = max_queued_records
        self.written = 0
        self.failed: dict[str, int] = {}  # records not written, by reason
        self.queued = 0  # records handed over and not yet written or failed
        self._full_at = -float("inf")  # when a record was last dropped on a full queue
        self._lock = threading.Lock()  # queued and failed change on request threads too
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, columns: dict[str, list], answers: dict[str, list], version: str,
               request_id: str, role: str = "champion",
               types: Mapping[str, pa.DataType] | None = None) -> None:
        """Hand one request's features (lists by name) and answers (the task's log columns:
        `prediction` and, e.g., `probability`) to the writer; costs a queue put on the
        request path. `role`: champion (what was served) or shadow (serving.shadow).
        `types`: the Arrow type of each feature, the id and the time, from the contract
        (`log_types`), so a column's type never depends on what a client sent."""
        records = len(answers["prediction"])
        with self._lock:
            dropped = (WRITER_STOPPED if not self._thread.is_alive() else
                       QUEUE_FULL if self.queued + records > self.max_queued_records else None)
            if dropped is None:
                self.queued += records
            else:
                self.failed[dropped] = self.failed.get(dropped, 0) + records
                if dropped == QUEUE_FULL:
                    self._full_at = time.monotonic()
        if dropped is not None:
            self._tell()
            return
        self._queue.put((columns, answers, version, request_id, dt.datetime.now(dt.UTC),
                         role, types or {}))

    def state(self) -> dict[str, object]:
        """What /ready shows: `writing`; `dropping` (the queue was full within the last
        flush interval); or `stopped` (nothing will be written again)."""
        full = time.monotonic() - self._full_at < self.flush_seconds
        state = "stopped" if not self._thread.is_alive() else "dropping" if full else "writing"
        return {"state": state,
                "queued_records": self.queued, "max_queued_records": self.max_queued_records,
                "written_records": self.written, "failed_records": dict(self.failed)}

    def close(self) -> None:
        if self._thread.is_alive():
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
                self._flush(pending, rows)
                pending, rows = [], 0
            if item is None or not pending:
                deadline = time.monotonic() + self.flush_seconds
            if item is _STOP:
                return

    def _flush(self, items: list[tuple], rows: int) -> None:
        """Write one part; on a failure, count and log it and carry on. A value one request
        carried that Parquet refuses fails the part: each request is then written on its own,
        so only that request's records are lost."""
        try:
            self._write(items)
        except Exception as error:
            if len(items) > 1 and not isinstance(error, OSError):
                for item in items:
                    self._flush([item], len(item[1]["prediction"]))
                return
            reason = type(error).__name__
            log.warning("prediction log: %d record(s) not written (%s: %s)", rows, reason,
                        error)
            with self._lock:
                self.failed[reason] = self.failed.get(reason, 0) + rows
                self.queued -= rows
        else:
            with self._lock:
                self.written += rows
                self.queued -= rows
        self._tell()

    def _tell(self) -> None:
        if self.on_write is not None:
            self.on_write(self.written, dict(self.failed))

    def _write(self, items: list[tuple]) -> None:
        # One Arrow table built from plain column lists: a few milliseconds for a flush, where
        # a DataFrame per request plus a concat held the GIL long enough to stall requests.
        columns: dict[str, list] = {}
        # A swap to a version with other features can fall inside one part: every feature
        # any request carried becomes a column, null where a request did not have it.
        names = list(dict.fromkeys(name for item in items for name in item[0]))
        answer_names = list(dict.fromkeys(name for item in items for name in item[1]))
        types: dict[str, pa.DataType] = {}
        for features, answers, version, request_id, at, role, given in items:
            types.update(given)
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
        types["served_at"] = pa.timestamp("us", tz="UTC")
        table = pa.table({name: pa.array(values, type=types.get(name))
                          for name, values in columns.items()})
        now = dt.datetime.now(dt.UTC)
        folder = self.folder / f"date={now.date().isoformat()}"
        self._seq += 1
        name = f"part-{now:%H%M%S%f}-{self.replica}-{os.getpid()}-{self._seq:06d}.parquet"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            tmp.rename(folder / name)
        finally:
            tmp.unlink(missing_ok=True)  # a part that failed half-way leaves nothing


def _microseconds(at: dt.datetime) -> int:
    return int(at.timestamp() * 1_000_000)
