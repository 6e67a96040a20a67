"""Stage `prepare`: time-ordered train/test split and the monitoring reference sample.

The test split is the most recent part of the window, so the model is scored as it will be
used, on the future. By default it is the latest `test_fraction` of the rows, cut at a
timestamp so that no training row is later than any test row. Coarse batches (monthly,
yearly, or a time column holding only the batch's date) cannot be cut near that fraction:
`prepare.test_batches: N` makes the last N batches the test split instead. Either way the
stage prints the rows and share on each side. The reference sample is drawn from the
training split; monitoring compares production data against it.
"""

from __future__ import annotations

import pandas as pd

from mlpipeline.config import (
    REFERENCE,
    TEST_SPLIT,
    TRAIN_SPLIT,
    VALIDATED,
    PrepareParams,
    load_params,
)
from mlpipeline.schema import BATCH_COLUMN

# A cut whose test share is this far from test_fraction gets a note naming the fix.
SHARE_NOTE = 0.1


def time_split(frame: pd.DataFrame, time_column: str, test_fraction: float
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows before the cut-off time train, rows at or after it test."""
    ordered = frame.sort_values(time_column, kind="stable").reset_index(drop=True)
    cutoff = ordered[time_column].iloc[int(len(ordered) * (1 - test_fraction))]
    train = ordered[ordered[time_column] < cutoff].reset_index(drop=True)
    test = ordered[ordered[time_column] >= cutoff].reset_index(drop=True)
    if train.empty or test.empty:
        raise SystemExit(f"prepare: the time cut at {cutoff} leaves an empty side (the time "
                         "column is too coarse): set prepare.test_batches to test on whole "
                         "batches, or widen the window")
    return train, test


def batch_split(frame: pd.DataFrame, time_column: str, test_batches: int
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The last `test_batches` batches (by their date) test, the earlier ones train."""
    batches = sorted(frame[BATCH_COLUMN].unique())  # YYYY-MM-DD names sort by date
    if len(batches) <= test_batches:
        raise SystemExit(f"prepare: prepare.test_batches={test_batches} but the window holds "
                         f"{len(batches)} batches: widen the window or test on fewer batches")
    testing = frame[BATCH_COLUMN].isin(batches[-test_batches:])
    ordered = frame.assign(_test=testing).sort_values(["_test", time_column], kind="stable")
    train = ordered[~ordered["_test"]].drop(columns="_test").reset_index(drop=True)
    test = ordered[ordered["_test"]].drop(columns="_test").reset_index(drop=True)
    return train, test


def split(frame: pd.DataFrame, time_column: str, settings: PrepareParams
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    if settings.test_batches:
        return batch_split(frame, time_column, settings.test_batches)
    return time_split(frame, time_column, settings.test_fraction)


def describe_split(train: pd.DataFrame, test: pd.DataFrame, time_column: str,
                   settings: PrepareParams) -> list[str]:
    """What the split did, in rows and shares, and a note when a time cut missed its target."""
    total = len(train) + len(test)
    share = len(test) / total
    how = (f"last {settings.test_batches} batch(es)" if settings.test_batches
           else f"time cut, prepare.test_fraction {settings.test_fraction:.0%}")
    lines = [f"prepare: train {len(train)} rows ({1 - share:.1%}, to "
             f"{train[time_column].max()}), test {len(test)} rows ({share:.1%}, from "
             f"{test[time_column].min()}); {how}"]
    if not settings.test_batches and abs(share - settings.test_fraction) > SHARE_NOTE:
        lines.append(f"prepare: note: the test split holds {share:.0%} of the rows, not "
                     f"{settings.test_fraction:.0%}: the time column is coarse (whole batches "
                     "share a time); set prepare.test_batches to choose whole batches")
    return lines


def reference_sample(train: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    if len(train) <= rows:
        return train.copy()
    return train.sample(n=rows, random_state=seed).sort_index().reset_index(drop=True)


def main() -> None:
    params = load_params()
    frame = pd.read_parquet(params.path(VALIDATED))
    time_column = params.schema.time_column
    train, test = split(frame, time_column, params.prepare)
    reference = reference_sample(train, params.prepare.reference_rows, params.prepare.seed)
    for data, path in ((train, TRAIN_SPLIT), (test, TEST_SPLIT), (reference, REFERENCE)):
        params.path(path).parent.mkdir(parents=True, exist_ok=True)
        data.to_parquet(params.path(path), index=False)
    for line in describe_split(train, test, time_column, params.prepare):
        print(line)
    print(f"prepare: {len(reference)} reference rows; splits -> {TRAIN_SPLIT.parent}/")


if __name__ == "__main__":
    main()
