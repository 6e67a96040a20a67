"""Stage `generate`: the data source. Writes the batches that have arrived to data/raw/.

One file per batch, named by the batch's first day (`YYYY-MM-DD.csv`): that name is the
contract `ingest` relies on. data/raw is a DVC output: every version of it is in DVC's cache.

Kinds (`source.kind`):
- files: copies the YYYY-MM-DD.csv|parquet batches of the landing folder (`source.path`).
  dvc.yaml declares that folder as a dependency, so a batch landed, corrected or removed
  there is a change `dvc status` shows and `dvc repro` acts on.
- synthetic_loans: the seeded loan stream of `mlpipeline.loans`, with optional drift; each
  application's outcome (`source.outcome`) is whether it defaulted, the amount lost or its
  risk grade. `source.n_batches` is the simulated source's clock: one more is "a new batch
  arrived".
- breast_cancer: scikit-learn's bundled breast-cancer data, cut into batches by row order.
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlpipeline.config import RAW_DIR, Params, SourceParams, load_params

BATCH_SUFFIXES = (".csv", ".parquet")


def batch_date(params: SourceParams, index: int) -> dt.date:
    return params.start_date + dt.timedelta(days=params.batch_days * index)


def drift_levels(params: SourceParams, index: int) -> tuple[float, float]:
    """(covariate, concept) drift strength for batch `index` under the configured scenario."""
    drift = params.drift

    def level(first: int | None) -> float:
        return drift.strength if first is not None and index >= first else 0.0

    return level(drift.covariate_from_batch), level(drift.concept_from_batch)


def synthetic_batch(params: SourceParams, index: int) -> pd.DataFrame:
    from mlpipeline.loans import make_batch

    covariate, concept = drift_levels(params, index)
    return make_batch(index, seed=params.seed, start_date=params.start_date,
                      batch_days=params.batch_days, rows=params.batch_rows,
                      covariate=covariate, concept=concept, outcome=params.outcome)


def breast_cancer_batches(params: SourceParams) -> list[pd.DataFrame]:
    """The 569 rows in their shipped order, `batch_rows` at a time, each dated by its batch."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame
    data.columns = [c.replace(" ", "_") for c in data.columns]
    batches = []
    for index in range(params.n_batches):
        chunk = data.iloc[index * params.batch_rows : (index + 1) * params.batch_rows].copy()
        if chunk.empty:
            break
        chunk.insert(0, "observed_at", pd.Timestamp(batch_date(params, index)))
        batches.append(chunk)
    return batches


class UnreadableBatch(Exception):
    """A batch file that cannot be read as a table; the message says why, for a person."""


def read_batch(file: Path) -> pd.DataFrame:
    """One raw batch with every value as text (or missing): typing is `validate`'s job.

    Raises UnreadableBatch naming the reason (empty file, bad encoding, corrupt Parquet).
    """
    data = file.read_bytes()
    if not data:
        raise UnreadableBatch("empty file (0 bytes)")
    if file.suffix == ".csv":
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise UnreadableBatch(f"not UTF-8 text: byte 0x{data[error.start]:02x} on line "
                                  f"{line}; save the file as UTF-8") from None
        try:
            return pd.read_csv(io.StringIO(text), dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise UnreadableBatch(f"not a readable CSV file: {_first_line(error)}") from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise UnreadableBatch(f"not a readable Parquet file: {type(error).__name__}: "
                              f"{_first_line(error)}") from None
    return as_text(table)


def as_text(table: pa.Table) -> pd.DataFrame:
    """A Parquet batch's columns as text, as a CSV batch is read: each value written the way
    its Arrow type writes it, whatever the file's physical types. An integer id is "137911"
    even in a column with nulls (which pandas would make 137911.0), so ids, categories and
    labels compare equal across CSV and Parquet batches and across files; missing: None."""
    columns = []
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            try:
                column = pc.cast(column, pa.string())
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # e.g. a list column
                column = pa.array([None if v is None else str(v) for v in column.to_pylist()],
                                  pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names).to_pandas()


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def dated_batches(folder: Path) -> list[tuple[dt.date, Path]]:
    """The batch files of a folder by the date in their names, oldest first; fails on a
    batch name it cannot date. Other files (.gitkeep, notes) are not batches."""
    dated = []
    for file in folder.iterdir():
        if file.name.startswith(".") or file.suffix not in BATCH_SUFFIXES:
            continue
        try:
            dated.append((dt.date.fromisoformat(file.stem), file))
        except ValueError:
            raise SystemExit(f"cannot date {file.name} in {folder}: name each batch by its "
                             "first day, YYYY-MM-DD.csv or YYYY-MM-DD.parquet") from None
    return sorted(dated, key=lambda pair: (pair[0], pair[1].name))


def write_batches(params: Params) -> list[Path]:
    """Replace data/raw with the batches the source has delivered so far."""
    source = params.source
    raw = params.path(RAW_DIR)
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    written = []
    if source.kind == "files":
        landing = params.path(source.path)
        if not landing.is_dir():
            raise SystemExit(f"generate: the landing folder {landing} (source.path) does not "
                             "exist: create it and put the batches there")
        # Copied as they are: reading and checking each file is `ingest` and `validate`'s job,
        # so a bad file is reported with every other problem, naming the file.
        return [Path(shutil.copy2(f, raw / f.name)) for _, f in dated_batches(landing)]
    if source.kind == "breast_cancer":
        frames = breast_cancer_batches(source)
    else:
        frames = [synthetic_batch(source, i) for i in range(source.n_batches)]
    for index, frame in enumerate(frames):
        out = raw / f"{batch_date(source, index).isoformat()}.csv"
        frame.to_csv(out, index=False)
        written.append(out)
    return written


def main() -> None:
    params = load_params()
    files = write_batches(params)
    size = sum(f.stat().st_size for f in files) / 1e6
    origin = (f"landed in {params.source.path}/" if params.source.kind == "files"
              else f"from the {params.source.kind} source")
    print(f"generate: {len(files)} batches ({size:.1f} MB) {origin} -> {RAW_DIR}/")


if __name__ == "__main__":
    main()
