"""Batch scoring: CSV or Parquet files scored with a registered version, each record answered
as the service answers it.

    make score INPUT=path OUTPUT=folder [V=n | ALIAS=name] [OVERWRITE=1] [STRICT=1]

The input (a file, or a folder of them) is read `score.chunk_rows` rows at a time, so memory
follows the chunk and not the input. Each record is checked against the version's own
contract by the service's rules and messages (serving.scoring), the valid ones are scored by
the service's runtime (the verified ONNX twin, else scikit-learn), and the job writes:

- OUTPUT/predictions/: Parquet, one row per valid record, in input order: the schema's id
  column (text, as the prediction log keeps it), `prediction`, the task's probabilities
  (`probability`, or one `probability_<class>` per class) and `model_version`;
- OUTPUT/rejects.parquet: each refused record (`file`, `row`, the record as JSON) with its
  `reason`; a refused record never stops the job, unless STRICT=1;
- OUTPUT/manifest.json: the model, every input with its md5, rows in, scored and rejected,
  the engine, the start and the end.

The folder is filled under a temporary name and renamed once whole: a killed job leaves no
OUTPUT (the next run removes what it left). Columns the contract does not know (the target,
a warehouse's own) are not scored and are named in the manifest.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlpipeline.config import ServiceConfig, load_service_config
from mlpipeline.engine import each_task, session_for, uses_spark
from mlpipeline.schema import Schema
from serving.champion import Champion, LoadedModel, is_missing
from serving.prediction_log import part_name
from serving.schemas import logged_as_text
from serving.scoring import column_errors

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SUFFIXES = (".csv", ".parquet")


class BatchError(Exception):
    """The job cannot run or must stop; the message says why and what to do."""


@dataclass
class Counts:
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    ignored_columns: set[str] = field(default_factory=set)

    def add(self, other: Counts) -> None:
        self.rows += other.rows
        self.scored += other.scored
        self.rejected += other.rejected
        self.ignored_columns |= other.ignored_columns


def input_files(path: Path) -> list[Path]:
    """The CSV and Parquet files of INPUT: the file itself, or a folder's, in name order
    (hidden files aside)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise BatchError(f"{path} holds no .csv or .parquet file")
        return files
    if not path.is_file():
        raise BatchError(f"{path} does not exist: INPUT is a CSV or Parquet file, or a "
                         "folder of them")
    if path.suffix.lower() not in SUFFIXES:
        raise BatchError(f"{path} is neither .csv nor .parquet")
    return [path]


def md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_chunks(path: Path, schema: Schema, chunk_rows: int) -> Iterator[dict[str, list[Any]]]:
    """The file's records, `chunk_rows` at a time, as columns of Python values: what the
    service's column check takes (a JSON body's numbers, text, booleans and nulls)."""
    if path.suffix.lower() == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield {name: _arrow_values(batch.column(name), name in schema.logged_columns)
                   for name in batch.schema.names}
        return
    # Categories and ids as written ("007" stays text); numbers and booleans as parsed.
    text = {s.name for s in schema.features if s.type == "categorical"}
    text.update(schema.logged_columns)
    numeric = {s.name for s in schema.features if s.type == "numeric"}
    with pd.read_csv(path, chunksize=chunk_rows, dtype=dict.fromkeys(text, str)) as reader:
        for frame in reader:
            yield {str(name): _csv_values(frame[name], name in numeric)
                   for name in frame.columns}


