"""Stage `validate`: check each batch, then the window, against the schema; write a typed copy
of the window.

Batch by batch (the window's and any newer one, which the drift check compares next):
readable, enough rows, one batch per day, the schema's columns and no others, rows dated
inside the batch, no rows repeated from an earlier batch, then every value rule (types,
ranges, categories, shares of nulls, labels) on that batch alone, so one bad batch cannot
hide among good ones. Then the same value rules over the whole window.

reports/validation.json lists every batch with its verdict and the window's checks. On any
failure the stage exits non-zero naming the batch file, the rule and how many rows broke it,
and writes no output, so DVC runs nothing downstream and the champion cannot move.

On Spark (engine.kind: spark, `validate_on_spark`) each batch is one task running the same
`batch_checks`, and what spans batches is worked out on the cluster: the same report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mlpipeline import schema as schema_module
from mlpipeline.config import (
    BATCHES,
    DATASET,
    VALIDATED,
    VALIDATION_REPORT,
    Params,
    ValidateParams,
    load_params,
)
from mlpipeline.engine import each_task, replace_path, session_for, uses_spark
from mlpipeline.ingest import BatchFile, read_partition, write_partition
from mlpipeline.schema import (
    BATCH_COLUMN,
    ROW_COLUMN,
    Check,
    Schema,
    check_frame,
    coerce,
    counted_check,
    row_ids,
    rule_check,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SHOWN_FAILURES = 20  # in the error message; the report has them all
# A batch's own checks and typed rows, kept beside the stage's outputs: a batch is checked
# once, not again each week as long as it stays in the window (git-ignored; safe to delete).
MEMO_DIR = Path("data/interim/.batch-checks")


class BatchMemo:
    """Each accepted batch's own checks (its values, its dates) and typed rows, keyed by what
    decides them: the file's name, content and neighbours' dates, the schema, the rules and this
    code. What depends on the other batches (repeated rows and ids, one batch per day, the
    window's checks) is always worked out again."""

    def __init__(self, folder: Path, schema: Schema, rules: ValidateParams) -> None:
        self.folder = folder
        code = b"".join(Path(m.__file__ or "").read_bytes() for m in (sys.modules[__name__],
                                                                       schema_module))
        self.salt = hashlib.sha256(b"\0".join([
            schema.model_dump_json().encode(), rules.model_dump_json().encode(), code,
            pd.__version__.encode()])).hexdigest()
        self.used: set[str] = set()

    def _path(self, batch: BatchFile) -> Path:
        key = hashlib.sha256(json.dumps([self.salt, batch.file, batch.md5, batch.date,
                                         batch.next_date]).encode()).hexdigest()[:32]
        self.used.add(f"{key}.parquet")
        return self.folder / f"{key}.parquet"

    def get(self, batch: BatchFile, index: pd.Index) -> tuple[pd.DataFrame, list[Check]] | None:
        path = self._path(batch)
        try:
            table = pq.read_table(path)
            checks = [Check(**c) for c in json.loads(table.schema.metadata[b"checks"])]
            typed = table.to_pandas()
        except Exception:  # none yet, or unreadable: check the batch again
            return None
        if len(typed) != len(index):
            return None
        typed.index = index  # the batch's rows where they are in today's table
        return typed, checks

    def put(self, batch: BatchFile, typed: pd.DataFrame, checks: list[Check]) -> None:
        path = self._path(batch)
        table = pa.Table.from_pandas(typed, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"checks":
                                               json.dumps([asdict(c) for c in checks]).encode()})
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # a reader never sees half a file
        pq.write_table(table, tmp)
        os.replace(tmp, path)

    def prune(self) -> None:
        """Drop what no batch of this run used (batches gone, rules changed)."""
        for path in self.folder.glob("*"):
            if path.name not in self.used:
                path.unlink(missing_ok=True)


