"""The prediction log: every served record with its prediction, for monitoring.

Requests append their values to the columns of the part being gathered (a few list
extends); a background thread, woken once a part's worth has arrived, turns each part into
Parquet under `<dir>/date=YYYY-MM-DD/`, written to a temporary name and renamed, so a reader
never sees half a file. `close()` writes what is gathered, so a clean shutdown loses nothing.
Each part's name carries the replica's name and process id: replicas sharing one folder (or
one bucket) never overwrite each other, and the drift check reads them all as one window.

Nothing is lost silently. A batch the writer cannot write (a full disk, a value Parquet
refuses) is counted by reason and logged, and the writer goes on with the next; records
that arrive while `max_queued_records` wait, or after the writer stopped, are dropped and
counted the same way (`prediction_log_records_failed{reason=...}`), so memory stays bounded.
A process killed outright (SIGKILL, OOM) loses what it had not written: at most
`max_queued_records` (every record handed over and not yet written counts), or the last
`serving.log_flush_seconds` of traffic when it is light.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("serving.prediction_log")
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
        # The parts being gathered, one per contract (its Arrow types), which the writer
        # swaps out whole. It is woken once a part's worth has arrived (or by its timer),
        # never per request: a wake-up per request cost two GIL hand-offs per request, and
        # a part built by the writer from per-request items held the GIL for ~2 ms, which
        # every request in flight waited for (the p99 tail).
        self._gathering: dict[int, _Part] = {}
        self._waiting_records = 0
        self._wake = threading.Event()
        self._stopping = False
        self._seq = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, columns: dict[str, list], answers: dict[str, list], version: str,
               request_id: str, role: str = "champion",
               types: Mapping[str, pa.DataType] | None = None) -> None:
        """Hand one request's features (lists by name) and answers (the task's log columns:
        `prediction` and, e.g., `probability`) to the writer; costs a few list appends on the
        request path. `role`: champion (what was served) or shadow (serving.shadow).
        `types`: the Arrow type of each feature, the id and the time, from the contract
        (`log_types`), so a column's type never depends on what a client sent."""
        records = len(answers["prediction"])
        types = types or NO_TYPES
        with self._lock:
            dropped = (WRITER_STOPPED if self._stopping else
                       QUEUE_FULL if self.queued + records > self.max_queued_records else None)
            if dropped is None:
                self.queued += records
                part = self._gathering.get(id(types))  # the part holds `types`: ids stay
                if part is None:
                    part = self._gathering[id(types)] = _Part(types)
                part.add(columns, answers, (version, request_id, role,
                                            int(time.time() * 1_000_000)), records)
                self._waiting_records += records
                wake = self._waiting_records >= self.flush_records
            else:
                self.failed[dropped] = self.failed.get(dropped, 0) + records
                if dropped == QUEUE_FULL:
                    self._full_at = time.monotonic()
        if dropped is not None:
            self._tell()
        elif wake:
            self._wake.set()

    def state(self) -> dict[str, object]:
        """What /ready shows: `writing`; `dropping` (the queue was full within the last
        flush interval); or `stopped` (nothing will be written again)."""
        full = time.monotonic() - self._full_at < self.flush_seconds
        state = "stopped" if not self._thread.is_alive() else "dropping" if full else "writing"
        return {"state": state,
                "queued_records": self.queued, "max_queued_records": self.max_queued_records,
                "written_records": self.written, "failed_records": dict(self.failed)}

    def close(self) -> None:
        """Write what was handed over, then stop; later records are dropped and counted."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._write_parts()
        finally:  # whatever ended it, later records are counted as writer_stopped
            with self._lock:
                self._stopping = True

    def _write_parts(self) -> None:
        while True:
            # A part's worth wakes the writer; light traffic waits at most flush_seconds.
            self._wake.wait(timeout=self.flush_seconds)
            self._wake.clear()
            with self._lock:
                parts, self._gathering = list(self._gathering.values()), {}
                self._waiting_records = 0
                stopping = self._stopping
            for part in parts:
                self._flush(part)
            if stopping:
                return

    def _flush(self, part: _Part) -> None:
        """Write one part; on a failure, count and log it and carry on. A value one request
        carried that Parquet refuses fails the part: each request is then written on its own,
        so only that request's records are lost."""
        try:
            self._write(part)
        except Exception as error:
            if len(part.sizes) > 1 and not isinstance(error, OSError):
                for request in part.requests():
                    self._flush(request)
                return
            reason = type(error).__name__
            log.warning("prediction log: %d record(s) not written (%s: %s)", part.records,
                        reason, error)
            with self._lock:
                self.failed[reason] = self.failed.get(reason, 0) + part.records
                self.queued -= part.records
        else:
            with self._lock:
                self.written += part.records
                self.queued -= part.records
        self._tell()

    def _tell(self) -> None:
        if self.on_write is not None:
            self.on_write(self.written, dict(self.failed))

    def _write(self, part: _Part) -> None:
        types = {**part.types, "served_at": pa.timestamp("us", tz="UTC")}
        table = pa.table({name: pa.array(values, type=types.get(name))
                          for name, values in part.columns.items()})
        now = dt.datetime.now(dt.UTC)
        folder = self.folder / f"date={now.date().isoformat()}"
        self._seq += 1
        name = part_name(now, self.replica, self._seq)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            tmp.rename(folder / name)
        finally:
            tmp.unlink(missing_ok=True)  # a part that failed half-way leaves nothing



def part_name(now: dt.datetime, replica: str, seq: int) -> str:
    """A part's file name: the time, the writer (replica, process) and its sequence number,
    so writers sharing one folder never collide (batch jobs too: serving.batch)."""
    return f"part-{now:%H%M%S%f}-{replica}-{os.getpid()}-{seq:06d}.parquet"


NO_TYPES: Mapping[str, pa.DataType] = MappingProxyType({})
META_COLUMNS = ("model_version", "request_id", "role", "served_at")


class _Part:
    """The columns of the requests gathered for one part, for one contract (its Arrow
    types): plain lists, each request's values appended as it is handed over."""

    def __init__(self, types: Mapping[str, pa.DataType]) -> None:
        self.types = types
        self.meta: tuple[list, ...] = tuple([] for _ in META_COLUMNS)
        self.columns: dict[str, list] = dict(zip(META_COLUMNS, self.meta, strict=True))
        self.sizes: list[int] = []  # records per request: a refused part is split by them
        self.records = 0

    def add(self, features: Mapping[str, list], answers: Mapping[str, list],
            meta: tuple[str, str, str, int], records: int) -> None:
        columns = self.columns
        for values in (features, answers):
            for name, column_values in values.items():
                column = columns.get(name)
                if column is None:  # a column earlier requests did not carry: null there
                    column = columns[name] = [None] * self.records
                column.extend(column_values)
        if records == 1:  # the common case, without a list per value
            for column, value in zip(self.meta, meta, strict=True):
                column.append(value)
        else:
            for column, value in zip(self.meta, meta, strict=True):
                column.extend([value] * records)
        self.records += records
        self.sizes.append(records)
        if len(features) + len(answers) + len(META_COLUMNS) != len(columns):
            for column in columns.values():  # one this request did not carry: null here
                column.extend([None] * (self.records - len(column)))

    def requests(self) -> list[_Part]:
        """One part per request, in order."""
        parts, start = [], 0
        for size in self.sizes:
            part = _Part(self.types)
            part.columns = {name: values[start:start + size]
                            for name, values in self.columns.items()}
            part.sizes, part.records = [size], size
            parts.append(part)
            start += size
        return parts