def _arrow_values(column: pa.Array, logged: bool) -> list[Any]:
    if logged and (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
        column = column.cast(pa.string())  # the time: logged as text, never scored
    return column.to_pylist()


def _csv_values(series: pd.Series, numeric: bool) -> list[Any]:
    """A CSV column as Python values: an empty cell is null, as in the service's text/csv
    path. Unlike a request, answered or refused whole, a numeric column with text in it
    keeps its numbers as numbers and the text as text, which the check refuses record by
    record (pandas reads the whole column as text)."""
    if numeric and series.dtype == object:
        parsed = pd.to_numeric(series, errors="coerce")
        series = parsed.astype(object).where(parsed.notna() | series.isna(), series)
    values = series.tolist()
    if series.hasnans:
        values = [None if type(v) is float and math.isnan(v) else v for v in values]
    return values


def checked(columns: dict[str, list[Any]], model: LoadedModel, where: str
            ) -> tuple[dict[str, list[Any]], list[tuple[int, str]]]:
    """The valid records of a chunk (as columns) and each refused one's index and reason,
    by the service's rules and messages."""
    schema = model.schema
    missing = [name for name in schema.feature_names if name not in columns]
    if missing:
        raise BatchError(f"{where}: no column {', '.join(missing)}; version "
                         f"{model.version}'s contract needs {', '.join(schema.feature_names)}")
    if model.requests.columns_valid(columns):
        return columns, []
    reasons: dict[int, list[str]] = {}
    for error in column_errors(columns, schema):
        if error["record"] is None:  # a whole column (none remain once missing ones stop)
            raise BatchError(f"{where}: column {error['field']}: {error['msg']}")
        reasons.setdefault(error["record"], []).append(f"{error['field']}: {error['msg']}")
    keep = [i for i in range(len(next(iter(columns.values())))) if i not in reasons]
    valid = {name: [values[i] for i in keep] for name, values in columns.items()}
    return valid, [(i, "; ".join(found)) for i, found in sorted(reasons.items())]


def prediction_schema(model: LoadedModel) -> pa.Schema:
    """OUTPUT/predictions' columns, fixed by the version's contract (not by a chunk)."""
    schema, task = model.schema, model.task
    fields = [pa.field(schema.id_column, pa.string())] if schema.id_column else []
    if task.name == "regression":
        fields.append(pa.field("prediction", pa.float64()))
    else:
        classes = schema.classes or []
        label = pa.string() if any(isinstance(c, str) for c in classes) else pa.int64()
        fields.append(pa.field("prediction", label))
        if task.name == "binary":
            fields.append(pa.field("probability", pa.float64()))
        else:
            fields += [pa.field(f"probability_{c}", pa.float64()) for c in classes]
    return pa.schema([*fields, pa.field("model_version", pa.string())])


@dataclass
class ScoredChunk:
    """One chunk's valid records scored: OUTPUT/predictions' rows and the prediction log's."""

    predictions: pa.Table
    log: pa.Table


def scored_chunk(model: LoadedModel, columns: dict[str, list[Any]], layout: pa.Schema,
                 job_id: str) -> ScoredChunk:
    """Score valid records; lay their answers out as OUTPUT/predictions' rows, and the
    records with their answers as the prediction log keeps the service's (`source: batch`,
    the job's id as the request id)."""
    rows = len(next(iter(columns.values())))
    answers = model.task.answers(model.scores(columns)).log
    data: dict[str, Any] = {"prediction": answers["prediction"]}
    if "probability" in answers:
        data["probability"] = answers["probability"]
    if "probabilities" in answers:
        by_class = list(zip(*answers["probabilities"], strict=True))
        for i, name in enumerate(model.schema.classes or []):
            data[f"probability_{name}"] = list(by_class[i])
    logged = logged_as_text(columns, model.schema.logged_columns)
    id_column = model.schema.id_column
    if id_column:
        data[id_column] = logged.get(id_column) or [None] * rows
    data["model_version"] = [model.version] * rows
    predictions = pa.table({f.name: pa.array(data[f.name], type=f.type) for f in layout},
                           schema=layout)
    log_columns = {**logged, **answers, "model_version": data["model_version"],
                   "request_id": [job_id] * rows, "role": ["champion"] * rows,
                   "source": ["batch"] * rows,
                   "served_at": [int(time.time() * 1_000_000)] * rows}
    types = {**model.requests.log_types, "served_at": pa.timestamp("us", tz="UTC")}
    log = pa.table({name: pa.array(values, type=types.get(name))
                    for name, values in log_columns.items()})
    return ScoredChunk(predictions, log)


REJECT_SCHEMA = pa.schema([("file", pa.string()), ("row", pa.int64()),
                           ("record", pa.string()), ("reason", pa.string())])


def reject_table(columns: dict[str, list[Any]], refused: list[tuple[int, str]], file: str,
                 first_row: int) -> pa.Table:
    records = [json.dumps({name: values[i] for name, values in columns.items()}, default=str)
               for i, _ in refused]
    return pa.table({"file": [file] * len(refused), "row": [first_row + i for i, _ in refused],
                     "record": records, "reason": [reason for _, reason in refused]},
                    schema=REJECT_SCHEMA)


def score_files(files: list[Path], folder: Path, model: LoadedModel, chunk_rows: int,
                strict: bool, progress: Callable[[int], None], job_id: str
                ) -> tuple[Counts, list[dict]]:
    """Fill `folder` (predictions/, rejects.parquet, and log/: the prediction log's parts)
    from `files`, one after the other; the counts and, per input, its path, md5 and rows."""
    prepare_folder(folder)
    counts, inputs = Counts(), []
    with (pq.ParquetWriter(folder / "rejects.parquet", REJECT_SCHEMA) as rejects,
          ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="score") as scorers):
        for number, path in enumerate(files):
            found, scored_input = score_file(number, path, folder, model, chunk_rows, strict,
                                             progress, job_id, rejects.write_table, scorers)
            counts.add(found)
            inputs.append(scored_input)
    return counts, inputs