@dataclass
class BatchVerdict:
    file: str
    date: str
    md5: str
    role: str
    rows: int
    problems: list[str] = field(default_factory=list)
    dropped_rows: int = 0  # repeated rows dropped (validate.repeated_rows: drop)
    checked: bool = True  # False for batches older than the window (not read)

    @property
    def verdict(self) -> str:
        if not self.checked:
            return "not checked (before the window)"
        return "refused" if self.problems else "accepted"


@dataclass
class Validation:
    checks: list[Check]  # every batch check and the window's
    batches: list[BatchVerdict]
    keep: pd.Series  # rows of the table that go on (bool, aligned with the table)
    typed: pd.DataFrame | None = None  # those rows of the window, typed (the stage's output)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _table_rule(batch: BatchFile, column: str, rule: str, rows: int, detail: str,
                passed: bool = False) -> Check:
    return Check(column, rule, rows if not passed else 0, rows, 0.0, passed, detail=detail,
                 batch=batch.file)


def file_checks(batch: BatchFile, schema: Schema, first_of_day: str | None,
                rules: ValidateParams) -> list[Check]:
    """What can be judged from the file as delivered: readable, its day, its columns."""
    if batch.error:
        return [_table_rule(batch, "*", "readable file", 0, batch.error)]
    checks = []
    if first_of_day is not None:
        drop = rules.repeated_rows == "drop"
        checks.append(_table_rule(
            batch, "*", "one batch per day", batch.rows,
            f"{first_of_day} is a batch of {batch.date} too ({batch.rows} rows here)"
            + ("; rows they share are dropped" if drop else
               ": keep one of them in the landing folder"), passed=drop))
    known = {*schema.columns, *schema.ignore_columns, *schema.optional_columns}
    for column in schema.columns:
        if column not in batch.columns:
            checks.append(_table_rule(batch, column, "column present", batch.rows,
                                      f"missing from this batch ({batch.rows} rows)"))
    for column in batch.columns:
        if column not in known and column not in (BATCH_COLUMN, ROW_COLUMN):
            checks.append(_table_rule(
                batch, column, "column in the schema", batch.rows,
                f"this batch ({batch.rows} rows) has a column the schema does not know: "
                "remove it from the file, or list it in schema.ignore_columns"))
    return checks


def dating_check(rows: pd.DataFrame, typed_time: pd.Series, batch: BatchFile,
                 schema: Schema, rules: ValidateParams) -> Check:
    """Rows dated before the batch's name, or on/after the next batch's first day (the
    newest batch: its name plus validate.max_batch_days)."""
    zone = getattr(typed_time.dt, "tz", None)  # a feed may send "2024-01-01T08:00:00Z"
    start = pd.Timestamp(batch.date, tz=zone)
    end = batch.next_date or (dt.date.fromisoformat(batch.date) + dt.timedelta(
        days=rules.max_batch_days or 0)).isoformat()
    misdated = typed_time.notna() & ((typed_time < start)
                                     | (typed_time >= pd.Timestamp(end, tz=zone)))
    rule = f"dated in [{batch.date}, {end})"
    if not batch.next_date:
        rule += f" (the newest batch: validate.max_batch_days={rules.max_batch_days})"
    return rule_check(schema.time_column, rule, misdated, rules.max_misdated_share,
                      rows[schema.time_column], rows, batch.file)


def batch_ids(rows: pd.DataFrame, schema: Schema) -> pd.Series:
    """One batch's ids as text (index: its rows in the table); empty without an id column."""
    if schema.id_column is None or schema.id_column not in rows.columns:
        return pd.Series(dtype=object)
    return row_ids(rows[schema.id_column]).dropna()


def id_reuse_check(rows: pd.DataFrame, reused: Any, id_column: str, file: str,
                   drop: bool) -> Check:
    """An id names one application across every batch landed so far: a batch that repeats
    an earlier batch's ids re-delivers those applications."""
    check = rule_check(id_column, ID_REUSE_RULE, pd.Series(reused),
                       0.0, rows[id_column].reset_index(drop=True),
                       rows.reset_index(drop=True), file)
    return dropped_if(check, drop)


