"""Stage `ingest`: read the raw batches from the window's start on into one table.

Every batch file dated from `window.start` on is read: the window's batches are what the
model trains on, later ones are what the drift check compares next, so both must pass
`validate`. Of older batches only the ids (schema.id_column) are read, so that `validate`
can refuse ids that an earlier batch already used. A file that cannot be read does not stop
this stage: it is recorded with its reason in data/interim/batches.json, beside each file's
hash, row count and columns, and `validate` refuses it with everything else it finds.

Each row keeps where it came from (`_batch`: the file name, `_row`: its row in that file), so
every validation message can name the file and the row to fix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mlpipeline.config import BATCHES, DATASET, RAW_DIR, Params, load_params
from mlpipeline.lineage import file_md5
from mlpipeline.schema import BATCH_COLUMN, ROW_COLUMN
from mlpipeline.source import UnreadableBatch, dated_batches, read_batch


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


def ingest(params: Params) -> tuple[pd.DataFrame, list[BatchFile]]:
    window = params.window
    dated = dated_batches(params.path(RAW_DIR))
    if not any(window.start <= day <= window.end for day, _ in dated):
        raise SystemExit(
            f"ingest: no batch in {RAW_DIR}/ between {window.start} and {window.end}: "
            "move `window` in params.yaml or add batches"
        )
    days = sorted({day for day, _ in dated})
    following = dict(zip(days, [*days[1:], None], strict=True))
    ignored = set(params.schema.ignore_columns)
    frames, batches = [], []
    for day, file in dated:
        role = ("before window" if day < window.start
                else "window" if day <= window.end else "after window")
        nxt = following[day]
        info = BatchFile(file.name, day.isoformat(), nxt.isoformat() if nxt else None,
                         file_md5(file), file.stat().st_size, role)
        if role == "before window":
            # Only the ids: an id is one application across every batch landed so far, so
            # `validate` refuses a newer batch that re-delivers an older one's.
            ids = earlier_ids(file, params.schema.id_column)
            if ids is not None:
                frames.append(pd.DataFrame({params.schema.id_column: ids, BATCH_COLUMN: file.name,
                                            ROW_COLUMN: range(1, len(ids) + 1)}))
        else:
            try:
                frame = read_batch(file)
            except UnreadableBatch as error:
                info = BatchFile(**{**asdict(info), "error": str(error)})
            else:
                frame = frame.drop(columns=[c for c in frame.columns if c in ignored])
                info = BatchFile(**{**asdict(info), "rows": len(frame),
                                    "columns": tuple(frame.columns)})
                frames.append(frame.assign(**{BATCH_COLUMN: file.name,
                                              ROW_COLUMN: range(1, len(frame) + 1)}))
        batches.append(info)
    # The union of every batch's columns: a column one batch lacks is null there, and
    # `validate` reports it for that batch from its delivered column list.
    table = (pd.concat(frames, ignore_index=True, join="outer") if frames
             else pd.DataFrame(columns=[BATCH_COLUMN, ROW_COLUMN]))
    return table, batches


def earlier_ids(file: Path, id_column: str | None) -> pd.Series | None:
    """The id column alone of an older batch (None: no id column, or the file cannot be read:
    it was judged when it was in the window)."""
    if id_column is None:
        return None
    try:
        if file.suffix == ".csv":
            frame = pd.read_csv(file, dtype=str, encoding="utf-8-sig",
                                usecols=lambda column: column == id_column)
        else:
            import pyarrow.parquet as pq

            if id_column not in pq.read_schema(file).names:
                return None
            frame = pd.read_parquet(file, columns=[id_column])
    except Exception:  # any damage: that batch was refused or accepted in its own time
        return None
    return frame[id_column] if id_column in frame.columns else None


def main() -> None:
    params = load_params()
    frame, batches = ingest(params)
    out = params.path(DATASET)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    params.path(BATCHES).write_text(json.dumps([asdict(b) for b in batches], indent=2) + "\n")
    read = [b for b in batches if b.role != "before window"]
    in_window = [b for b in read if b.role == "window"]
    unreadable = sum(bool(b.error) for b in read)
    rows = sum(b.rows for b in read)  # the table also holds older batches' ids
    print(f"ingest: {rows} rows from {len(read)} batches ({len(in_window)} in the window "
          f"{in_window[0].date} .. {in_window[-1].date}, {len(read) - len(in_window)} after it)"
          + (f", {unreadable} unreadable" if unreadable else "") + f" -> {DATASET}")


if __name__ == "__main__":
    main()
