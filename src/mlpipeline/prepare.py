"""Stage `prepare`: time-ordered train/test split and the monitoring reference sample.

The test split is the most recent part of the window, so the model is scored as it will be
used, on the future. By default it is the latest `test_fraction` of the rows, cut at a
timestamp so that no training row is later than any test row. Coarse batches (monthly,
yearly, or a time column holding only the batch's date) cannot be cut near that fraction:
`prepare.test_batches: N` makes the last N batches the test split instead. Either way the
stage prints the rows and share on each side. The reference sample is drawn from the
training split by a seeded hash of each row's file and row (the same rows on either engine);
monitoring compares production data against it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlpipeline.config import (
    REFERENCE,
    TEST_SPLIT,
    TRAIN_SPLIT,
    VALIDATED,
    Params,
    PrepareParams,
    load_params,
)
from mlpipeline.engine import session_for, single_parquet, uses_spark
from mlpipeline.schema import BATCH_COLUMN, ROW_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# A cut whose test share is this far from test_fraction gets a note naming the fix.
SHARE_NOTE = 0.1


def cut_position(rows: int, test_fraction: float) -> int:
    """The cut-off time is the time of the row at this position, in time order."""
    return int(rows * (1 - test_fraction))


def check_sides(cutoff: Any, train_rows: int, test_rows: int) -> None:
    if not train_rows or not test_rows:
        raise SystemExit(f"prepare: the time cut at {cutoff} leaves an empty side (the time "
                         "column is too coarse): set prepare.test_batches to test on whole "
                         "batches, or widen the window")


def time_split(frame: pd.DataFrame, time_column: str, test_fraction: float
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows before the cut-off time train, rows at or after it test."""
    ordered = frame.sort_values(time_column, kind="stable").reset_index(drop=True)
    cutoff = ordered[time_column].iloc[cut_position(len(ordered), test_fraction)]
    train = ordered[ordered[time_column] < cutoff].reset_index(drop=True)
    test = ordered[ordered[time_column] >= cutoff].reset_index(drop=True)
    check_sides(cutoff, len(train), len(test))
    return train, test