ID_REUSE_RULE = "ids not used by earlier batches"


def dropped_if(check: Check, drop: bool) -> Check:
    """validate.repeated_rows: drop turns a refusal of re-delivered ids into a note."""
    if not drop or check.passed:
        return check
    return Check(check.column, check.rule, check.failed_rows, check.total_rows, 0.0, True,
                 detail=f"{check.failed_rows} of {check.total_rows} rows carry ids of earlier "
                        "batches (dropped)", batch=check.batch)


REPEATED_RULE = "no rows repeated from earlier batches"
# What validate.repeated_rows: drop costs, said wherever it is offered.
DROP_COST = ("drop removes them before training and testing, so every metric and the gate "
             "then judge only the rows left, not the batch as it came")


def repeated_rows_check(repeated: int, rows: int, file: str, rules: ValidateParams,
                        id_column: str | None) -> Check:
    """Rows a batch repeats from earlier batches: with an id, the same id with the same
    values (a batch landed again); without one, the same values, which distinct entities
    with identical rows share too. Refused above validate.max_repeated_share, unless they
    are dropped (validate.repeated_rows: drop)."""
    drop = rules.repeated_rows == "drop"
    share = repeated / rows if rows else 0.0
    allowed = rules.max_repeated_share
    what = (f"repeat rows of earlier batches: the same {id_column} with the same values (all "
            "but the time)" if id_column else
            "repeat rows of earlier batches (all but the time; with no id column, identical "
            "rows of distinct entities count too)")
    detail = f"{repeated} of {rows} rows ({share:.2%}) {what}"
    if drop:
        detail += " (dropped)" if repeated else ""
    elif share > allowed:
        detail += (f", allowed {allowed:.2%}: remove them from the batch"
                   + ("" if id_column else ", name the id column (schema.id_column), or "
                      "allow their share (validate.max_repeated_share)")
                   + f"; or set validate.repeated_rows: drop ({DROP_COST})")
    else:
        detail += f", allowed {allowed:.2%}"
    return Check("*", REPEATED_RULE, repeated, rows, allowed, drop or share <= allowed,
                 batch=file, detail=detail)


def present(table: pd.DataFrame | list[str], schema: Schema) -> list[str]:
    """The schema's optional columns (the id) that the batches carry."""
    columns = table.columns if isinstance(table, pd.DataFrame) else table
    return [c for c in schema.optional_columns if c in columns]


def value_rules(rules: ValidateParams) -> dict[str, Any]:
    return {"max_unknown_category_share": rules.max_unknown_category_share,
            "max_out_of_range_share": rules.max_out_of_range_share}


def first_files_of_day(batches: list[BatchFile]) -> dict[str, str | None]:
    """Each checked batch's earlier batch of the same day, if any (one batch per day)."""
    first: dict[str, str] = {}
    found: dict[str, str | None] = {}
    for batch in batches:
        if batch.role != "before window":
            found[batch.file] = first.get(batch.date)
            first.setdefault(batch.date, batch.file)
    return found


def batch_checks(rows: pd.DataFrame, batch: BatchFile, schema: Schema, rules: ValidateParams
                 ) -> tuple[pd.DataFrame, list[Check]]:
    """A batch's own value rules and dates (both engines), and its typed rows."""
    typed = coerce(rows, schema)  # once: the checks, dates, hashes, the output
    own = check_frame(rows, schema, min_rows=rules.min_batch_rows, **value_rules(rules),
                      batch=batch.file, typed=typed)
    own.append(dating_check(rows, typed[schema.time_column], batch, schema, rules))
    return typed, own


def row_hashes(typed: pd.DataFrame, schema: Schema) -> np.ndarray:
    """One number per typed row from every column but the time, the id included where the
    batches carry one: a re-delivered row carries a new time, so rows are the same when all
    else is; two entities (two ids) with the same values are two rows."""
    same_row = [c for c in schema.columns if c != schema.time_column]
    same_row += [c for c in schema.optional_columns if c in typed.columns]
    return pd.util.hash_pandas_object(typed[same_row], index=False).to_numpy()


