"""Stage `ingest`: read the raw batches from the window's start on into one table.

Every batch file dated from `window.start` on is read: the window's batches are what the
model trains on, later ones are what the drift check compares next, so both must pass
`validate`. Of older batches only the ids (schema.id_column) are read, so that `validate`
can refuse ids that an earlier batch already used. A file that cannot be read does not stop
this stage: it is recorded with its reason in data/interim/batches.json, beside each file's
hash, row count and columns, and `validate` refuses it with everything else it finds.

Each row keeps where it came from (`_batch`: the file name, `_row`: its row in that file), so
every validation message can name the file and the row to fix.

The window's table is one Parquet file, or on Spark (engine.kind: spark) a folder with one
partition per batch (`_batch=FILE/`), each written by the task that read that file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlpipeline.config import BATCHES, DATASET, RAW_DIR, Params, load_params
from mlpipeline.engine import each_task, replace_path, session_for, uses_spark
from mlpipeline.lineage import file_md5
from mlpipeline.schema import BATCH_COLUMN, ROW_COLUMN
from mlpipeline.source import UnreadableBatch, as_text, dated_batches, read_batch

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class BatchFile:
    """One batch file as delivered: what `validate` judges before looking at its values."""

    file: str
    date: str  # from the name: the batch's first day
    next_date: str | None  # the next batch's first day: this batch's rows are dated before it
    md5: str
    bytes: int
    role: str  # before window (not read) | window | after window
    rows: int = 0
    columns: tuple[str, ...] = ()
    error: str = ""  # why the file could not be read; "" = read

    @classmethod
    def from_dict(cls, data: dict) -> BatchFile:
        return cls(**{**data, "columns": tuple(data["columns"])})


def landed(params: Params) -> list[tuple[Path, BatchFile]]:
    """Every batch file in data/raw, dated, with its role; nothing read but its bytes' md5."""
    window = params.window
    dated = dated_batches(params.path(RAW_DIR))
    if not any(window.start <= day <= window.end for day, _ in dated):
        raise SystemExit(
            f"ingest: no batch in {RAW_DIR}/ between {window.start} and {window.end}: "
            "move `window` in params.yaml or add batches"
        )
    days = sorted({day for day, _ in dated})
    following = dict(zip(days, [*days[1:], None], strict=True))
    found = []
    for day, file in dated:
        role = ("before window" if day < window.start
                else "window" if day <= window.end else "after window")
        nxt = following[day]
        found.append((file, BatchFile(file.name, day.isoformat(), nxt.isoformat() if nxt else None,
                                      file_md5(file), file.stat().st_size, role)))
    return found


def read_landed(file: Path, info: BatchFile, id_column: str | None, ignored: set[str]
                ) -> tuple[pd.DataFrame | None, BatchFile]:
    """One landed file as the window's table holds it (each row tagged with its file and
    row), and what was found reading it. Both engines read every batch with this."""
    if info.role == "before window":
        # Only the ids: an id is one application across every batch landed so far, so
        # `validate` refuses a newer batch that re-delivers an older one's.
        ids = earlier_ids(file, id_column)
        if ids is None:
            return None, info
        return pd.DataFrame({id_column: ids, BATCH_COLUMN: file.name,
                             ROW_COLUMN: range(1, len(ids) + 1)}), info
    try:
        frame = read_batch(file)
    except UnreadableBatch as error:
        return None, BatchFile(**{**asdict(info), "error": str(error)})
    frame = frame.drop(columns=[c for c in frame.columns if c in ignored])
    info = BatchFile(**{**asdict(info), "rows": len(frame), "columns": tuple(frame.columns)})
    return frame.assign(**{BATCH_COLUMN: file.name, ROW_COLUMN: range(1, len(frame) + 1)}), info


def ingest(params: Params) -> tuple[pd.DataFrame, list[BatchFile]]:
    frames, batches = [], []
    for file, info in landed(params):
        frame, info = read_landed(file, info, params.schema.id_column,
                                  set(params.schema.ignore_columns))
        if frame is not None:
            frames.append(frame)
        batches.append(info)
    # The union of every batch's columns: a column one batch lacks is null there, and
    # `validate` reports it for that batch from its delivered column list.
    table = (pd.concat(frames, ignore_index=True, join="outer") if frames
             else pd.DataFrame(columns=[BATCH_COLUMN, ROW_COLUMN]))
    return table, batches


