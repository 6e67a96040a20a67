"""Configuration: `params.yaml` read once into typed, validated objects.

Every knob of every stage lives in `params.yaml`; this module gives them types so a typo
fails at start-up with the key's name instead of deep inside a stage.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import hashlib
import importlib.metadata
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlpipeline.schema import Schema
from mlpipeline.tasks import Task, task_for

PARAMS_FILE = "params.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DriftScenario(_Strict):
    """Drift the synthetic source injects from a given batch (0-based) on; null = never."""

    covariate_from_batch: int | None = None
    concept_from_batch: int | None = None
    strength: float = 1.0


class SourceParams(_Strict):
    kind: Literal["synthetic_loans", "breast_cancer", "files"] = "synthetic_loans"
    seed: int = 7
    start_date: dt.date = dt.date(2026, 1, 5)
    batch_days: int = Field(7, gt=0)
    batch_rows: int = Field(1500, gt=0)
    n_batches: int = Field(8, gt=0)
    # The landing folder: kind=files copies its YYYY-MM-DD.csv|parquet batches. dvc.yaml
    # declares it as a dependency of `generate` for every kind, so it must exist.
    path: str = "data/landing"
    drift: DriftScenario = DriftScenario()
    # synthetic_loans: which outcome each application carries (the target's column): whether
    # it defaulted (binary), the amount lost (regression) or its risk grade A-D (multiclass).
    outcome: Literal["default", "loss_amount", "risk_grade"] = "default"


class WindowParams(_Strict):
    """Batches (by their date) that the model trains on; both ends inclusive."""

    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> WindowParams:
        if self.end < self.start:
            raise ValueError(f"window.end {self.end} is before window.start {self.start}")
        return self


class ValidateParams(_Strict):
    min_rows: int = Field(100, ge=0)  # in the whole window
    min_batch_rows: int = Field(1, ge=1)  # in each batch
    # Shares of rows allowed to break a rule, in each batch and over the window.
    max_unknown_category_share: float = Field(0.01, ge=0, le=1)
    max_out_of_range_share: float = Field(0.0, ge=0, le=1)
    max_misdated_share: float = Field(0.0, ge=0, le=1)  # rows dated outside their batch
    # The newest batch has no next batch to end it: its rows must be dated before its name
    # plus this many days. null: source.batch_days.
    max_batch_days: int | None = Field(None, gt=0)
    # Two batches for one day, or rows a batch repeats from an earlier one: refuse the batch,
    # or drop the repeated rows (and count them in the report). A repeated row is the same id
    # with the same values (all but the time); with no id column, the same values: then
    # distinct entities with identical rows (coded answers, common profiles) count too.
    repeated_rows: Literal["refuse", "drop"] = "refuse"
    # Under `refuse`, the share of a batch's rows that may repeat earlier rows and stay.
    max_repeated_share: float = Field(0.0, ge=0, le=1)


class PrepareParams(_Strict):
    test_fraction: float = Field(0.2, gt=0, lt=1)
    # Coarse batches (monthly, yearly) cannot be cut near test_fraction: set this to make the
    # last N batches of the window the test split instead. null = the time cut.
    test_batches: int | None = Field(None, gt=0)
    reference_rows: int = Field(5000, gt=0)
    seed: int = 7


class TrainParams(_Strict):
    # A model family; each task has its estimator (see mlpipeline.tasks). `linear` is logistic
    # regression for classification, ridge for regression (`logistic_regression` still works
    # for classification).
    model: Literal["random_forest", "linear", "logistic_regression", "hist_gradient_boosting",
                   "xgboost", "lightgbm", "dummy"]
    seed: int = 7
    # Train on at most this many rows of the train split, the most recent ones; null: all.
    max_rows: int | None = Field(None, gt=0)
    # Hyper-parameters per model type; only the chosen model's block is used.
    hyperparams: dict[str, dict[str, Any]] = {}

    def chosen_hyperparams(self) -> dict[str, Any]:
        return dict(self.hyperparams.get(self.model, {}))


class SearchRange(BaseModel):
    """One hyper-parameter's range in tune.space: `low`..`high` (integers when both are;
    `log: true` draws on a log scale), or `choices`."""

    model_config = ConfigDict(extra="forbid")
    low: int | float | None = None  # an int stays an int: the range is then of integers
    high: int | float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either choices (a non-empty list) or low and high")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError("give low <= high, or choices")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scale range starts above 0")
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def values_to_check(self) -> list[Any]:
        """What load_params checks against the learner: both ends, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class TuneParams(_Strict):
    # Trials of the seeded search (Optuna's TPE) before `train`; 0: no search, train fits
    # train.hyperparams as written.
    trials: int = Field(0, ge=0)
    seed: int = 7
    # Each trial fits on the older rows of the train split and is scored on this newest
    # share of them, by time (never the test split: that belongs to the gate).
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    # The metric the search optimises, in its direction; null: gate.compare_metric.
    metric: str | None = None
    # Per model family: hyper-parameter -> range or choices. Keys left out keep their
    # train.hyperparams value.
    space: dict[str, dict[str, SearchRange]] = {}