def check_batches(table: pd.DataFrame, batches: list[BatchFile], params: Params,
                  memo: BatchMemo | None = None) -> Validation:
    """Every rule, batch by batch and over the window. A plain function on data (`memo`:
    batches checked before, whose own checks and typed rows are not worked out again)."""
    schema, rules = params.schema, params.validate_
    checks: list[Check] = []
    verdicts: list[BatchVerdict] = []
    keep = pd.Series(False, index=table.index)
    first_of_day = first_files_of_day(batches)
    # Hashes of the typed rows of earlier batches: one set that grows, so each batch costs
    # its own rows (np.isin on everything earlier re-sorted it all for every batch).
    earlier_rows: set[int] = set()
    earlier_ids: set[str] = set()  # every id of every earlier batch, the older ones' too
    drop = rules.repeated_rows == "drop"
    columns = [*schema.columns, *present(table, schema), BATCH_COLUMN, ROW_COLUMN]
    positions = table.groupby(BATCH_COLUMN, sort=False).indices if len(table) else {}
    window_typed: list[pd.DataFrame] = []  # each window batch's typed rows, kept ones
    for batch in batches:
        verdict = BatchVerdict(batch.file, batch.date, batch.md5, batch.role, batch.rows)
        verdicts.append(verdict)
        in_table = table.iloc[positions.get(batch.file, [])]
        if batch.role == "before window":
            verdict.checked = False
            earlier_ids.update(batch_ids(in_table, schema))
            continue
        found = file_checks(batch, schema, first_of_day[batch.file], rules)
        if not any(not c.passed for c in found):
            rows = in_table[columns]
            known = memo.get(batch, rows.index) if memo else None
            if known:
                typed, own = known
            else:
                typed, own = batch_checks(rows, batch, schema, rules)
                if memo and all(c.passed for c in own):
                    memo.put(batch, typed, own)
            found += own
            hashes = row_hashes(typed, schema).tolist()
            repeated = np.fromiter(map(earlier_rows.__contains__, hashes), dtype=bool,
                                   count=len(hashes))
            earlier_rows.update(hashes)
            id_column = schema.id_column if schema.id_column in present(table, schema) \
                else None
            found.append(repeated_rows_check(int(repeated.sum()), len(rows), batch.file, rules,
                                             id_column))
            ids = batch_ids(rows, schema).reindex(rows.index)
            reused = ids.map(earlier_ids.__contains__).fillna(False).to_numpy(dtype=bool)
            if id_column:
                found.append(id_reuse_check(rows, reused, id_column, batch.file, drop))
            earlier_ids.update(ids.dropna())
            gone = (repeated | reused) if drop else np.zeros(len(rows), dtype=bool)
            verdict.dropped_rows = int(gone.sum()) if drop else 0
            keep[rows.index[~gone]] = True
            if batch.role == "window":
                window_typed.append(typed[~gone])
        verdict.problems = [c.message for c in found if not c.passed]
        checks += found

    in_window = table[BATCH_COLUMN].isin([b.file for b in batches if b.role == "window"])
    window = table[in_window & keep]
    # The kept rows of the batches checked above, in table order as the messages name rows.
    typed_window = pd.concat(window_typed).loc[window.index] if window_typed else None
    checks += check_frame(window[columns] if set(schema.columns) <= set(window.columns)
                          else window, schema, min_rows=rules.min_rows, **value_rules(rules),
                          typed=typed_window)
    return Validation(checks, verdicts, in_window & keep, typed_window)


