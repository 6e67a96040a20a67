"""The prediction log's lifecycle as plain files: compaction keeps every row once, whatever
a reader or a crash meets; retention; reading only a window's days."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpipeline.prediction_log import compact, day_files, read_log

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
    with pytest.raises(pa.ArrowInvalid):
        read_log(tmp_path)  # reading everything does meet it
    assert os.path.exists(tmp_path / "date=2026-11-30")
    assert len(day_files(tmp_path / "date=2026-12-01")) == 5