class EvaluateParams(_Strict):
    threshold: float = Field(0.5, gt=0, lt=1)
    calibration_bins: int = Field(10, gt=1)
    curve_points: int = Field(200, ge=10)  # ROC and PR curves are thinned to about this many
    # The ONNX twin's parity and the gate's behaviour checks run on a seeded sample of this
    # many test rows (all when fewer; null: all): they move rows one by one in Python, and
    # the sample is what comes back to the driver on Spark. Metrics and slices use every row.
    check_rows: int | None = Field(100_000, ge=1)
    seed: int = 7  # which rows those are


class GateParams(_Strict):
    # Absolute floors on the task's metrics, e.g. roc_auc: 0.7; for a lower-is-better metric
    # (rmse, mae, mape, log_loss) the value is a ceiling: rmse: 900 means at most 900.
    min_metrics: dict[str, float] = {}
    # No regression against the champion on this metric (its direction comes with it); null:
    # the task's default (roc_auc, f1_macro, rmse).
    compare_metric: str | None = None
    tolerance: float = Field(0.0, ge=0)  # the challenger may trail the champion by this much
    # The same comparison on every slice of the test split: each value of these features
    # (numbers in `slice_bins` quantile bins) with at least `slice_min_rows` rows.
    slices: list[str] = []
    slice_min_rows: int = Field(100, gt=0)
    slice_tolerance: float = Field(0.02, ge=0)
    slice_bins: int = Field(4, ge=2)
    # Behavioural checks (mlpipeline.behaviour): the schema's `expect` rules, and these
    # features, whose value must not move the score by more than invariance_tolerance. Each
    # check fails when more than max_violation_share of the rows it moved break it.
    max_violation_share: float = Field(0.15, ge=0, le=1)
    invariant_features: list[str] = []
    invariance_tolerance: float = Field(0.05, ge=0)
    seed: int = 7  # the invariance check's draws


class PromotionParams(_Strict):
    # auto: a challenger that passes the gate becomes champion at once; manual: it stays
    # `challenger` until a person runs `make approve V=n` (or `make reject V=n`); shadow: as
    # manual, and meanwhile every replica scores each request with it too, off the request
    # path, logged beside the champion's answer (`make shadow-report`).
    mode: Literal["auto", "manual", "shadow"] = "auto"
    shadow_min_rows: int = Field(200, gt=0)  # labelled shadow rows before evidence counts


class CardParams(_Strict):
    # The model card's first lines (mlpipeline.card); empty: the task and target say it.
    purpose: str = ""
    owner: str = ""