def window_checks(skeleton: list[Check], parts: list[list[Check]], rows: int) -> list[Check]:
    """The window's checks from each batch's share of them (the Spark engine checks the
    window batch by batch): counts add up, the example is the first batch's; `skeleton` is
    the same checks on no rows, for their order and the window's row count rule."""
    combined = []
    for i, check in enumerate(skeleton):
        if i == 0:  # at least validate.min_rows rows, in the whole window
            enough = rows >= int(check.rule.split()[2])
            combined.append(Check("*", check.rule, 0 if enough else rows, rows, 0.0, enough,
                                  detail=f"the table has {rows} rows"))
            continue
        failed = sum(part[i].failed_rows for part in parts)
        example = next((part[i].example for part in parts if part[i].failed_rows), "")
        if check.rule == "column present":
            combined.append(Check(check.column, check.rule, rows, rows, 0.0, False))
        else:
            combined.append(counted_check(check.column, check.rule, failed, rows,
                                          check.threshold, example))
    return combined


def landing_hint(params: Params) -> str:
    """Where a person fixes a batch: never data/raw, which DVC rewrites from the source."""
    if params.source.kind == "files":
        return (f"Fix or remove the batch in the landing folder {params.source.path}/ "
                "(source.path), or the schema in params.yaml, then run `dvc repro` again")
    return (f"The batches come from the {params.source.kind} source: check `source` and "
            "`schema` in params.yaml")


def report(validation: Validation, window_rows: int) -> dict[str, Any]:
    """The JSON report: each batch's verdict, the failed checks, the window's checks."""
    window_checks = [c for c in validation.checks if not c.batch]
    return {
        "passed": not validation.failed,
        "rows": window_rows,
        "failed": len(validation.failed),
        "batches": [{**asdict(b), "verdict": b.verdict} for b in validation.batches],
        "failures": [asdict(c) | {"message": c.message} for c in validation.failed],
        "checks": [asdict(c) for c in window_checks],
    }


def validate_on_spark(params: Params, spark: SparkSession, batches: list[BatchFile],
                      out: Path) -> tuple[list[Check], list[BatchVerdict], int]:
    """The same rules on Spark, in three passes: each batch is one task running
    `batch_checks` on its rows and writing their keys; rows repeated from earlier batches,
    ids used before and ids repeated in the window are window functions over every batch's
    keys on the cluster; each window batch is one task again, writing its typed rows to
    `out`. The window's checks are the sum of each batch's share."""
    schema, rules = params.schema, params.validate_
    dataset = params.path(DATASET).resolve()
    work = out.with_name(f".{out.name}.work-{os.getpid()}")
    replace_path(work)
    drop = rules.repeated_rows == "drop"
    union = sorted({c for b in batches for c in b.columns})
    had_ids = dataset.glob(f"{BATCH_COLUMN}=*/part.parquet")  # older batches' ids
    if schema.id_column and schema.id_column not in union and any(
            schema.id_column in pq.read_schema(p).names for p in had_ids):
        union.append(schema.id_column)
    columns = [*schema.columns, *present(union, schema), BATCH_COLUMN, ROW_COLUMN]
    id_column = schema.id_column if schema.id_column in columns else None

    firsts = _own_checks_on_spark(spark, params, batches, columns, id_column, work / "keys")
    per_batch = _across_batches_on_spark(spark, batches, work / "keys", work / "flags", drop)
    checks: list[Check] = []
    verdicts: list[BatchVerdict] = []
    window_items = []
    for order, (batch, first) in enumerate(zip(batches, firsts, strict=True)):
        verdict = BatchVerdict(batch.file, batch.date, batch.md5, batch.role, batch.rows)
        verdicts.append(verdict)
        if batch.role == "before window":
            verdict.checked = False
            continue
        found_here = [Check(**c) for c in first["checks"]]
        if first["passed"]:
            counts = per_batch.get(batch.file)
            repeated = counts["repeated"] if counts else 0
            found_here.append(repeated_rows_check(repeated, batch.rows, batch.file, rules,
                                                  id_column))
            if id_column:
                example = (f"{counts['first']['_id_shown']} at row "
                           f"{counts['first'][ROW_COLUMN]} of {batch.file}"
                           if counts and counts["first"] else "")
                found_here.append(dropped_if(counted_check(
                    id_column, ID_REUSE_RULE, counts["reused"] if counts else 0, batch.rows,
                    0.0, example, batch.file), drop))
            verdict.dropped_rows = (counts["gone"] if counts else 0) if drop else 0
            if batch.role == "window":
                window_items.append({"batch": asdict(batch), "order": order})
        verdict.problems = [c.message for c in found_here if not c.passed]
        checks += found_here

    staged = out.with_name(f".{out.name}.spark-{os.getpid()}")
    replace_path(staged)
    parts = _window_on_spark(spark, params, window_items, columns, id_column,
                             work / "flags", staged)
    rows = sum(p["rows"] for p in parts)
    skeleton_columns = columns if set(schema.columns) <= set(union) else union
    skeleton = check_frame(pd.DataFrame(columns=skeleton_columns), schema,
                           min_rows=rules.min_rows, **value_rules(rules))
    checks += window_checks(skeleton, [[Check(**c) for c in p["checks"]] for p in parts], rows)
    replace_path(work)
    replace_path(out)
    if any(not c.passed for c in checks):
        replace_path(staged)
    elif staged.exists():
        os.replace(staged, out)
    return checks, verdicts, rows


