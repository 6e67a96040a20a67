"""MLflow side of the pipeline: connect to the store and log a training run.

Importing this module imports mlflow (several seconds), so only the stages that talk to
MLflow import it, and only when they need it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.models import infer_signature

from mlpipeline import onnx_export
from mlpipeline.config import (
    FIT_TIMING,
    MODEL_FILE,
    REFERENCE,
    TEST_SPLIT,
    TRAIN_SPLIT,
    TUNE_REPORT,
    TUNE_TIMING,
    Params,
    ServiceConfig,
)
from mlpipeline.lineage import file_md5, flat_params, git_state, params_hash, raw_data_version
from mlpipeline.schema import CONTRACT_FILE, PREDICTION_COLUMN, ModelContract, Schema

# What the served model needs at load time, pinned to the versions the lock installed.
# Passing them saves MLflow ~10 s of inferring requirements in a subprocess.
MODEL_REQUIREMENTS = ["mlflow", "scikit-learn", "pandas", "numpy", "scipy", "skops", "joblib",
                      "onnxruntime"]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # logs, not a terminal
# We pass pip_requirements from the lock ourselves: skip MLflow's uv project detection.
os.environ.setdefault("MLFLOW_UV_AUTO_DETECT", "false")
# MLflow's hints that do not apply here: a local path matches its local-artefact source
# twice, and the int64 it warns about is the predicted class, which is never missing.
warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)


# A booster's library, which its pickled estimator needs besides scikit-learn.
FAMILY_REQUIREMENTS = {"xgboost": ["xgboost-cpu"], "lightgbm": ["lightgbm"]}


def pip_requirements(family: str = "") -> list[str]:
    names = MODEL_REQUIREMENTS + FAMILY_REQUIREMENTS.get(family, [])
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def client(params: ServiceConfig) -> Any:
    """An MlflowClient for the project's store (tracking and registry alike).

    The one way the project's modules reach MLflow: a client carries its store, so nothing
    depends on (or changes) the process's global tracking URI."""
    uri = params.tracking_uri()
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def store(params: ServiceConfig) -> Iterator[None]:
    """Fluent MLflow calls (start_run, register_model, load_model) in this block go to the
    project's store; the process's own URI and MLFLOW_TRACKING_URI are back after it.

    mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which `Params.tracking_uri` reads as
    the user's override: left set, it would pin the next project in this process (a test, a
    notebook) to this store."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    exported = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(params.tracking_uri()):
            yield
    finally:
        if exported is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = exported


# The MLflow UI's runs table shows no metric or parameter column until a user picks them, and
# its charts list every metric alphabetically. A saved view (the experiment tag its "Share"
# button writes) names the columns and puts the key metrics' charts first; the links `make ui`
# prints open it with ?viewStateShareKey=.
RUNS_VIEW_KEY = "key-metrics"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"
RUNS_VIEW_PARAMS = ("train.model", "window.end")
RUNS_VIEW_TAGS = ("training_window", "gate", "registered_version")


def runs_view(key_metrics: Sequence[str]) -> dict[str, Any]:
    """The runs page's view state: the task's key metrics, the model, the data window, the
    gate's verdict and the registered version as the table's columns, newest run first; a
    "Key metrics" section of bar charts above the UI's own sections, which take the rest."""
    def column(kind: str, name: str) -> str:  # the UI's column key, e.g. metrics.`roc_auc`
        return f"{kind}.`{name}`"

    def section(uuid: str, name: str) -> dict[str, Any]:
        return {"uuid": uuid, "name": name, "display": True, "isReordered": False,
                "deleted": False, "isGenerated": uuid != "key-metrics"}

    return {
        "selectedColumns": [column("attributes", "Models"),
                            *(column("metrics", m) for m in key_metrics),
                            *(column("params", p) for p in RUNS_VIEW_PARAMS),
                            *(column("tags", t) for t in RUNS_VIEW_TAGS)],
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "compareRunCharts": [{"uuid": f"key-{m}", "type": "BAR", "metricKey": m,
                              "metricSectionId": "key-metrics", "runsCountToCompare": 10,
                              "deleted": False, "isGenerated": False} for m in key_metrics],
        # The UI keeps its two sections last and adds every other metric to them.
        "compareRunSections": [section("key-metrics", "Key metrics"),
                               section("model-metrics", "Model metrics"),
                               section("system-metrics", "System metrics")],
        "isAccordionReordered": False,
    }


def experiment_tags(params: Params) -> dict[str, str]:
    """What the experiment carries for the UI: the model-training kind (not GenAI) and the
    runs table's columns."""
    return {"mlflow.experimentKind": "custom_model_development",
            RUNS_VIEW_TAG: json.dumps(runs_view(params.task.key_metrics))}