class MlflowParams(_Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlartifacts"
    experiment: str = "default"
    registered_model: str = "model"


class MonitoringParams(_Strict):
    current: Literal["batch", "log"] = "batch"  # newest raw batch, or the prediction log
    log_window_hours: float = Field(168.0, gt=0)
    min_rows: int = Field(500, gt=0)  # fewer current rows: no verdict, no retrain
    # A larger window is judged on a seeded sample of this many rows (drift tests at this
    # size already see the smallest shift worth a retrain; Evidently's cost grows with rows).
    max_rows: int = Field(100_000, gt=0)
    drift_method: str | None = None  # Evidently stat test name; None = its default per column
    drift_threshold: float | None = Field(None, gt=0)
    drift_share: float = Field(0.3, gt=0, le=1)  # share of drifted features that means drift
    min_labelled_rows: int = Field(200, gt=0)  # for the performance check on new outcomes
    report_dir: str = "reports/monitoring"
    history_dir: str = "reports/monitoring/evidently"  # Evidently workspace: every check
    dashboard_port: int = 8050  # make dashboard: Evidently's UI on 127.0.0.1


class CtParams(_Strict):
    cooldown_batches: int = Field(2, ge=0)  # batches between automatic retrains
    summary_dir: str = "reports/ct"


class ServingParams(_Strict):
    host: str = "127.0.0.1"  # loopback by default; expose deliberately
    port: int = 8000
    poll_seconds: float = Field(10.0, gt=0)  # how often to check where `champion` points
    workers: int = Field(1, ge=1)  # uvicorn worker processes per replica (one port)
    max_records: int = Field(1000, gt=0)  # per request
    max_body_bytes: int = Field(2_000_000, gt=0)
    read_timeout_seconds: float = Field(10.0, gt=0)  # a body not in by then: 408 (stalled client)
    # Request headers not in by then: 408 and the connection closed (serving.connections);
    # connections past max_connections open in one worker: 503 and closed at once.
    header_timeout_seconds: float = Field(10.0, gt=0)
    max_connections: int = Field(1000, gt=0)
    max_errors: int = Field(20, gt=0)  # problems listed in one 422 answer (and a count of the rest)
    inline_body_bytes: int = Field(16_384, ge=0)  # smaller bodies: scored on the event loop
    # FastAPI's native OpenTelemetry (traces, metrics, logs to a provider the process sets
    # up). Off: the service has Prometheus, and the check costs ~6 us a request.
    opentelemetry: bool = False
    prediction_log_dir: str = "logs/predictions"
    # Compaction (make compact-log, each CT cycle) removes days older than this; null: keep all.
    log_retention_days: int | None = Field(None, gt=0)
    log_flush_records: int = Field(500, gt=0)  # write a Parquet part every N records ...
    log_flush_seconds: float = Field(5.0, gt=0)  # ... or every T seconds, whichever first
    # Records waiting for the log's writer; past this a request's records are dropped and
    # counted (prediction_log_records_failed{reason="queue_full"}), and /ready says so.
    log_queue_records: int = Field(100_000, gt=0)
    # A shadow (a waiting challenger the registry tags `shadow: true`): requests waiting for
    # it; more are dropped and counted
    shadow_queue_requests: int = Field(10_000, gt=0)
    admin_token_env: str = "SERVING_ADMIN_TOKEN"  # env var holding the /admin bearer token
    # env var holding the HMAC secret MLflow signs registry webhooks with (unset: webhooks off)
    webhook_secret_env: str = "SERVING_WEBHOOK_SECRET"
    webhook_max_age_seconds: float = Field(300.0, gt=0)  # older signed calls: 401 (replays)


class ScoreParams(_Strict):
    """`make score`: batch scoring of files with a registered version (serving.batch)."""

    # Rows read, checked, scored and written at a time: the job's memory follows this, not
    # the input's size.
    chunk_rows: int = Field(20_000, gt=0)


# Overrides engine.master (the stack and CI point the same params.yaml at their cluster).
ENGINE_MASTER_ENV = "ENGINE_MASTER"


class EngineParams(_Strict):
    """Where the data stages (ingest, validate, prepare) run: in this process (embedded) or
    as Spark jobs on `master` (local[*], spark://host:7077, k8s://..., yarn, sc://host:15002).
    The same rules and the same answers either way. On Spark, evaluate and the gate score the
    test split there too; the estimator's fit, the registry and the service stay on one
    machine."""

    kind: Literal["embedded", "spark"] = "embedded"
    master: str = "local[*]"
    conf: dict[str, str | int | float | bool] = {}  # Spark properties, e.g. spark.executor.memory

    def spark_master(self) -> str:
        return os.environ.get(ENGINE_MASTER_ENV) or self.master


class StackParams(_Strict):
    """`make stack`: the production topology as local processes (ports: 0 = any free one)."""

    dir: str = ".stack"
    bucket: str = "mlops"
    s3_port: int = Field(9100, ge=0)
    mlflow_port: int = Field(5100, ge=0)
    replica_ports: list[int] = Field([8001, 8002], min_length=1)
    poll_seconds: float = Field(10.0, gt=0)  # the replicas' fallback when a webhook is lost
    webhooks: bool = True  # each replica reloads on MLflow's alias webhook
    # A Spark standalone cluster from the environment's pyspark (engine.kind: spark): its
    # master, and workers each capped in cores and memory.
    spark_master_port: int = Field(7077, ge=0)
    spark_ui_port: int = Field(8080, ge=0)
    spark_workers: int = Field(2, ge=0)  # 0: no cluster
    spark_worker_cores: int = Field(1, gt=0)
    spark_worker_memory: str = "1g"


class ServiceConfig(_Strict):
    """What the service needs: where the registry is and its own limits, nothing else.

    A model version carries its own contract (features, classes, threshold), so a replica
    runs from a params.yaml with only `mlflow` and `serving` sections; `Params` extends it
    with the pipeline's sections."""

    mlflow: MlflowParams = MlflowParams()
    serving: ServingParams = ServingParams()
    score: ScoreParams = ScoreParams()
    engine: EngineParams = EngineParams()  # the data stages' and `make score`'s
    root: Path = Path(".")  # folder of params.yaml; relative paths resolve against it

    def path(self, relative: str | Path) -> Path:
        return self.root / relative

    def tracking_uri(self) -> str:
        """`MLFLOW_TRACKING_URI` wins; a relative sqlite path is anchored at the project."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow.tracking_uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
            uri = prefix + str((self.root / uri[len(prefix) :]).resolve())
        return uri

    def artifact_location(self) -> str | None:
        """Where new experiments keep artefacts; None lets a tracking server decide."""
        if not self.tracking_uri().startswith("sqlite:"):
            return None
        return (self.root / self.mlflow.artifact_root).resolve().as_uri()


class Params(ServiceConfig):
    source: SourceParams
    window: WindowParams
    schema_: Schema = Field(alias="schema")
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    prepare: PrepareParams = PrepareParams()
    train: TrainParams
    tune: TuneParams = TuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    promotion: PromotionParams = PromotionParams()
    card: CardParams = CardParams()
    monitoring: MonitoringParams = MonitoringParams()
    ct: CtParams = CtParams()
    stack: StackParams = StackParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @property
    def schema(self) -> Schema:  # type: ignore[override]  # shadows pydantic v1's schema()
        return self.schema_

    @property
    def task(self) -> Task:
        """What the schema's task decides (estimators, metrics, plots, answers)."""
        return task_for(self.schema_, self.evaluate.threshold)

    @model_validator(mode="after")
    def _fits_the_task(self) -> Params:
        if self.validate_.max_batch_days is None:
            self.validate_ = self.validate_.model_copy(
                update={"max_batch_days": self.source.batch_days})
        task = self.task
        if self.gate.compare_metric is None:
            self.gate = self.gate.model_copy(update={"compare_metric": task.default_metric})
        named = {f"gate.min_metrics.{name}": name for name in self.gate.min_metrics}
        named["gate.compare_metric"] = str(self.gate.compare_metric)
        if self.tune.metric is not None:
            named["tune.metric"] = self.tune.metric
        for key, metric in named.items():
            if task.unknown_metrics([metric]):
                raise ValueError(f"{key}: {metric!r} is not a metric of task {task.name}; "
                                 f"valid: {task.metric_list()}")
        features = self.schema_.feature_names
        for key, names in (("gate.slices", self.gate.slices),
                           ("gate.invariant_features", self.gate.invariant_features)):
            for name in names:
                if name not in features:
                    raise ValueError(f"{key}: {name!r} is not a feature of the schema; "
                                     f"use one of {', '.join(features)}")
        if self.train.model not in task.estimators:
            raise ValueError(f"train.model {self.train.model!r} is not a model family of task "
                             f"{task.name}: use one of {', '.join(task.estimators)}")
        return self


def find_root(start: Path | None = None) -> Path:
    """The project folder: the nearest parent holding params.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder
    raise SystemExit(f"no {PARAMS_FILE} in {here} or its parents: run from the project folder")


def load_params(root: Path | None = None) -> Params:
    root = find_root(root)
    raw = yaml.safe_load((root / PARAMS_FILE).read_text())
    params: Params = _validated(Params, {**raw, "root": root})
    _check_hyperparams(params)
    return params


def _check_hyperparams(params: Params) -> None:
    """Every hyper-parameter against the task's estimators, here and not in train: a value
    the estimator refuses must stop the first stage. The check imports scikit-learn (0.6 s
    a process: +3.5 s on a cold `dvc repro`), so a passed check is remembered by what
    decides it (task, hyper-parameters, scikit-learn, the checking code) in .dvc/tmp.
    (Not in load_service_config: a replica trains nothing.)"""
    from mlpipeline.tasks import base

    space = {family: {key: value.model_dump(exclude_defaults=True)
                      for key, value in ranges.items()}
             for family, ranges in params.tune.space.items()}
    decided_by = json.dumps([params.task.name, params.train.hyperparams, space,
                             *(importlib.metadata.version(name) for name in CHECKED_LIBRARIES),
                             Path(base.__file__).read_text(),
                             Path(base.__file__).with_name("boosters.py").read_text()],
                            sort_keys=True, default=str)
    passed = params.path(HYPERPARAMS_CHECKED) / hashlib.sha256(decided_by.encode()).hexdigest()
    if passed.exists():
        return
    problems = params.task.hyperparam_problems(params.train.hyperparams)
    for family, ranges in params.tune.space.items():  # both ends of a range, every choice
        for key, values in ranges.items():
            for value in values.values_to_check():
                problems += params.task.hyperparam_problems({family: {key: value}},
                                                            where="tune.space")
    problems = list(dict.fromkeys(problems))  # a family the task lacks: said once
    if problems:
        raise SystemExit(f"{PARAMS_FILE} is not valid ({len(problems)} problem(s)):\n"
                         + "\n".join(f"  - {line}" for line in problems))
    with contextlib.suppress(OSError):  # a read-only project checks every time
        passed.parent.mkdir(parents=True, exist_ok=True)
        passed.touch()


CHECKED_LIBRARIES = ("scikit-learn", "xgboost-cpu", "lightgbm")


def load_service_config(root: Path | None = None) -> ServiceConfig:
    """The service's settings. A replica's params.yaml may hold only `mlflow` and `serving`;
    in the pipeline's own params.yaml the whole file is read, so its schema can serve a
    version logged before models carried their contract."""
    root = find_root(root)
    raw = yaml.safe_load((root / PARAMS_FILE).read_text()) or {}
    return _validated(Params if "schema" in raw else ServiceConfig, {**raw, "root": root})


def _validated(model: type[ServiceConfig], data: dict[str, Any]) -> Any:
    """The typed params, or an exit naming each key that is wrong and the fix (no traceback)."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            key = ".".join(str(part).rstrip("_") for part in problem["loc"])
            message = problem["msg"].removeprefix("Value error, ")
            if problem["type"] == "extra_forbidden":
                message = _unknown_key(model, problem["loc"])
            lines.append(f"  - {key + ': ' if key else ''}{message}")
        raise SystemExit(f"{PARAMS_FILE} is not valid ({len(lines)} problem(s)):\n"
                         + "\n".join(lines)) from None


def _unknown_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """What to write instead of an unknown key: the closest valid one, and all of them."""
    section: Any = model
    for part in loc[:-1]:
        fields = {info.alias or name: info for name, info in section.model_fields.items()}
        annotation = fields[part].annotation if part in fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return "not a setting here: remove it"
        section = annotation
    valid = [info.alias or name for name, info in section.model_fields.items()
             if name != "root"]
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    where = f"of {loc[-2]}" if len(loc) > 1 else "at the top level"
    return f"not a setting {where}: {hint}(valid: {', '.join(valid)})"


# Where each stage reads and writes, relative to the project root (dvc.yaml names the same).
RAW_DIR = Path("data/raw")
DATASET = Path("data/interim/dataset.parquet")
BATCHES = Path("data/interim/batches.json")
VALIDATED = Path("data/interim/validated.parquet")
TRAIN_SPLIT = Path("data/prepared/train.parquet")
TEST_SPLIT = Path("data/prepared/test.parquet")
REFERENCE = Path("data/prepared/reference.parquet")
MODEL_FILE = Path("models/model.joblib")
TRAIN_INFO = Path("models/train_info.json")
# The fit's seconds, for MLflow: beside the model but not a DVC output (a timing differs every
# run, and a DVC output must be the same bytes on every machine). Keyed by the model's md5.
FIT_TIMING = Path("models/fit_timing.json")
TUNE_REPORT = Path("reports/tune.json")  # the search's best point (train reads it)
TUNE_TIMING = Path("models/tune_timing.json")  # its seconds and MLflow run: not a DVC output
VALIDATION_REPORT = Path("reports/validation.json")
METRICS = Path("reports/metrics.json")
PREDICTIONS = Path("reports/predictions.csv")
PLOTS_DIR = Path("reports/plots")
PLOTS_SPEC = Path("reports/dvc.yaml")  # the task's `dvc plots` definitions (evaluate writes it)
RUN_INFO = Path("reports/run.json")
GATE_REPORT = Path("reports/gate.json")
HYPERPARAMS_CHECKED = Path(".dvc/tmp/hyperparams-checked")  # hyper-parameters that passed


def set_values(text: str, updates: dict[str, Any]) -> str:
    """params.yaml text with `section.key` values replaced, comments and layout kept.

    CT moves the source clock and the training window this way, so the file a person wrote
    stays readable and a diff shows only the values that moved.
    """
    lines = text.splitlines(keepends=True)
    for dotted, value in updates.items():
        section, key = dotted.split(".")
        literal = json.dumps(value) if isinstance(value, str) else str(value)
        line_re = re.compile(rf"^(  {re.escape(key)}:[ \t]*)([^#\n]*?)([ \t]*)(#.*)?(\n?)$")
        current = None
        for i, line in enumerate(lines):
            top = re.match(r"^([A-Za-z_]\w*):", line)
            if top:
                current = top.group(1)
            elif current == section and (match := line_re.match(line)):
                head, old, gap, comment, end = match.groups()
                # Keep a trailing comment in its column when the value's width changes.
                pad = " " * max(1, len(old) + len(gap) - len(literal)) if comment else ""
                lines[i] = f"{head}{literal}{pad}{comment or ''}{end}"
                break
        else:
            raise KeyError(f"params.yaml has no {dotted}")
    out = "".join(lines)
    data = yaml.safe_load(out)
    for dotted, value in updates.items():
        section, key = dotted.split(".")
        if str(data[section][key]) != str(value):
            raise ValueError(f"params.yaml: could not set {dotted} to {value!r}")
    return out