def _own_checks_on_spark(spark: SparkSession, params: Params, batches: list[BatchFile],
                         columns: list[str], id_column: str | None, keys_dir: Path
                         ) -> list[dict[str, Any]]:
    """Pass 1, one task per batch: its own checks (file_checks, batch_checks) and, for a
    batch that passed them or lies before the window, its rows' keys (KEY_TYPES)."""
    schema, rules = params.schema, params.validate_
    dataset = params.path(DATASET).resolve()
    first_of_day = first_files_of_day(batches)

    def keys(order: int, rows: pd.DataFrame, hashes: Any) -> None:
        ids = (batch_ids(rows, schema).reindex(rows.index) if id_column
               else pd.Series(None, index=rows.index, dtype=object))
        shown = rows[id_column].map(repr) if id_column else ids
        write_partition(pd.DataFrame({
            "_order": order, ROW_COLUMN: rows[ROW_COLUMN].astype("int64"), "_hash": hashes,
            "_id": ids.astype(object), "_id_shown": shown.astype(object)}), keys_dir,
            str(rows[BATCH_COLUMN].iloc[0]), KEY_TYPES)

    def own(item: dict) -> dict:
        batch, order = BatchFile.from_dict(item["batch"]), item["order"]
        raw = read_partition(dataset, batch.file)
        if batch.role == "before window":
            if raw is not None and id_column in raw.columns and len(raw):
                keys(order, raw, pd.Series(None, index=raw.index, dtype="Int64"))
            return {"checks": [], "passed": False}
        found = file_checks(batch, schema, first_of_day[batch.file], rules)
        if any(not c.passed for c in found) or raw is None:
            return {"checks": [asdict(c) for c in found], "passed": False}
        rows = raw.reindex(columns=columns)
        typed, checks = batch_checks(rows, batch, schema, rules)
        if len(rows):
            keys(order, rows, row_hashes(typed, schema).view("int64"))
        return {"checks": [asdict(c) for c in found + checks], "passed": True}

    return each_task(spark, [{"batch": asdict(b), "order": i} for i, b in enumerate(batches)],
                     own)


