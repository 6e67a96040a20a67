"""The prediction log's format, shared by the service that writes it and the monitoring that
reads it: Parquet files under `<serving.prediction_log_dir>/date=YYYY-MM-DD/` (the UTC day
they were written), one row per served record (its features, its id under the schema's
`id_column` when the request carried one, the task's answer columns: `prediction` with
`probability` (binary) or `probabilities`, one per class in the schema's order (multiclass),
or the value alone (regression); `model_version`, `request_id`, `served_at`; `role`,
champion or shadow; `source: batch` on the records a batch job scored, with the job's id as
their `request_id`, absent on the service's).

The service writes parts, `part-<time>-<replica>-<pid>-<seq>.parquet`, each written under a
hidden name and renamed, so a part is whole or absent. Compaction (`python -m
mlpipeline.prediction_log compact`, `make compact-log`, and every CT cycle) merges a day's
parts into one file, `day-<generation>.parquet`, whose Parquet metadata lists every part (and
earlier day file) it holds. A reader reads a day's newest day file plus the parts it does not
list, so at every moment each row is read once: before the new day file is renamed into place
the parts are read, after it the day file, and the merged parts are deleted only then. A
crash at any point loses nothing and duplicates nothing; the next compaction finishes the
deletions. `serving.log_retention_days` removes whole days older than that.

Each feature's column has the type the model's contract gives it (`log_types`: a number is
float64, a category and the id text), whatever a client sent. Readers and compaction
conform older parts (Arrow's permissive promotion: int64 and float64 give float64) to it.
A file that cannot be read or conformed (0 bytes, corrupt, a column of another type) and a
partition whose name is not a date are moved to `<log>/_quarantine/`, named on stderr and
counted, so one bad file never stops compaction, the drift check or a CT cycle. The leading
underscore keeps it out of what Arrow, pandas and Spark read as the dataset
(`pd.read_parquet(log)` reads the log, not the quarantine); a `quarantine/` left by an older
version is moved there at the next compaction. Anything else in the folder that is neither
a part nor a day file (`not_read`) stays where it is and is named and counted by every drift
check, so nothing in the log is skipped without a name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mlpipeline.schema import Schema

DAY_PREFIX = "date="
PART_GLOB, DAY_FILE_GLOB = "part-*.parquet", "day-*.parquet"
MERGED_KEY = b"mlops.merged"  # a day file's metadata: the names of the files it holds
ROW_GROUP_ROWS = 100_000  # compacted row groups: large enough to read fast, small to filter
LOCK = ".compact.lock"
ATTEMPTS = 5  # listings a reader tries while compactions switch files under it
# <log>/_quarantine/: what could not be read, kept for a person ("_": not part of the dataset
# for Arrow's, pandas' and Spark's discovery, which skip names starting with "_" or ".")
QUARANTINE = "_quarantine"
LEGACY_QUARANTINE = "quarantine"  # where versions before 2026-12 put it, inside the dataset


def log_types(schema: Schema) -> dict[str, pa.DataType]:
    """The Arrow type of each feature, and of the id and time columns, in the log."""
    arrow = {"numeric": pa.float64(), "boolean": pa.bool_(), "categorical": pa.string()}
    types = {spec.name: arrow[spec.type] for spec in schema.features}
    return {**types, **dict.fromkeys(schema.logged_columns, pa.string())}


def day_of(folder: Path) -> dt.date:
    return dt.date.fromisoformat(folder.name.removeprefix(DAY_PREFIX))


def days(log: Path, since: dt.date | None = None, until: dt.date | None = None,
         quarantined: list[str] | None = None) -> list[Path]:
    """The day partitions, oldest first, from `since` to `until` (inclusive) when given.
    A partition whose name is not a date goes to quarantine (appended to `quarantined`)."""
    found = []
    for folder in sorted(p for p in log.glob(f"{DAY_PREFIX}*") if p.is_dir()):
        try:
            found.append((day_of(folder), folder))
        except ValueError:
            quarantine(log, folder, "the partition's name is not a date (date=YYYY-MM-DD)",
                       quarantined)
    return [p for day, p in found if (since is None or day >= since)
            and (until is None or day <= until)]


def quarantine(log: Path, path: Path, reason: str, noted: list[str] | None = None) -> None:
    """Move a file or partition the log cannot use to `<log>/_quarantine/` (under its day's
    name), say so on stderr and append its name there to `noted` (nothing when another
    process moved it first)."""
    # Under its day's name, never over an earlier one of the same name.
    target = _free_name(log / QUARANTINE / (path.parent.name if path.parent != log else "")
                        / path.name)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return
    name = target.relative_to(log).as_posix()
    print(f"prediction log: moved {path.relative_to(log).as_posix()} to {name}: {reason}",
          file=sys.stderr)
    if noted is not None:
        noted.append(name)


def _conformed(log: Path, files: Iterable[Path], types: Mapping[str, pa.DataType] | None,
               quarantined: list[str] | None = None) -> tuple[list[Path], pa.Schema]:
    """The files that can be read as one table, and its schema: the contract's types for
    the columns they have, other columns promoted (int64 and float64: float64; all-null
    columns: the others' type; a column a file lacks: null there). A file that cannot be
    read or conformed goes to quarantine (its name appended to `quarantined`)."""
    usable: list[Path] = []
    unified = pa.schema([])
    for file in files:
        try:
            schema = pq.read_schema(file)
            _check_contract(schema, types or {})
            schema = pa.unify_schemas([unified, schema], promote_options="permissive")
        except FileNotFoundError:
            raise  # a compaction switched files under the reader: it lists again
        except (pa.ArrowException, OSError) as error:
            quarantine(log, file, f"{type(error).__name__}: {error}", quarantined)
            continue
        usable.append(file)
        unified = schema
    return usable, pa.schema([pa.field(f.name, types[f.name]) if types and f.name in types
                              else f for f in unified])


def _check_contract(schema: pa.Schema, types: Mapping[str, pa.DataType]) -> None:
    """Raise ArrowTypeError when a column cannot take the contract's type (text where a
    number belongs); promotable ones (int64, null) pass."""
    fields = [field for field in schema if field.name in types]
    if fields:
        pa.unify_schemas([pa.schema(fields), pa.schema([(f.name, types[f.name])
                                                          for f in fields])],
                         promote_options="permissive")


def merged_names(day_file: Path) -> set[str]:
    metadata = pq.read_schema(day_file).metadata or {}
    return set(json.loads(metadata.get(MERGED_KEY, b"[]")))


def day_files(day: Path) -> list[Path]:
    """What a reader reads for one day: its newest day file and the parts it does not hold."""
    compacted, held = _day_files_held(day)
    return compacted[-1:] + [p for p in sorted(day.glob(PART_GLOB)) if p.name not in held]


def _day_files_held(day: Path) -> tuple[list[Path], set[str]]:
    """A day's day files, oldest first, and the names the newest holds. A newest day file
    whose footer cannot be read goes to quarantine, and the next one down counts."""
    while compacted := sorted(day.glob(DAY_FILE_GLOB)):
        try:
            return compacted, merged_names(compacted[-1])
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as error:
            quarantine(day.parent, compacted[-1], f"{type(error).__name__}: {error}")
    return [], set()


SHADOW = "shadow"  # the `role` of a row a shadow model answered (registry tag `shadow: true`)


def read_log(log: Path, since: dt.datetime | None = None, until: dt.datetime | None = None,
             columns: list[str] | None = None, *, shadow: bool = False,
             types: Mapping[str, pa.DataType] | None = None) -> pd.DataFrame:
    """Logged predictions served from `since` to `until` (both optional), every replica's,
    as one table; only the days in that span are opened, and Parquet's row-group statistics
    skip the rest. `columns` limits what is read (those present). Empty frame if none.
    The shadow model's answers (role `shadow`) are left out unless `shadow`: what was
    served is the champion's. `types` (`log_types` of the schema): the columns' types."""
    table = read_log_table(log, since, until, columns, shadow=shadow, types=types)
    return pd.DataFrame() if table is None else table.to_pandas()


def read_log_table(log: Path, since: dt.datetime | None = None,
                   until: dt.datetime | None = None, columns: list[str] | None = None,
                   *, shadow: bool = False, types: Mapping[str, pa.DataType] | None = None,
                   request_id: str | None = None) -> pa.Table | None:
    """As read_log, as an Arrow table (None: nothing logged in the span). A compaction may
    delete parts between the listing and the reading: then the day is listed again.
    `request_id`: only that request's records (a batch job's, by its id)."""
    for _ in range(ATTEMPTS - 1):
        try:
            return _read_log_table(log, since, until, columns, shadow, types, request_id)
        except FileNotFoundError:
            continue
    return _read_log_table(log, since, until, columns, shadow, types, request_id)


@dataclass
class LogScan:
    """What a reader of a span reads: the files, their one schema, the rows' filter and the
    columns wanted. `read` reads some of the files as one table."""
    files: list[Path]
    schema: pa.Schema
    condition: ds.Expression | None
    wanted: list[str] | None

    def read(self, files: list[Path] | None = None) -> pa.Table:
        dataset = ds.dataset([str(f) for f in (self.files if files is None else files)],
                             schema=self.schema, format="parquet")
        return dataset.to_table(columns=self.wanted, filter=self.condition)


def _scan(log: Path, since: dt.datetime | None, until: dt.datetime | None,
          columns: list[str] | None, shadow: bool, types: Mapping[str, pa.DataType] | None,
          request_id: str | None = None) -> LogScan:
    # A record lies in the partition of the day it was written: its serving day, or the next
    # when it was served just before midnight and flushed after.
    last_day = until.date() + dt.timedelta(days=1) if until is not None else None
    listed = [f for day in days(log, since and since.date(), last_day) for f in day_files(day)]
    # One schema for all files: a part whose column is all null has type null, a part from
    # before a swap to another contract lacks a feature, a client sent 9 where another sent
    # 9.0 (parts written before the log typed columns by the contract).
    files, schema = _conformed(log, listed, types)
    served = ds.field("served_at")
    condition = None
    if since is not None:
        condition = served >= pa.scalar(since, pa.timestamp("us", tz="UTC"))
    if until is not None:
        bound = served <= pa.scalar(until, pa.timestamp("us", tz="UTC"))
        condition = bound if condition is None else condition & bound
    if not shadow and "role" in schema.names:
        served_rows = ds.field("role").is_null() | (ds.field("role") != SHADOW)
        condition = served_rows if condition is None else condition & served_rows
    if request_id is not None:
        one = ds.field("request_id") == request_id
        condition = one if condition is None else condition & one
    wanted = None if columns is None else [c for c in columns if c in schema.names]
    return LogScan(files, schema, condition, wanted)


def _read_log_table(log: Path, since: dt.datetime | None, until: dt.datetime | None,
                    columns: list[str] | None, shadow: bool,
                    types: Mapping[str, pa.DataType] | None,
                    request_id: str | None = None) -> pa.Table | None:
    scan = _scan(log, since, until, columns, shadow, types, request_id)
    if not scan.files:
        return None
    try:
        return scan.read()
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError):
        # A footer that reads but pages that do not (a part damaged on disk): find it, move
        # it away, read the rest.
        damaged = 0
        for file in scan.files:
            try:
                scan.read([file])
            except FileNotFoundError:
                raise
            except (pa.ArrowException, OSError) as error:
                quarantine(log, file, f"{type(error).__name__}: {error}")
                damaged += 1
        if not damaged:  # not one file's fault: say what it is
            raise
        return _read_log_table(log, since, until, columns, shadow, types, request_id)


def sample_positions(rows: int, limit: int) -> np.ndarray:
    """Which of a span's `rows` rows a check of at most `limit` rows reads: a seeded draw,
    in the log's order (the same rows on both engines)."""
    if rows <= limit:
        return np.arange(rows)
    return np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))