def experiment_id(params: Params) -> str:
    """The configured experiment's id, created (with its artefact location) if new, its UI
    tags brought up to date (an older experiment, or another task's key metrics)."""
    tracker = client(params)
    name = params.mlflow.experiment
    tags = experiment_tags(params)
    experiment = tracker.get_experiment_by_name(name)
    if experiment is None:
        return str(tracker.create_experiment(name, artifact_location=params.artifact_location(),
                                             tags=tags))
    for key, value in tags.items():
        if experiment.tags.get(key) != value:
            tracker.set_experiment_tag(experiment.experiment_id, key, value)
    return str(experiment.experiment_id)


def signature(schema: Schema, example: pd.DataFrame, predictions: Any) -> Any:
    """The model's MLflow signature from the schema, not guessed from a few rows: every
    feature the schema lets be null is optional (`required: false`)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec
    from mlflow.types import Schema as ColumnSchema

    inputs = ColumnSchema([
        ColSpec({"numeric": "double", "boolean": "boolean"}.get(spec.type, "string"), spec.name,
                required=spec.max_null_share == 0) for spec in schema.features])
    return ModelSignature(inputs, infer_signature(example, predictions).outputs)


class SplitDataset(PandasDataset):
    """A split described by its file (split_dataset): the profile counts the file's rows, not
    those of the empty frame that carries the columns."""

    rows = 0
    columns = 0

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self.rows, "num_elements": self.rows * self.columns}


def split_dataset(path: Path, source: str | None, target: str, name: str, md5: str) -> Any:
    """An MLflow dataset input for a split file, from its Parquet footer alone: its digest is
    the file's md5 (as DVC keeps it), its schema the column types (a column is required when
    no row group counts a null), its profile the footer's row count. No row is read: at 10M
    rows the splits do not fit beside the model, and MLflow would infer the schema value by
    value in Python (58 s of a 1M-row evaluate) and hash the frame again."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.types import ColSpec
    from mlflow.types import Schema as ColumnSchema

    footer = pq.ParquetFile(path)
    columns = footer.schema_arrow
    rows = footer.metadata.num_rows

    def kind(type_: pa.DataType) -> str:
        if pa.types.is_timestamp(type_) or pa.types.is_date(type_):
            return "datetime"
        if pa.types.is_boolean(type_):
            return "boolean"
        if pa.types.is_integer(type_):
            return "long"
        return "double" if pa.types.is_floating(type_) else "string"

    def has_nulls(index: int) -> bool:  # unknown without statistics: say it may be null
        groups = [footer.metadata.row_group(g).column(index).statistics
                  for g in range(footer.metadata.num_row_groups)]
        return any(s is None or not s.has_null_count or s.null_count > 0 for s in groups)

    where = {"source": source} if source else {}  # none: MLflow names the code
    named = from_pandas(columns.empty_table().to_pandas(), targets=target, name=name,
                        digest=md5[:8], **where)
    found = SplitDataset(named.df, named.source, targets=target, name=name, digest=md5[:8])
    found.rows, found.columns = rows, len(columns)
    # `schema` is a cached_property: a value in the instance's dict is what it returns.
    found.__dict__["schema"] = ColumnSchema([
        ColSpec(kind(field.type), field.name, required=not has_nulls(i))
        for i, field in enumerate(columns)])
    return found


def first_rows(path: Path, rows: int) -> pd.DataFrame:
    """The first rows of a Parquet file, reading only its first batch."""
    import pyarrow.parquet as pq

    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
    return pd.DataFrame() if batch is None else batch.to_pandas()


def fit_seconds(params: Params, model_md5: str) -> float | None:
    """How long `train` took to fit this model (models/fit_timing.json), or None when that
    file is of another model: DVC's run cache restored the model without fitting it."""
    try:
        timing = json.loads(params.path(FIT_TIMING).read_text())
    except (OSError, ValueError):
        return None
    return float(timing["fit_seconds"]) if timing.get("model_md5") == model_md5 else None


def tune_run_id(params: Params) -> str:
    """The MLflow run of the search whose best point train fitted (models/tune_timing.json,
    when it belongs to this reports/tune.json), else ""."""
    try:
        timing = json.loads(params.path(TUNE_TIMING).read_text())
        same = timing.get("tune_md5") == file_md5(params.path(TUNE_REPORT))
    except (OSError, ValueError):
        return ""
    return str(timing.get("run_id", "")) if same else ""