def batch_split(frame: pd.DataFrame, time_column: str, test_batches: int
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The last `test_batches` batches (by their date) test, the earlier ones train."""
    testing = frame[BATCH_COLUMN].isin(testing_batches(frame[BATCH_COLUMN].unique(),
                                                       test_batches))
    ordered = frame.assign(_test=testing).sort_values(["_test", time_column], kind="stable")
    train = ordered[~ordered["_test"]].drop(columns="_test").reset_index(drop=True)
    test = ordered[ordered["_test"]].drop(columns="_test").reset_index(drop=True)
    return train, test


def testing_batches(names: Any, test_batches: int) -> list[str]:
    batches = sorted(names)  # YYYY-MM-DD names sort by date
    if len(batches) <= test_batches:
        raise SystemExit(f"prepare: prepare.test_batches={test_batches} but the window holds "
                         f"{len(batches)} batches: widen the window or test on fewer batches")
    return batches[-test_batches:]


def split(frame: pd.DataFrame, time_column: str, settings: PrepareParams
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    if settings.test_batches:
        return batch_split(frame, time_column, settings.test_batches)
    return time_split(frame, time_column, settings.test_fraction)


def describe_split(train_rows: int, test_rows: int, train_end: Any, test_start: Any,
                   settings: PrepareParams) -> list[str]:
    """What the split did, in rows and shares, and a note when a time cut missed its target."""
    share = test_rows / (train_rows + test_rows)
    how = (f"last {settings.test_batches} batch(es)" if settings.test_batches
           else f"time cut, prepare.test_fraction {settings.test_fraction:.0%}")
    lines = [f"prepare: train {train_rows} rows ({1 - share:.1%}, to {pd.Timestamp(train_end)}"
             f"), test {test_rows} rows ({share:.1%}, from {pd.Timestamp(test_start)}); {how}"]
    if not settings.test_batches and abs(share - settings.test_fraction) > SHARE_NOTE:
        lines.append(f"prepare: note: the test split holds {share:.0%} of the rows, not "
                     f"{settings.test_fraction:.0%}: the time column is coarse (whole batches "
                     "share a time); set prepare.test_batches to choose whole batches")
    return lines


def sample_keys(batches: pd.Series, rows: pd.Series, seed: int) -> pd.Series:
    """Each row's place in the reference sample's draw: the first 15 hex digits of the md5 of
    `seed:file:row`, a number that Spark's md5 gives too, so both engines draw the same rows
    whatever their order or partitioning."""
    text = str(seed) + ":" + batches.astype(str) + ":" + rows.astype("int64").astype(str)
    return text.map(lambda key: int(hashlib.md5(key.encode()).hexdigest()[:15], 16))


def reference_sample(train: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """The `rows` train rows of smallest sample key, in the train split's order."""
    if len(train) <= rows:
        return train.copy()
    keys = sample_keys(train[BATCH_COLUMN], train[ROW_COLUMN], seed)
    return train[keys <= keys.nsmallest(rows).iloc[-1]].reset_index(drop=True)


def prepare_on_spark(params: Params, spark: SparkSession) -> list[str]:
    """The same split and sample on Spark: the cut-off time is the row at the same position
    in time order, the sample the same smallest keys; each output is written, in the
    embedded engine's row order, by one task (nothing is collected to the driver)."""
    from pyspark.sql import functions as F

    settings, time_column = params.prepare, params.schema.time_column
    frame = spark.read.parquet(str(params.path(VALIDATED).resolve()))
    order = [time_column, "_order", ROW_COLUMN]
    if settings.test_batches:
        names = [r[0] for r in frame.select(BATCH_COLUMN).distinct().collect()]
        testing = F.col(BATCH_COLUMN).isin(testing_batches(names, settings.test_batches))
        train, test = frame.filter(~testing), frame.filter(testing)
    else:
        rows = frame.count()
        cutoff = (frame.select(time_column).orderBy(time_column)
                  .offset(cut_position(rows, settings.test_fraction)).take(1)[0][0])
        train = frame.filter(F.col(time_column) < F.lit(cutoff))
        test = frame.filter(F.col(time_column) >= F.lit(cutoff))
    sides = {name: side.agg(F.count("*"), F.max(time_column), F.min(time_column)).take(1)[0]
             for name, side in (("train", train), ("test", test))}
    if not settings.test_batches:
        check_sides(cutoff, sides["train"][0], sides["test"][0])
    key = F.conv(F.substring(F.md5(F.concat_ws(
        ":", F.lit(str(settings.seed)), F.col(BATCH_COLUMN), F.col(ROW_COLUMN).cast("string"))),
        1, 15), 16, 10).cast("long")
    reference = train
    if sides["train"][0] > settings.reference_rows:
        largest = (train.select(key.alias("key")).orderBy("key")
                   .offset(settings.reference_rows - 1).take(1)[0][0])
        reference = train.filter(key <= F.lit(largest))
    columns = [c for c in frame.columns if c not in ("_order", ROW_COLUMN, BATCH_COLUMN)]
    for data, path in ((train, TRAIN_SPLIT), (test, TEST_SPLIT), (reference, REFERENCE)):
        params.path(path).parent.mkdir(parents=True, exist_ok=True)
        single_parquet(data.orderBy(*order).select(*columns, BATCH_COLUMN), params.path(path))
    return [*describe_split(sides["train"][0], sides["test"][0], sides["train"][1],
                            sides["test"][2], settings),
            f"prepare: {min(sides['train'][0], settings.reference_rows)} reference rows; "
            f"splits -> {TRAIN_SPLIT.parent}/ (Spark)"]


def run(params: Params, spark: SparkSession | None = None) -> list[str]:
    """The stage on params.engine; returns what it did, in lines for a person."""
    if uses_spark(params):
        with session_for(params, "prepare", spark) as session:
            return prepare_on_spark(params, session)
    frame = pd.read_parquet(params.path(VALIDATED))
    time_column = params.schema.time_column
    train, test = split(frame, time_column, params.prepare)
    reference = reference_sample(train, params.prepare.reference_rows, params.prepare.seed)
    for data, path in ((train, TRAIN_SPLIT), (test, TEST_SPLIT), (reference, REFERENCE)):
        params.path(path).parent.mkdir(parents=True, exist_ok=True)
        # Times in microseconds, as Spark writes them: the same splits from either engine.
        data.drop(columns=ROW_COLUMN).to_parquet(params.path(path), index=False,
                                                 coerce_timestamps="us",
                                                 allow_truncated_timestamps=True)
    return [*describe_split(len(train), len(test), train[time_column].max(),
                            test[time_column].min(), params.prepare),
            f"prepare: {len(reference)} reference rows; splits -> {TRAIN_SPLIT.parent}/"]


def main() -> None:
    for line in run(load_params()):
        print(line)


if __name__ == "__main__":
    main()