def sampled_log_table(log: Path, since: dt.datetime | None, until: dt.datetime | None,
                      columns: list[str], types: Mapping[str, pa.DataType], limit: int,
                      request_id: str | None = None, spark: SparkSession | None = None
                      ) -> tuple[pa.Table | None, int]:
    """At most `limit` of the rows served in the span (sample_positions) and how many there
    were. With a Spark session each log file is read by a task on the cluster, twice (its
    rows counted, then its drawn rows taken): only the sample comes to this process."""
    if spark is not None:
        scan = _scan(log, since, until, columns, False, types, request_id)
        found = _sampled_on_spark(scan, limit, spark) if scan.files else (None, 0)
        if found is not None:
            return found
    table = read_log_table(log, since, until, columns, types=types, request_id=request_id)
    rows = 0 if table is None else table.num_rows
    # Sampled before pandas: converting two million rows costs more than the test.
    return (None if table is None else table.take(sample_positions(rows, limit))), rows


def _sampled_on_spark(scan: LogScan, limit: int, spark: SparkSession
                      ) -> tuple[pa.Table, int] | None:
    """None when a file cannot be read there: the reader in process sets it aside."""
    import base64

    from mlpipeline.engine import each_task

    def count(item: dict) -> dict:
        try:
            return {"rows": scan.read([Path(item["path"])]).num_rows}
        except (pa.ArrowException, OSError) as error:
            return {"error": f"{type(error).__name__}: {error}"}

    def take(item: dict) -> dict:
        try:  # a compaction may have merged the file away since it was counted
            table = scan.read([Path(item["path"])]).take(item["positions"])
        except (pa.ArrowException, OSError) as error:
            return {"error": f"{type(error).__name__}: {error}"}
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table)
        return {"arrow": base64.b64encode(sink.getvalue().to_pybytes()).decode()}

    files = [{"path": str(f.resolve())} for f in scan.files]
    counted = each_task(spark, files, count)
    if any("error" in c for c in counted):
        return None
    sizes = np.array([c["rows"] for c in counted])
    wanted = sample_positions(int(sizes.sum()), limit)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    chosen = [{**f, "positions": (wanted[(wanted >= lo) & (wanted < hi)] - lo).tolist()}
              for f, lo, hi in zip(files, starts[:-1], starts[1:], strict=True)]
    taken = each_task(spark, [c for c in chosen if c["positions"]], take)
    if any("error" in t for t in taken):
        return None
    tables = [pa.ipc.open_stream(base64.b64decode(t["arrow"])).read_all() for t in taken]
    return (pa.concat_tables(tables) if tables else scan.read([]).slice(0, 0)), int(sizes.sum())