def ingest_on_spark(params: Params, spark: SparkSession) -> list[BatchFile]:
    """The same reading, one Spark task per landed file, each writing its rows as one
    partition (`_batch=FILE/`) of the dataset folder: nothing passes through the driver."""
    out = params.path(DATASET).resolve()
    id_column, ignored = params.schema.id_column, set(params.schema.ignore_columns)

    def read_one(item: dict) -> dict:
        info = BatchFile.from_dict(item["info"])
        frame, info = read_landed(Path(item["file"]), info, id_column, ignored)
        if frame is not None:
            write_partition(frame.drop(columns=BATCH_COLUMN), out, info.file)
        return asdict(info)

    items = [{"file": str(file.resolve()), "info": asdict(info)}
             for file, info in landed(params)]
    replace_path(out)
    out.mkdir(parents=True)
    return [BatchFile.from_dict(b) for b in each_task(spark, items, read_one)]


def write_partition(frame: pd.DataFrame, folder: Path, batch: str,
                    types: pa.Schema | None = None, name: str = "part.parquet") -> None:
    """One batch's rows as the partition `_batch=BATCH` of a dataset folder (Spark reads the
    folder as one table with a `_batch` column); timestamps in microseconds, as Spark's.
    `types` fixes the columns' types, so that every partition agrees (a column all null in
    one batch would otherwise have no type there)."""
    target = folder / f"{BATCH_COLUMN}={batch}"
    target.mkdir(parents=True, exist_ok=True)
    try:
        table = pa.Table.from_pandas(frame, schema=types, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. a missing label: this run fails
        table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, target / name, coerce_timestamps="us", allow_truncated_timestamps=True)


def read_partition(folder: Path, batch: str, name: str = "part.parquet") -> pd.DataFrame | None:
    """One batch's rows from a dataset folder, `_batch` included (None: the batch has none)."""
    path = folder / f"{BATCH_COLUMN}={batch}" / name
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    frame.insert(len(frame.columns) - 1 if ROW_COLUMN in frame.columns else len(frame.columns),
                 BATCH_COLUMN, batch)
    return frame


def earlier_ids(file: Path, id_column: str | None) -> pd.Series | None:
    """The id column alone of an older batch (None: no id column, or the file cannot be read:
    it was judged when it was in the window)."""
    if id_column is None:
        return None
    try:
        if file.suffix == ".csv":
            frame = pd.read_csv(file, dtype=str, encoding="utf-8-sig",
                                usecols=lambda column: column == id_column)
        else:  # as text, as read_batch reads the window's batches (an int64 id: "137911")
            if id_column not in pq.read_schema(file).names:
                return None
            frame = as_text(pq.read_table(file, columns=[id_column]))
    except Exception:  # any damage: that batch was refused or accepted in its own time
        return None
    return frame[id_column] if id_column in frame.columns else None


def run(params: Params, spark: SparkSession | None = None) -> list[BatchFile]:
    """The stage on params.engine: the window's table at data/interim/dataset.parquet (a
    file, or a folder partitioned by batch on Spark) and data/interim/batches.json."""
    out = params.path(DATASET)
    out.parent.mkdir(parents=True, exist_ok=True)
    if uses_spark(params):
        with session_for(params, "ingest", spark) as session:
            batches = ingest_on_spark(params, session)
    else:
        frame, batches = ingest(params)
        replace_path(out)
        frame.to_parquet(out, index=False)
    params.path(BATCHES).write_text(json.dumps([asdict(b) for b in batches], indent=2) + "\n")
    return batches


def main() -> None:
    params = load_params()
    batches = run(params)
    read = [b for b in batches if b.role != "before window"]
    in_window = [b for b in read if b.role == "window"]
    unreadable = sum(bool(b.error) for b in read)
    rows = sum(b.rows for b in read)  # the table also holds older batches' ids
    print(f"ingest: {rows} rows from {len(read)} batches ({len(in_window)} in the window "
          f"{in_window[0].date} .. {in_window[-1].date}, {len(read) - len(in_window)} after it)"
          + (f", {unreadable} unreadable" if unreadable else "") + f" -> {DATASET}"
          + (" (Spark)" if uses_spark(params) else ""))


if __name__ == "__main__":
    main()