def _across_batches_on_spark(spark: SparkSession, batches: list[BatchFile], keys_dir: Path,
                             flags_dir: Path, drop: bool) -> dict[str, Any]:
    """Pass 2, on the cluster over every row's keys: a row or an id seen in an earlier batch
    (by order), an id repeated among the window's kept rows. Counts per batch come back;
    the rows to drop or to flag are written to `flags_dir`, partitioned by batch."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if not keys_dir.exists():
        return {}
    checked = F.col("_hash").isNotNull()
    marked = (spark.read.parquet(str(keys_dir))
              .withColumn("repeated", checked & (F.min("_order").over(
                  Window.partitionBy("_hash")) < F.col("_order")))
              .withColumn("reused", checked & F.col("_id").isNotNull() & (F.min(
                  "_order").over(Window.partitionBy("_id")) < F.col("_order")))
              .filter(checked))
    marked = marked.withColumn("gone", (F.col("repeated") | F.col("reused")) & F.lit(drop))
    in_window = F.col(BATCH_COLUMN).isin([b.file for b in batches if b.role == "window"])
    # The window's own "unique ids": a kept row whose id a kept row before it carries.
    marked = marked.withColumn("duplicate", F.when(
        in_window & ~F.col("gone") & F.col("_id").isNotNull(), F.row_number().over(
            Window.partitionBy(F.when(in_window & ~F.col("gone"), F.col("_id")))
            .orderBy("_order", ROW_COLUMN)) > 1).otherwise(False))
    per_batch = {row[BATCH_COLUMN]: row for row in marked.groupBy(BATCH_COLUMN).agg(
        F.sum(F.col("repeated").cast("int")).alias("repeated"),
        F.sum(F.col("reused").cast("int")).alias("reused"),
        F.sum(F.col("gone").cast("int")).alias("gone"),
        F.count("*").alias("rows"),
        F.min(F.when(F.col("reused"), F.struct(ROW_COLUMN, "_id_shown"))).alias("first"),
    ).collect()}
    (marked.filter(F.col("gone") | F.col("duplicate"))
     .select(BATCH_COLUMN, ROW_COLUMN, "gone", "duplicate")
     .write.partitionBy(BATCH_COLUMN).parquet(str(flags_dir)))
    return per_batch


def _window_on_spark(spark: SparkSession, params: Params, window_items: list[dict[str, Any]],
                     columns: list[str], id_column: str | None, flags_dir: Path,
                     staged: Path) -> list[dict[str, Any]]:
    """Pass 3, one task per window batch: its rows without those pass 2 dropped, the
    window's value rules on them (their share of the window's checks), the typed rows
    written to `staged` as the batch's partition."""
    schema, rules = params.schema, params.validate_
    dataset = params.path(DATASET).resolve()

    def window_part(item: dict) -> dict:
        batch = BatchFile.from_dict(item["batch"])
        rows = read_partition(dataset, batch.file).reindex(columns=columns)  # type: ignore[union-attr]
        flags = pd.DataFrame(columns=[ROW_COLUMN, "gone", "duplicate"])
        if any(flags_dir.glob(f"{BATCH_COLUMN}=*")):
            # Spark's folder names escape odd characters; Arrow's hive reading undoes that.
            # Its default would skip `_batch=...` folders as hidden ones ("_").
            flags = ds.dataset(flags_dir, format="parquet", partitioning="hive",
                               ignore_prefixes=[".", "_SUCCESS"]).to_table(
                filter=ds.field(BATCH_COLUMN) == batch.file).to_pandas()
        marks = rows[[ROW_COLUMN]].merge(flags[[ROW_COLUMN, "gone", "duplicate"]],
                                         on=ROW_COLUMN, how="left")
        kept = ~marks["gone"].eq(True).to_numpy()
        rows = rows[kept]
        typed = coerce(rows, schema)
        part = check_frame(rows, schema, min_rows=0, **value_rules(rules), typed=typed,
                           duplicate_ids=pd.Series(marks["duplicate"].eq(True).to_numpy()[kept],
                                                   index=rows.index))
        typed[ROW_COLUMN] = rows[ROW_COLUMN].astype("int64")
        typed["_order"] = item["order"]
        write_partition(typed, staged, batch.file, typed_types(schema, id_column))
        return {"checks": [asdict(c) for c in part], "rows": int(kept.sum())}

    return each_task(spark, window_items, window_part)