def not_read(log: Path) -> list[str]:
    """What lies in the log folder that no reader reads and nothing moves aside, relative to
    it: a file or folder beside the `date=YYYY-MM-DD` partitions, and in them anything but
    `part-*.parquet` and `day-*.parquet` (a zero-byte `zero.parquet`, notes, a subfolder).
    Files being written (hidden `.*.tmp`) and the compaction's lock are the log's own."""
    if not log.is_dir():
        return []
    found = []
    for entry in sorted(log.iterdir()):
        if entry.name in (QUARANTINE, LOCK):
            continue
        if entry.is_dir() and entry.name.startswith(DAY_PREFIX):
            try:
                day_of(entry)
            except ValueError:  # a reader moves it to quarantine when it lists the days
                found.append(entry.name + "/")
                continue
            found += [f"{entry.name}/{inner.name}" + ("/" if inner.is_dir() else "")
                      for inner in sorted(entry.iterdir()) if not _log_file(inner)]
        else:
            found.append(entry.name + ("/" if entry.is_dir() else ""))
    return found


def _log_file(path: Path) -> bool:
    """A day's part, day file, or one being written (hidden, .tmp)."""
    if path.is_dir():
        return False
    name = path.name
    return (path.match(PART_GLOB) or path.match(DAY_FILE_GLOB)
            or (name.startswith(".") and name.endswith(".tmp")))