def prepare_folder(folder: Path) -> None:
    (folder / "predictions").mkdir()
    (folder / LOG_PARTS).mkdir()


def score_file(number: int, path: Path, folder: Path, model: LoadedModel, chunk_rows: int,
               strict: bool, progress: Callable[[int], None], job_id: str,
               reject: Callable[[pa.Table], None], scorers: ThreadPoolExecutor
               ) -> tuple[Counts, dict]:
    """One input file into predictions/part-NUMBER.parquet and the log's parts; its refused
    records to `reject`. Both engines run this (on Spark, one task per file).

    Chunks are scored on the `scorers` threads while the next ones are read and checked:
    the ONNX runtime lets go of the GIL, and each chunk is scored by the same
    single-threaded session as the service's (a multi-threaded one sums a forest's trees in
    another order: probabilities 4e-7 apart, and a label at the threshold could flip).
    Results are written in input order; at most SCORING_THREADS chunks wait for it."""
    layout = prediction_schema(model)
    counts = Counts()
    known = {*model.schema.feature_names, *model.schema.logged_columns}
    pending: collections.deque[Future[ScoredChunk]] = collections.deque()
    written = 0

    def write(done: ScoredChunk) -> None:
        nonlocal written
        predictions.write_table(done.predictions)
        written += 1
        name = part_name(dt.datetime.now(dt.UTC), f"batch{number:05d}", written)
        pq.write_table(done.log, folder / LOG_PARTS / name)

    rows = 0
    with pq.ParquetWriter(folder / "predictions" / f"part-{number:05d}.parquet",
                          layout) as predictions:
        for chunk in read_chunks(path, model.schema, chunk_rows):
            counts.ignored_columns.update(set(chunk) - known)
            chunk = {name: values for name, values in chunk.items() if name in known}
            size = len(next(iter(chunk.values()), []))
            valid, refused = checked(chunk, model, f"{path}")
            if refused:
                if strict:
                    row, reason = refused[0]
                    raise BatchError(f"STRICT=1: {path} row {rows + row} is refused "
                                     f"({reason}); nothing was written")
                reject(reject_table(chunk, refused, str(path), rows))
            if size > len(refused):
                pending.append(scorers.submit(scored_chunk, model, valid, layout, job_id))
            while len(pending) > SCORING_THREADS:
                write(pending.popleft().result())
            rows += size
            counts.rows += size
            counts.scored += size - len(refused)
            counts.rejected += len(refused)
            progress(size)
        while pending:  # this file's last chunks, before its part is closed
            write(pending.popleft().result())
    return counts, {"path": str(path), "md5": md5(path), "rows": rows}