# The cross-batch keys of each row (Spark engine): its batch's order, its row, the hash of its
# typed values but the time, its id as text and as the batch wrote it (for the message).
KEY_TYPES = pa.schema([("_order", pa.int64()), (ROW_COLUMN, pa.int64()), ("_hash", pa.int64()),
                       ("_id", pa.string()), ("_id_shown", pa.string())])


def typed_types(schema: Schema, id_column: str | None) -> pa.Schema:
    """The typed window's columns as `coerce` makes them, fixed for every batch's partition."""
    kinds = {"numeric": pa.float64(), "boolean": pa.float64(), "categorical": pa.string()}
    target = (pa.string() if schema.string_labels else
              pa.float64() if schema.numeric_target else pa.int64())
    fields = [(schema.time_column, pa.timestamp("us")),
              *[(f.name, kinds[f.type]) for f in schema.features], (schema.target, target),
              *([(id_column, pa.string())] if id_column else []),
              (ROW_COLUMN, pa.int64()), ("_order", pa.int64())]
    return pa.schema(fields)


def run(params: Params, spark: SparkSession | None = None) -> tuple[Validation, int]:
    """The stage on params.engine: reports/validation.json always; the typed window (a file,
    or a folder partitioned by batch on Spark) only when every check passed."""
    batches = [BatchFile.from_dict(b) for b in json.loads(params.path(BATCHES).read_text())]
    out = params.path(VALIDATED)
    out.parent.mkdir(parents=True, exist_ok=True)
    if uses_spark(params):
        with session_for(params, "validate", spark) as session:
            checks, verdicts, rows = validate_on_spark(params, session, batches, out)
        validation = Validation(checks, verdicts, pd.Series(dtype=bool))
    else:
        table = pd.read_parquet(params.path(DATASET))
        memo = BatchMemo(params.path(MEMO_DIR), params.schema, params.validate_)
        validation = check_batches(table, batches, params, memo)
        memo.prune()
        window = table[validation.keep]
        rows = len(window)
        replace_path(out)
        if not validation.failed:
            typed = (validation.typed if validation.typed is not None
                     else coerce(window, params.schema))
            typed[BATCH_COLUMN] = window[BATCH_COLUMN].to_numpy()  # for prepare.test_batches
            typed[ROW_COLUMN] = window[ROW_COLUMN].to_numpy()  # the reference sample's key
            typed.to_parquet(out, index=False)
    report_path = params.path(VALIDATION_REPORT)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report(validation, rows), indent=2) + "\n")
    return validation, rows


def refusal(validation: Validation, params: Params) -> str | None:
    """What the stage says when it fails (None: it passed): the refused batches, each failed
    rule with its count and an example, and where to fix them."""
    failed = validation.failed
    if not failed:
        return None
    refused = [b.file for b in validation.batches if b.verdict == "refused"]
    lines = "\n".join(f"  - {c.message}" for c in failed[:SHOWN_FAILURES])
    more = (f"\n  ... and {len(failed) - SHOWN_FAILURES} more in {VALIDATION_REPORT}"
            if len(failed) > SHOWN_FAILURES else "")
    return (f"validate: FAILED {len(failed)} of {len(validation.checks)} checks; refused "
            f"batches: {', '.join(refused) or 'none (the window as a whole failed)'}:\n"
            f"{lines}{more}\n{landing_hint(params)}. Report: {VALIDATION_REPORT}")


def main() -> None:
    params = load_params()
    validation, rows = run(params)
    failure = refusal(validation, params)
    if failure:
        sys.exit(failure)
    checked = [b for b in validation.batches if b.checked]
    # The window's rows only: a batch after the window is checked, not trained on.
    dropped = sum(b.dropped_rows for b in checked if b.role == "window")
    print(f"validate: {len(checked)} batches accepted, {rows} window rows passed "
          f"{len(validation.checks)} checks"
          + (f" ({dropped} repeated rows dropped from the window: {DROP_COST})"
             if dropped else "") + f" -> {VALIDATED}"
          + (" (Spark)" if uses_spark(params) else ""))


if __name__ == "__main__":
    main()
