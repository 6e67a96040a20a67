"""Stage `generate`: the data source. Writes the batches that have arrived to data/raw/.

One file per batch, named by the batch's first day (`YYYY-MM-DD.csv`): that name is the
contract `ingest` relies on. `source.n_batches` in params.yaml is the source's clock; moving it
forward by one is "a new batch arrived", and DVC records the new version of data/raw.

Kinds (`source.kind`):
- synthetic_loans: the seeded loan-default stream of `mlpipeline.loans`, with optional drift.
- breast_cancer: scikit-learn's bundled breast-cancer data, cut into batches by row order.
- files: copies the YYYY-MM-DD.csv|parquet batches of a landing folder (`source.path`).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pandas as pd

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
                      covariate=covariate, concept=concept)


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


def read_batch(file: Path) -> pd.DataFrame:
    """One raw batch with every value as text (or missing): typing is `validate`'s job."""
    if file.suffix == ".csv":
        return pd.read_csv(file, dtype=str)
    frame = pd.read_parquet(file)
    return frame.astype(object).where(frame.notna(), None).map(
        lambda v: v if v is None else str(v))


def write_batches(params: Params) -> list[Path]:
    """Replace data/raw with the batches the source has delivered so far."""
    source = params.source
    raw = params.path(RAW_DIR)
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    written = []
    if source.kind == "files":
        if not source.path:
            raise SystemExit("generate: source.kind is 'files' but source.path is not set")
        landing = params.path(source.path)
        for file in sorted(landing.iterdir()):
            if file.suffix in BATCH_SUFFIXES:
                dt.date.fromisoformat(file.stem)  # fail early on a name ingest cannot date
                written.append(Path(shutil.copy2(file, raw / file.name)))
        return written
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
    rows = sum(len(read_batch(f)) for f in files)
    print(f"generate: {len(files)} batches, {rows} rows ({params.source.kind}) -> {RAW_DIR}/")


if __name__ == "__main__":
    main()