def score_files_on_spark(files: list[Path], folder: Path, params: ServiceConfig,
                         model: LoadedModel, strict: bool, job_id: str, spark: SparkSession
                         ) -> tuple[Counts, list[dict]]:
    """The same, one Spark task per input file (engine.kind: spark): each task loads the
    same version from the registry and runs `score_file`, writing its parts into `folder`
    (a path the executors share); only counts come back to the driver."""
    prepare_folder(folder)
    refused_parts = folder / ".rejects"
    refused_parts.mkdir()
    version, chunk_rows = model.version, params.score.chunk_rows
    # Executors have the cluster's environment, not this process's: name the registry the
    # driver resolved (MLFLOW_TRACKING_URI included) in the settings they get.
    params = params.model_copy(update={"mlflow": params.mlflow.model_copy(
        update={"tracking_uri": params.tracking_uri()})})

    def task(item: dict) -> dict:
        number, path = item["number"], Path(item["path"])
        try:
            on_executor = load_model(params, version, None)
            with (pq.ParquetWriter(refused_parts / f"part-{number:05d}.parquet",
                                   REJECT_SCHEMA) as rejects,
                  ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="score") as scorers):
                found, scored_input = score_file(number, path, folder, on_executor, chunk_rows,
                                                 strict, lambda rows: None, job_id,
                                                 rejects.write_table, scorers)
        except BatchError as error:
            return {"error": str(error)}
        return {"counts": {**asdict(found), "ignored_columns": sorted(found.ignored_columns)},
                "input": {**scored_input, "path": item["shown"]}}

    results = each_task(spark, [{"number": i, "path": str(p.resolve()), "shown": str(p)}
                                for i, p in enumerate(files)], task)
    if errors := [r["error"] for r in results if "error" in r]:
        raise BatchError(errors[0])
    counts = Counts()
    for result in results:
        counts.add(Counts(**{**result["counts"],
                             "ignored_columns": set(result["counts"]["ignored_columns"])}))
    with pq.ParquetWriter(folder / "rejects.parquet", REJECT_SCHEMA) as rejects:
        for part in sorted(refused_parts.glob("part-*.parquet")):  # in input order
            rejects.write_table(pq.read_table(part))
    shutil.rmtree(refused_parts)
    return counts, [r["input"] for r in results]


SCORING_THREADS = 2
LOG_PARTS = "log"  # in the partial folder: the log's parts, moved into the log at the end


def hand_to_log(parts: Path, log: Path) -> int:
    """Move the job's log parts into the prediction log (today's partition), each under a
    hidden name first and then renamed, as the service writes its own: a reader sees a part
    whole or not at all. Returns how many."""
    day = log / f"date={dt.datetime.now(dt.UTC).date().isoformat()}"
    day.mkdir(parents=True, exist_ok=True)
    moved = 0
    for part in sorted(parts.glob("part-*.parquet")):
        hidden = day / f".{part.name}.tmp"
        shutil.move(part, hidden)  # a copy when the log is on another file system
        hidden.rename(day / part.name)
        moved += 1
    parts.rmdir()
    return moved


