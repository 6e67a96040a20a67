"""Stage `ingest`: collect the raw batches inside the training window into one table."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from mlpipeline.config import DATASET, RAW_DIR, Params, load_params
from mlpipeline.source import BATCH_SUFFIXES, read_batch


def batches_in_window(raw_dir: Path, start: dt.date, end: dt.date) -> list[Path]:
    """Batch files dated (by name) from `start` to `end`, both inclusive, oldest first."""
    chosen = []
    for file in sorted(raw_dir.iterdir()):
        if file.suffix not in BATCH_SUFFIXES:
            continue
        try:
            day = dt.date.fromisoformat(file.stem)
        except ValueError:
            raise SystemExit(
                f"ingest: cannot date {file.name}: name batches YYYY-MM-DD.csv"
            ) from None
        if start <= day <= end:
            chosen.append(file)
    return chosen


def ingest(params: Params) -> tuple[pd.DataFrame, list[Path]]:
    files = batches_in_window(params.path(RAW_DIR), params.window.start, params.window.end)
    if not files:
        raise SystemExit(
            f"ingest: no batch in {RAW_DIR}/ between {params.window.start} and "
            f"{params.window.end}: move `window` in params.yaml or add batches"
        )
    batches = [read_batch(f) for f in files]
    # Keep only the columns every batch has: a column one batch lacks must reach `validate`
    # as missing, not as a block of nulls that hides which rule broke.
    frame = pd.concat(batches, ignore_index=True, join="inner")
    for file, batch in zip(files, batches, strict=True):
        lacking = sorted(set().union(*(b.columns for b in batches)) - set(batch.columns))
        if lacking:
            print(f"ingest: {file.name} lacks columns {lacking}; dropped from the table")
    return frame, files


def main() -> None:
    params = load_params()
    frame, files = ingest(params)
    out = params.path(DATASET)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    print(f"ingest: {len(frame)} rows from {len(files)} batches "
          f"({files[0].stem} .. {files[-1].stem}) -> {DATASET}")


if __name__ == "__main__":
    main()
