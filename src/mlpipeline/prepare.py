"""Stage `prepare`: time-ordered train/test split and the monitoring reference sample.

The test split is the most recent `test_fraction` of the window, cut at a timestamp so that
no training row is later than any test row: the model is scored as it will be used, on the
future. The reference sample is drawn from the training split; monitoring compares production
data against it.
"""

from __future__ import annotations

import pandas as pd

from mlpipeline.config import REFERENCE, TEST_SPLIT, TRAIN_SPLIT, VALIDATED, load_params


def time_split(frame: pd.DataFrame, time_column: str, test_fraction: float
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows before the cut-off time train, rows at or after it test."""
    ordered = frame.sort_values(time_column, kind="stable").reset_index(drop=True)
    cutoff = ordered[time_column].iloc[int(len(ordered) * (1 - test_fraction))]
    train = ordered[ordered[time_column] < cutoff].reset_index(drop=True)
    test = ordered[ordered[time_column] >= cutoff].reset_index(drop=True)
    if train.empty or test.empty:
        raise SystemExit(f"prepare: split at {cutoff} leaves an empty side: "
                         "widen the window or change prepare.test_fraction")
    return train, test


def reference_sample(train: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    if len(train) <= rows:
        return train.copy()
    return train.sample(n=rows, random_state=seed).sort_index().reset_index(drop=True)


def main() -> None:
    params = load_params()
    frame = pd.read_parquet(params.path(VALIDATED))
    train, test = time_split(frame, params.schema.time_column, params.prepare.test_fraction)
    reference = reference_sample(train, params.prepare.reference_rows, params.prepare.seed)
    for data, path in ((train, TRAIN_SPLIT), (test, TEST_SPLIT), (reference, REFERENCE)):
        params.path(path).parent.mkdir(parents=True, exist_ok=True)
        data.to_parquet(params.path(path), index=False)
    time = params.schema.time_column
    print(f"prepare: {len(train)} train rows (to {train[time].max()}), {len(test)} test rows "
          f"(from {test[time].min()}), {len(reference)} reference rows -> {TRAIN_SPLIT.parent}/")


if __name__ == "__main__":
    main()