def write_whole(output: Path, overwrite: bool, fill: Callable[[Path], Any]) -> Any:
    """Run `fill` on a temporary folder beside OUTPUT and rename it to OUTPUT once it
    returns: OUTPUT is never half written. What a killed run left is removed first."""
    if output.exists() and not overwrite:
        raise BatchError(f"{output} exists: name another OUTPUT, or OVERWRITE=1 to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    for left in output.parent.glob(f".{output.name}.partial-*"):
        pid = left.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)
    partial = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        result = fill(partial)
        if output.exists():
            replaced = output.parent / f".{output.name}.replaced-{os.getpid()}"
            output.rename(replaced)
            partial.rename(output)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            partial.rename(output)
        return result
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def run(params: ServiceConfig, input_path: Path, output: Path, version: str | None = None,
        alias: str | None = None, overwrite: bool = False, strict: bool = False,
        spark: SparkSession | None = None) -> dict:
    """The job: score INPUT into OUTPUT; returns the manifest."""
    started = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    files = input_files(input_path)
    source, target = input_path.resolve(), output.resolve()
    if target == source or source in target.parents:
        raise BatchError(f"OUTPUT {output} is INPUT or inside it: name another folder")
    model = load_model(params, version, alias)
    job_id = f"{started:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    bar = _progress(files)

    def fill(folder: Path) -> dict:
        if uses_spark(params):
            with session_for(params, "score", spark) as session:
                counts, inputs = score_files_on_spark(files, folder.resolve(), params, model,
                                                      strict, job_id, session)
        else:
            counts, inputs = score_files(files, folder, model, params.score.chunk_rows,
                                         strict, bar.update, job_id)
        log = params.path(params.serving.prediction_log_dir)
        hand_to_log(folder / LOG_PARTS, log)
        manifest = {
            "job_id": job_id,
            "model": {"name": model.name, "version": model.version, "run_id": model.run_id,
                      "runtime": model.runtime},
            "inputs": inputs,
            "rows": {"in": counts.rows, "scored": counts.scored, "rejected": counts.rejected},
            "ignored_columns": sorted(counts.ignored_columns),
            # where the scored records are, for the drift check (make drift CURRENT=OUTPUT)
            "prediction_log": {"dir": str(log), "request_id": job_id,
                               "records": counts.scored, "source": "batch"},
            "engine": params.engine.kind,
            "chunk_rows": params.score.chunk_rows,
            "started_at": started.isoformat(timespec="seconds"),
            "ended_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest

    try:
        manifest = write_whole(output, overwrite, fill)
    finally:
        bar.close()
    manifest["seconds"] = round(time.perf_counter() - clock, 2)
    return manifest


def load_model(params: ServiceConfig, version: str | None, alias: str | None) -> LoadedModel:
    if version and alias:
        raise BatchError("give V= or ALIAS=, not both")
    champion = Champion(params)
    try:
        return champion.load(version, alias)
    except Exception as error:
        named = f"version {version}" if version else f"alias {alias or 'champion'!r}"
        if is_missing(error):
            raise BatchError(f"model {champion.name!r} has no {named} in the registry "
                             f"({params.tracking_uri()}): `make models` lists them") from None
        raise BatchError(f"could not load {champion.name!r} {named}: "
                         f"{type(error).__name__}: {error}") from None


def _progress(files: list[Path]) -> Any:
    """Rows, rows/s and the ETA on a terminal (rows counted from Parquet's footers, CSV's
    lines); nothing when the output is not a terminal (CI, a scheduler's log)."""
    from tqdm import tqdm

    shown = sys.stderr.isatty()
    total = sum(_rows_of(path) for path in files) if shown else None
    return tqdm(total=total, unit=" rows", unit_scale=True, disable=not shown,
                desc="scoring", smoothing=0.1)


def _rows_of(path: Path) -> int:
    if path.suffix.lower() == ".parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as file:
        return max(sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 20), b""))
                   - 1, 0)


def summary(manifest: dict, output: Path) -> str:
    rows, model = manifest["rows"], manifest["model"]
    files = len(manifest["inputs"])
    return (f"scored {rows['scored']:,} of {rows['in']:,} rows from {files} file"
            f"{'s' if files != 1 else ''} with {model['name']} v{model['version']} "
            f"({model['runtime']}), {rows['rejected']:,} rejected, in "
            f"{manifest['seconds']:.1f} s: {output}/predictions, rejects.parquet and "
            "manifest.json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="a CSV or Parquet file, "
                        "or a folder of them")
    parser.add_argument("--output", type=Path, required=True, help="the folder to write")
    parser.add_argument("--version", help="a version number (default: the champion)")
    parser.add_argument("--alias", help="an alias, e.g. challenger (default: champion)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--strict", action="store_true", help="fail on any refused record")
    parser.add_argument("--summary-to", type=Path, help="also append the last line to this "
                        "file (a CI job summary: $GITHUB_STEP_SUMMARY)")
    args = parser.parse_args(argv)
    params = load_service_config()
    try:
        manifest = run(params, args.input, args.output, args.version or None,
                       args.alias or None, args.overwrite, args.strict)
    except BatchError as error:
        print(f"score: {error}", file=sys.stderr)
        if args.summary_to:
            with args.summary_to.open("a") as out:
                out.write(f"Batch scoring failed: {error}\n")
        raise SystemExit(1) from None
    line = summary(manifest, args.output)
    print(line)
    if args.summary_to:
        with args.summary_to.open("a") as out:
            out.write(line[0].upper() + line[1:] + "\n")


if __name__ == "__main__":
    main()
