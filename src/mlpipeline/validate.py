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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
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
from mlpipeline.ingest import BatchFile
from mlpipeline.schema import (
    BATCH_COLUMN,
    ROW_COLUMN,
    Check,
    Schema,
    check_frame,
    coerce,
    row_ids,
    rule_check,
)

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
    check = rule_check(id_column, "ids not used by earlier batches", pd.Series(reused),
                       0.0, rows[id_column].reset_index(drop=True),
                       rows.reset_index(drop=True), file)
    if not drop or check.passed:
        return check
    return Check(id_column, check.rule, check.failed_rows, check.total_rows, 0.0, True,
                 detail=f"{check.failed_rows} of {check.total_rows} rows carry ids of earlier "
                        "batches (dropped)", batch=file)


def present(table: pd.DataFrame, schema: Schema) -> list[str]:
    """The schema's optional columns (the id) that the batches carry."""
    return [c for c in schema.optional_columns if c in table.columns]


def check_batches(table: pd.DataFrame, batches: list[BatchFile], params: Params,
                  memo: BatchMemo | None = None) -> Validation:
    """Every rule, batch by batch and over the window. A plain function on data (`memo`:
    batches checked before, whose own checks and typed rows are not worked out again)."""
    schema, rules = params.schema, params.validate_
    value_rules: dict[str, Any] = {
        "max_unknown_category_share": rules.max_unknown_category_share,
        "max_out_of_range_share": rules.max_out_of_range_share}
    checks: list[Check] = []
    verdicts: list[BatchVerdict] = []
    keep = pd.Series(False, index=table.index)
    first_file_of_day: dict[str, str] = {}
    # Hashes of the typed rows of earlier batches: one set that grows, so each batch costs
    # its own rows (np.isin on everything earlier re-sorted it all for every batch).
    earlier_rows: set[int] = set()
    earlier_ids: set[str] = set()  # every id of every earlier batch, the older ones' too
    # A re-delivered row carries a new time: rows are the same when all else is.
    same_row = [c for c in schema.columns if c != schema.time_column]
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
        found = file_checks(batch, schema, first_file_of_day.get(batch.date), rules)
        first_file_of_day.setdefault(batch.date, batch.file)
        if not any(not c.passed for c in found):
            rows = in_table[columns]
            known = memo.get(batch, rows.index) if memo else None
            if known:
                typed, own = known
            else:
                typed = coerce(rows, schema)  # once: the checks, dates, hashes, the output
                own = check_frame(rows, schema, min_rows=rules.min_batch_rows, **value_rules,
                                  batch=batch.file, typed=typed)
                own.append(dating_check(rows, typed[schema.time_column], batch, schema, rules))
                if memo and all(c.passed for c in own):
                    memo.put(batch, typed, own)
            found += own
            hashes = pd.util.hash_pandas_object(typed[same_row], index=False).tolist()
            repeated = np.fromiter(map(earlier_rows.__contains__, hashes), dtype=bool,
                                   count=len(hashes))
            earlier_rows.update(hashes)
            n_repeated = int(repeated.sum())
            found.append(Check(
                "*", "no rows repeated from earlier batches", n_repeated, len(rows), 0.0,
                n_repeated == 0 or drop, batch=batch.file,
                detail=f"{n_repeated} of {len(rows)} rows repeat rows of earlier batches "
                       "(all but the time)" + (" (dropped)" if drop else
                                               ": remove the repeated rows, or set "
                                               "validate.repeated_rows: drop")))
            ids = batch_ids(rows, schema).reindex(rows.index)
            reused = ids.map(earlier_ids.__contains__).fillna(False).to_numpy(dtype=bool)
            if schema.id_column in present(table, schema):
                found.append(id_reuse_check(rows, reused, schema.id_column, batch.file, drop))
            earlier_ids.update(ids.dropna())
            gone = repeated | (reused if drop else False)
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
                          else window, schema, min_rows=rules.min_rows, **value_rules,
                          typed=typed_window)
    return Validation(checks, verdicts, in_window & keep, typed_window)


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


def main() -> None:
    params = load_params()
    table = pd.read_parquet(params.path(DATASET))
    batches = [BatchFile.from_dict(b) for b in json.loads(params.path(BATCHES).read_text())]
    memo = BatchMemo(params.path(MEMO_DIR), params.schema, params.validate_)
    validation = check_batches(table, batches, params, memo)
    memo.prune()
    window = table[validation.keep]
    out = params.path(VALIDATED)
    report_path = params.path(VALIDATION_REPORT)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report(validation, len(window)), indent=2) + "\n")
    failed = validation.failed
    refused = [b.file for b in validation.batches if b.verdict == "refused"]
    if failed:
        out.unlink(missing_ok=True)
        lines = "\n".join(f"  - {c.message}" for c in failed[:SHOWN_FAILURES])
        more = (f"\n  ... and {len(failed) - SHOWN_FAILURES} more in {VALIDATION_REPORT}"
                if len(failed) > SHOWN_FAILURES else "")
        sys.exit(
            f"validate: FAILED {len(failed)} of {len(validation.checks)} checks; refused "
            f"batches: {', '.join(refused) or 'none (the window as a whole failed)'}:\n"
            f"{lines}{more}\n{landing_hint(params)}. Report: {VALIDATION_REPORT}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    typed = validation.typed if validation.typed is not None else coerce(window, params.schema)
    typed[BATCH_COLUMN] = window[BATCH_COLUMN].to_numpy()  # for prepare.test_batches
    typed.to_parquet(out, index=False)
    checked = [b for b in validation.batches if b.checked]
    dropped = sum(b.dropped_rows for b in checked)
    print(f"validate: {len(checked)} batches accepted, {len(window)} window rows passed "
          f"{len(validation.checks)} checks" + (f" ({dropped} repeated rows dropped)"
                                                if dropped else "") + f" -> {VALIDATED}")


if __name__ == "__main__":
    main()