def _move_legacy_quarantine(log: Path) -> None:
    """An older version's `<log>/quarantine/` (inside the dataset) into `_quarantine/`, never
    over a file of the same name there."""
    legacy = log / LEGACY_QUARANTINE
    if not legacy.is_dir():
        return
    (log / QUARANTINE).mkdir(exist_ok=True)
    for entry in sorted(legacy.iterdir()):
        target = log / QUARANTINE / entry.name
        if not target.exists():
            os.rename(entry, target)
            continue
        for inner in (p for p in sorted(entry.rglob("*")) if p.is_file()):
            os.rename(inner, _free_name(target / inner.relative_to(entry)))
    shutil.rmtree(legacy)  # only folders are left in it


def _free_name(target: Path) -> Path:
    """`target`, or `target.N` for the first N that is free (its folder made)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    name = target.name
    for n in range(1, 1000):
        if not target.exists():
            break
        target = target.with_name(f"{name}.{n}")
    return target


@dataclass
class Compaction:
    days: int = 0  # day partitions that got a new day file
    parts: int = 0  # parts merged into them
    rows: int = 0  # rows in those day files
    removed_days: int = 0  # removed by retention
    quarantined: list[str] = field(default_factory=list)  # moved to _quarantine/

    def describe(self, log: Path, retention_days: int | None) -> str:
        kept = (f"; {self.removed_days} day(s) older than {retention_days} days removed "
                "(serving.log_retention_days)" if self.removed_days else "")
        if self.quarantined:
            kept += (f"; {len(self.quarantined)} unreadable file(s) or partition(s) moved "
                     f"to {log / QUARANTINE}")
        if not self.parts:
            return f"prediction log: no new part to merge{kept} ({log})"
        return (f"prediction log: {self.parts} parts merged into {self.days} day file(s) "
                f"({self.rows} rows){kept} -> {log}")


def compact(log: Path, retention_days: int | None = None, today: dt.date | None = None,
            types: Mapping[str, pa.DataType] | None = None) -> Compaction:
    """Merge each day's parts into one day file, its columns of the contract's `types`
    (`log_types`); remove days past the retention; quarantine what cannot be read."""
    result = Compaction()
    if not log.is_dir():
        return result
    today = today or dt.datetime.now(dt.UTC).date()
    with _locked(log):
        _move_legacy_quarantine(log)
        for day in days(log, quarantined=result.quarantined):
            if retention_days is not None and day_of(day) < today - dt.timedelta(
                    days=retention_days):
                shutil.rmtree(day)
                result.removed_days += 1
                continue
            merged = _compact_day(day, types, result.quarantined)
            if merged:
                result.days += 1
                result.parts += merged[0]
                result.rows += merged[1]
    return result


class _Damaged(Exception):
    def __init__(self, source: Path, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.source = source


def _batches(source: Path) -> Iterator[pa.RecordBatch]:
    """A file's rows, a row group's worth at a time; a read error names the file."""
    try:
        yield from pq.ParquetFile(source).iter_batches(batch_size=ROW_GROUP_ROWS)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as error:
        raise _Damaged(source, error) from error


def _compact_day(day: Path, types: Mapping[str, pa.DataType] | None,
                 quarantined: list[str]) -> tuple[int, int] | None:
    """(parts merged, rows) for one day, or None when it had no new part."""
    _finish_deletions(day)
    files, schema = _conformed(day.parent, day_files(day), types, quarantined)
    parts = [f for f in files if f.name.startswith("part-")]
    if not parts:
        return None
    previous = [f for f in files if f.name.startswith("day-")]
    generation = int(previous[0].stem.removeprefix("day-")) + 1 if previous else 1
    held = sorted({*(merged_names(previous[0]) if previous else set()),
                   *(f.name for f in files)})
    schema = schema.with_metadata({MERGED_KEY: json.dumps(held).encode()})
    target = day / f"day-{generation:06d}.parquet"
    tmp = day / f".{target.name}.tmp"  # hidden: readers list *.parquet without a dot
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            pending: list[pa.RecordBatch] = []
            for source in files:  # one file at a time: memory stays about a row group's
                for batch in _batches(source):
                    pending.append(_conform(batch, schema))
                    rows += batch.num_rows
                    if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS:
                        writer.write_table(pa.Table.from_batches(pending, schema))
                        pending = []
            if pending:
                writer.write_table(pa.Table.from_batches(pending, schema))
    except _Damaged as damaged:  # its footer read, its pages do not: set it aside, again
        tmp.unlink(missing_ok=True)
        quarantine(day.parent, damaged.source, str(damaged), quarantined)
        return _compact_day(day, types, quarantined)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)  # the switch: from now on readers read the day file
    _finish_deletions(day)
    return len(parts), rows


def _finish_deletions(day: Path) -> None:
    """Delete what the newest day file holds (parts, older day files) and stray temporaries."""
    for stray in day.glob(".day-*.tmp"):
        stray.unlink(missing_ok=True)  # a compaction that died before its rename
    compacted, held = _day_files_held(day)
    for path in [*compacted[:-1], *day.glob(PART_GLOB)]:
        if path.name in held:
            path.unlink(missing_ok=True)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch with the day's unified columns (missing ones null, types promoted)."""
    arrays = [batch.column(name).cast(field.type) if name in batch.schema.names
              else pa.nulls(batch.num_rows, field.type)
              for name, field in zip(schema.names, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@contextlib.contextmanager
def _locked(log: Path) -> Iterator[None]:
    """One compaction at a time per log folder (a CT cycle and `make compact-log`)."""
    with (log / LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
    from mlpipeline.config import load_params

    parser = argparse.ArgumentParser(prog="python -m mlpipeline.prediction_log",
                                     description="The prediction log's lifecycle.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("compact", help="merge each day's parts into one file; apply the "
                                   "retention (serving.log_retention_days)")
    parser.parse_args(argv)
    params = load_params()
    log = params.path(params.serving.prediction_log_dir)
    retention = params.serving.log_retention_days
    print(compact(log, retention, types=log_types(params.schema)).describe(log, retention))


if __name__ == "__main__":
    main()
