"""The prediction log's lifecycle as plain files: compaction keeps every row once, whatever
a reader or a crash meets; retention; reading only a window's days; one type per column and
bad files set aside; the service's writer, which counts what it cannot write and goes on."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpipeline.prediction_log import (
    QUARANTINE,
    compact,
    day_files,
    log_types,
    not_read,
    read_log,
)
from mlpipeline.schema import Schema
from serving.prediction_log import PredictionLog

UTC = dt.UTC


def part(log: Path, day: str, name: str, ages: list[float], served: dt.datetime,
         **extra: list) -> None:
    """A part as the service writes it: whole, under its final name."""
    folder = log / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"age": ages, **extra, "served_at": pa.array(
        [served] * len(ages), pa.timestamp("us", tz="UTC"))})
    pq.write_table(table, folder / f"part-{name}.parquet")


def filled(log: Path) -> list[float]:
    """Three days of parts: 300 rows in all, one part with a column the others lack."""
    ages: list[float] = []
    for d, day in enumerate(("2026-11-30", "2026-12-01", "2026-12-02")):
        for p in range(5):
            batch = [float(100 * d + 20 * p + i) for i in range(20)]
            extra = {"has_cosigner": ["yes"] * 20} if (d, p) == (1, 3) else {}
            served = dt.datetime.fromisoformat(f"{day}T12:0{p}:00+00:00")
            part(log, day, f"{p:03d}", batch, served, **extra)
            ages += batch
    return ages


def test_compaction_makes_one_file_a_day_and_keeps_every_row(tmp_path: Path) -> None:
    ages = filled(tmp_path)
    result = compact(tmp_path, today=dt.date(2026, 12, 2))
    assert (result.days, result.parts, result.rows) == (3, 15, 300)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("date=*/*"))
    assert files == [f"date={d}/day-000001.parquet"
                     for d in ("2026-11-30", "2026-12-01", "2026-12-02")]
    log = read_log(tmp_path)
    assert sorted(log["age"]) == sorted(ages)
    assert log["has_cosigner"].notna().sum() == 20  # a column one part had, null elsewhere
    # New parts after compaction are read beside the day file, then merged into the next.
    part(tmp_path, "2026-12-02", "late", [999.0], dt.datetime(2026, 12, 2, 23, tzinfo=UTC))
    assert len(read_log(tmp_path)) == 301
    assert compact(tmp_path, today=dt.date(2026, 12, 2)).parts == 1
    assert [p.name for p in (tmp_path / "date=2026-12-02").iterdir()] == ["day-000002.parquet"]
    assert sorted(read_log(tmp_path)["age"]) == sorted([*ages, 999.0])
    assert compact(tmp_path).days == 0  # nothing new: nothing rewritten


def test_a_crash_at_any_point_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    ages = filled(tmp_path)
    day = tmp_path / "date=2026-12-01"
    # Died while writing: a hidden temporary that no reader lists, removed next time.
    (day / ".day-000001.parquet.tmp").write_bytes(b"half a file")
    assert sorted(read_log(tmp_path)["age"]) == sorted(ages)
    # Died after the switch, before deleting the parts it merged: they are not read twice.
    real_unlink = Path.unlink

    def crash(self: Path, missing_ok: bool = False) -> None:
        if self.name.startswith("part-"):
            raise KeyboardInterrupt("killed")
        real_unlink(self, missing_ok=missing_ok)

    Path.unlink = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            compact(tmp_path)
    finally:
        Path.unlink = real_unlink  # type: ignore[method-assign]
    assert any(day.glob("part-*")) and any((tmp_path / "date=2026-11-30").glob("day-*"))
    assert sorted(read_log(tmp_path)["age"]) == sorted(ages)
    compact(tmp_path)  # finishes the deletions, merges what is left
    assert sorted(read_log(tmp_path)["age"]) == sorted(ages)
    assert not list(tmp_path.glob("date=*/part-*")) and not list(tmp_path.glob("date=*/.*.tmp"))


def test_a_reader_during_compaction_sees_every_row_once(tmp_path: Path) -> None:
    for p in range(200):  # a day of many small parts, as traffic leaves them
        part(tmp_path, "2026-12-02", f"{p:04d}", [float(p)] * 50,
             dt.datetime(2026, 12, 2, 1, tzinfo=UTC))
    counts: list[int] = []
    errors: list[Exception] = []
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            try:
                counts.append(len(read_log(tmp_path)))
            except Exception as error:  # a failed read is a failure of the reader's promise
                errors.append(error)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        compact(tmp_path)
    finally:
        done.set()
        reader.join()
    counts.append(len(read_log(tmp_path)))
    assert errors == [] and len(counts) > 1 and set(counts) == {10_000}


def test_retention_removes_whole_old_days(tmp_path: Path) -> None:
    filled(tmp_path)
    result = compact(tmp_path, retention_days=1, today=dt.date(2026, 12, 2))
    assert result.removed_days == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "date=2026-12-01", "date=2026-12-02"]
    assert "1 day(s) older than 1 days removed" in result.describe(tmp_path, 1)


def test_a_window_opens_only_its_days(tmp_path: Path) -> None:
    filled(tmp_path)
    (tmp_path / "date=2026-11-30" / "part-broken.parquet").write_bytes(b"not parquet")
    since = dt.datetime(2026, 12, 1, 0, tzinfo=UTC)
    until = dt.datetime(2026, 12, 1, 12, 2, tzinfo=UTC)
    window = read_log(tmp_path, since, until)  # the broken day is never opened
    assert sorted(window["age"]) == [float(a) for a in range(100, 160)]
    assert list(read_log(tmp_path, since, until, columns=["age", "absent"]).columns) == ["age"]
    assert read_log(tmp_path, dt.datetime(2027, 1, 1, tzinfo=UTC)).empty
    assert (tmp_path / "date=2026-11-30" / "part-broken.parquet").exists()
    assert len(read_log(tmp_path)) == 300  # reading everything meets it: set aside, not fatal
    assert (tmp_path / "_quarantine/date=2026-11-30/part-broken.parquet").exists()
    assert len(day_files(tmp_path / "date=2026-12-01")) == 5


SCHEMA = Schema.model_validate({
    "task": "binary", "target": "default", "classes": [0, 1], "time_column": "at",
    "id_column": "application_id",
    "features": [{"name": "age", "type": "numeric", "min": 0, "max": 120},
                 {"name": "region", "type": "categorical", "categories": ["north", "south"]}]})
TYPES = log_types(SCHEMA)
NOON = dt.datetime(2026, 12, 2, 12, tzinfo=UTC)


def test_log_types_follow_the_contract() -> None:
    assert log_types(SCHEMA) == {"age": pa.float64(), "region": pa.string(),
                                 "application_id": pa.string(), "at": pa.string()}


def test_int_then_float_parts_read_and_compact_as_the_contract_types(tmp_path: Path) -> None:
    """Parts written before the log typed its columns took them from what clients sent: 9
    in one request and 9.5 in the next gave int64 and double parts."""
    part(tmp_path, "2026-12-02", "a", [9, 10], NOON)
    part(tmp_path, "2026-12-02", "b", [9.5], NOON, application_id=["x"])
    part(tmp_path, "2026-12-02", "c", [None], NOON)  # an all-null column: type null
    assert pq.read_schema(tmp_path / "date=2026-12-02/part-a.parquet").field("age").type == (
        pa.int64())
    log = read_log(tmp_path, types=TYPES)
    assert log["age"].tolist()[:3] == [9.0, 10.0, 9.5] and log["age"].isna().tolist()[3]
    assert log["age"].dtype == "float64" and len(read_log(tmp_path)) == 4  # types or not
    result = compact(tmp_path, types=TYPES)
    assert (result.parts, result.rows, result.quarantined) == (3, 4, [])
    [day_file] = (tmp_path / "date=2026-12-02").glob("day-*.parquet")
    schema = pq.read_schema(day_file)
    assert (schema.field("age").type, schema.field("application_id").type) == (
        pa.float64(), pa.string())
    assert read_log(tmp_path)["application_id"].tolist() == [None, None, "x", None]


def test_unreadable_files_and_partitions_are_quarantined_not_fatal(tmp_path: Path) -> None:
    """A 0-byte part (a writer killed on a shared volume), a corrupt one, one whose pages are
    damaged behind a good footer, a column of another type, a partition that is not a date:
    each is moved to _quarantine/ and named; every good row is still read and compacted."""
    ages = filled(tmp_path)
    day = tmp_path / "date=2026-12-01"
    (day / "part-empty.parquet").write_bytes(b"")
    (day / "part-corrupt.parquet").write_bytes(b"PAR1 not really parquet")
    pq.write_table(pa.table({"age": [1.0] * 1000}), day / "part-pages.parquet",
                   compression="none")
    damaged = bytearray((day / "part-pages.parquet").read_bytes())
    damaged[4:2000] = b"\xff" * 1996  # the data page, not the footer
    (day / "part-pages.parquet").write_bytes(bytes(damaged))
    part(tmp_path, "2026-12-01", "text", [1.0], NOON, region=[7])  # region as a number
    (tmp_path / "date=garbage").mkdir()
    part(tmp_path, "2026-12-02", "typed", [5.0], NOON, region=["north"])
    ages.append(5.0)

    assert sorted(read_log(tmp_path, types=TYPES)["age"]) == sorted(ages)
    moved = sorted(p.relative_to(tmp_path / QUARANTINE).as_posix()
                   for p in (tmp_path / QUARANTINE).rglob("*") if p.is_file() or
                   p.name == "date=garbage")
    assert moved == ["date=2026-12-01/part-corrupt.parquet", "date=2026-12-01/part-empty.parquet",
                     "date=2026-12-01/part-pages.parquet", "date=2026-12-01/part-text.parquet",
                     "date=garbage"]
    # Compaction meets the same files when no reader came first.
    (day / "part-late-empty.parquet").write_bytes(b"")
    (tmp_path / "date=2026-13-01").mkdir()
    result = compact(tmp_path, types=TYPES)
    assert result.quarantined == ["_quarantine/date=2026-13-01",
                                  "_quarantine/date=2026-12-01/part-late-empty.parquet"]
    assert "2 unreadable file(s) or partition(s) moved to" in result.describe(tmp_path, None)
    assert (result.parts, result.rows) == (16, 301)
    assert sorted(read_log(tmp_path, types=TYPES)["age"]) == sorted(ages)


def test_outside_readers_read_the_log_after_a_quarantine(tmp_path: Path) -> None:
    """pandas (Arrow's dataset discovery) reads the log folder as the log: the quarantine is
    not part of it. An older version's quarantine/ moves there at the next compaction."""
    ages = filled(tmp_path)
    (tmp_path / "date=2026-12-01" / "part-empty.parquet").write_bytes(b"")
    legacy = tmp_path / "quarantine" / "date=2026-11-30"
    legacy.mkdir(parents=True)
    (legacy / "part-old.parquet").write_bytes(b"PAR1 from an older version")
    result = compact(tmp_path, types=TYPES)
    assert result.quarantined == ["_quarantine/date=2026-12-01/part-empty.parquet"]
    assert not (tmp_path / "quarantine").exists()
    assert (tmp_path / QUARANTINE / "date=2026-11-30" / "part-old.parquet").is_file()
    outside = pd.read_parquet(tmp_path)
    assert sorted(outside["age"]) == sorted(ages) and len(outside) == 300


def test_what_no_reader_reads_is_named(tmp_path: Path) -> None:
    """Files a reader skips are not skipped silently: a 0-byte file not named part-* or
    day-*, a note, a subfolder, a folder beside the days; what is being written is not."""
    filled(tmp_path)
    day = tmp_path / "date=2026-12-01"
    (day / "zero.parquet").write_bytes(b"")
    (day / "README.txt").write_text("exported by hand\n")
    (day / "backup").mkdir()
    (day / ".part-123.parquet.tmp").write_bytes(b"")  # a writer's part, not yet renamed
    (tmp_path / "export.csv").write_text("age\n1\n")
    (tmp_path / "date=garbage").mkdir()
    assert not_read(tmp_path) == ["date=2026-12-01/README.txt", "date=2026-12-01/backup/",
                                  "date=2026-12-01/zero.parquet", "date=garbage/",
                                  "export.csv"]
    read_log(tmp_path)  # the reader moves the partition that is not a date aside ...
    compact(tmp_path)
    assert not_read(tmp_path) == ["date=2026-12-01/README.txt", "date=2026-12-01/backup/",
                                  "date=2026-12-01/zero.parquet", "export.csv"]
    assert (day / "zero.parquet").exists()  # ... and leaves what is not the log's in place


def test_a_damaged_part_met_while_compacting_is_set_aside(tmp_path: Path) -> None:
    ages = filled(tmp_path)
    day = tmp_path / "date=2026-12-02"
    pq.write_table(pa.table({"age": [1.0] * 1000}), day / "part-pages.parquet",
                   compression="none")
    damaged = bytearray((day / "part-pages.parquet").read_bytes())
    damaged[4:2000] = b"\xff" * 1996
    (day / "part-pages.parquet").write_bytes(bytes(damaged))
    result = compact(tmp_path, types=TYPES)
    assert result.quarantined == ["_quarantine/date=2026-12-02/part-pages.parquet"]
    assert (result.parts, result.rows) == (15, 300) and not list(day.glob(".*.tmp"))
    assert sorted(read_log(tmp_path)["age"]) == sorted(ages)


def request(age: object, region: str = "north", records: int = 1) -> tuple:
    columns = {"age": [age] * records, "region": [region] * records,
               "application_id": [f"id-{age}"] * records}
    return columns, {"prediction": [0] * records, "probability": [0.25] * records}


def test_the_writer_counts_what_it_cannot_write_and_goes_on(tmp_path: Path) -> None:
    totals: list[tuple[int, dict[str, int]]] = []
    log = PredictionLog(tmp_path, flush_records=100, flush_seconds=60,
                        on_write=lambda w, f: totals.append((w, f)))
    log.append(*request(9), "1", "r1", types=TYPES)
    log.append(*request(30, region="\ud800"), "1", "r2", types=TYPES)  # Parquet refuses it
    log.append(*request(9.5), "1", "r3", types=TYPES)
    log.close()  # flushes: the part fails, each request is written on its own
    log = PredictionLog(tmp_path, flush_records=1, flush_seconds=60,
                        on_write=lambda w, f: totals.append((w, f)))
    log.append(*request(12), "1", "r4", types=TYPES)
    log.close()
    logged = read_log(tmp_path)
    assert sorted(logged["request_id"]) == ["r1", "r3", "r4"]
    assert logged["age"].dtype == "float64"
    assert totals[-1] == (1, {}) and (2, {"UnicodeEncodeError": 1}) in totals
    assert {pq.read_schema(p).field("age").type for p in tmp_path.glob("date=*/*")} == {
        pa.float64()}


def test_a_full_queue_or_a_stopped_writer_drops_and_counts(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_records=1000, flush_seconds=60, max_queued_records=10)
    log.append(*request(1, records=8), "1", "kept")
    assert log.state()["state"] == "writing"
    log.append(*request(2, records=5), "1", "dropped")  # 13 would wait: over the bound
    assert log.state() == {"state": "dropping", "queued_records": 8, "max_queued_records": 10,
                           "written_records": 0, "failed_records": {"queue_full": 5}}
    log.close()
    log.append(*request(3), "1", "late")
    state = log.state()
    assert state["state"] == "stopped" and state["written_records"] == 8
    assert state["failed_records"] == {"queue_full": 5, "writer_stopped": 1}
    assert set(read_log(tmp_path)["request_id"]) == {"kept"}


def test_a_folder_that_cannot_be_written_is_counted_per_part(tmp_path: Path) -> None:
    (tmp_path / "log").write_text("a file where the folder should be")
    log = PredictionLog(tmp_path / "log", flush_records=1, flush_seconds=60)
    for n in range(3):
        log.append(*request(n), "1", f"r{n}")
    log.close()
    assert log.state()["failed_records"] == {"NotADirectoryError": 3}