def trusted_types(model: Any) -> list[str]:
    """The classes skops must be told to trust to save and load this (our own) model."""
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def log_training_run(
    params: Params,
    *,
    model: Any,
    metrics: dict[str, float],
    check_rows: pd.DataFrame,
    plot_tables: dict[str, pd.DataFrame],
    predictions: pd.DataFrame,
    train_info: dict[str, Any],
) -> dict[str, Any]:
    """One MLflow run for one trained model; returns what the registry stage needs.

    The splits are described from their files (split_dataset), never read whole: the ONNX
    twin is checked on `check_rows` (evaluate.check_rows of the test split)."""
    import matplotlib.pyplot as plt

    experiment = experiment_id(params)
    schema, task = params.schema, params.task
    commit, dirty = git_state(params.root)
    data_version = file_md5(params.path(TRAIN_SPLIT))
    window = f"{params.window.start}..{params.window.end}"
    lineage = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "data_version": data_version,
        "raw_data_version": raw_data_version(params.root),
        "training_window": window,
        "trained_until": str(train_info.get("trained_until", "")),
        # Where the fitted hyper-parameters come from: params.yaml or the search (its run).
        "hyperparams_source": str(train_info.get("hyperparams_source", "")),
        "tune_run_id": tune_run_id(params),
        "params_hash": params_hash(params),
        # The trained artefact's own hash (as in dvc.lock): same bytes, same model.
        "model_md5": file_md5(params.path(MODEL_FILE)),
    }
    with store(params), mlflow.start_run(
            experiment_id=experiment, run_name=f"{params.train.model}-{params.window.end}") as run:
        mlflow.set_tags({**lineage, "mlflow.source.git.commit": commit,
                         "model_type": params.train.model, "task": task.name})
        mlflow.log_params(flat_params(params))
        # what was fitted (the search's best point, or train.hyperparams as written)
        mlflow.log_params({f"fitted.{key}": value
                           for key, value in (train_info.get("hyperparams") or {}).items()})
        mlflow.log_metrics(metrics)
        seconds = fit_seconds(params, lineage["model_md5"])
        if seconds is not None:
            mlflow.log_metric("fit_seconds", seconds)
        mlflow.log_metric("train_rows", train_info["train_rows"])
        dataset_tags = {"dvc_md5": data_version, "window": window}
        mlflow.log_input(
            split_dataset(params.path(TRAIN_SPLIT), str(TRAIN_SPLIT), schema.target,
                          f"train-{window}", data_version),
            context="training", tags=dataset_tags)
        mlflow.log_input(
            split_dataset(params.path(TEST_SPLIT), None, schema.target, f"test-{window}",
                          file_md5(params.path(TEST_SPLIT))),
            context="evaluation", tags={"window": window})
        for name, fig in task.figures(plot_tables, predictions).items():
            mlflow.log_figure(fig, name)
            plt.close(fig)
        with tempfile.TemporaryDirectory() as tmp:
            for name, table in plot_tables.items():
                table.to_csv(Path(tmp) / f"{name}.csv", index=False)
            mlflow.log_artifacts(tmp, "plots")
        with tempfile.TemporaryDirectory() as tmp:
            # Monitoring compares production data with the reference of the model it serves,
            # and production's predictions with this model's own on the reference rows.
            reference = pd.read_parquet(params.path(REFERENCE))
            prediction, _ = task.drifting_prediction(
                task.scores(model, reference[schema.feature_names]))
            reference[PREDICTION_COLUMN] = prediction.to_numpy()
            reference.to_parquet(Path(tmp) / REFERENCE.name, index=False)
            mlflow.log_artifact(str(Path(tmp) / REFERENCE.name), "reference")
        onnx_bytes, onnx_figures = onnx_export.export(model, task, check_rows)
        error_text = onnx_figures.pop("onnx_error_text", None)
        if error_text:
            mlflow.log_text(error_text, onnx_export.ERROR_FILE)
        mlflow.set_tags({k: v for k, v in onnx_figures.items() if isinstance(v, str)})
        mlflow.log_metrics({k: v for k, v in onnx_figures.items() if not isinstance(v, str)})
        # Numbers as doubles, as the schema declares them (an integer column cannot hold null).
        features = first_rows(params.path(TRAIN_SPLIT), 1000)[schema.feature_names]
        example = features.dropna(subset=schema.boolean).head(5).astype(
            {name: "float64" for name in schema.numeric})
        example = example.astype({name: bool for name in schema.boolean})  # as the signature
        target = pd.read_parquet(params.path(TRAIN_SPLIT), columns=[schema.target])
        contract = ModelContract(schema=schema, threshold=params.evaluate.threshold,
                                 value_buckets=task.value_buckets(target[schema.target]))
        with tempfile.TemporaryDirectory() as tmp:
            # The contract the version is served by travels inside the model, beside it.
            contract_path = Path(tmp) / CONTRACT_FILE
            contract_path.write_text(contract.to_json())
            extra_files = [str(contract_path)]
            if onnx_bytes is not None:  # the verified twin travels inside the model
                onnx_path = Path(tmp) / onnx_export.FILE_NAME
                onnx_path.write_bytes(onnx_bytes)
                extra_files.append(str(onnx_path))
            logged = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature(schema, example, model.predict(example)),
                input_example=example,
                pip_requirements=pip_requirements(params.train.model),
                skops_trusted_types=trusted_types(model),
                extra_files=extra_files,
                tags={**lineage, "onnx": onnx_figures["onnx"]},
            )
    return {"run_id": run.info.run_id, "experiment_id": experiment,
            "model_uri": logged.model_uri, "model_id": logged.model_id, **lineage}
