"""The served model: whatever the registry's `champion` alias points to, swapped atomically
when the alias moves.

A request takes one reference to the current `LoadedModel` and uses it to the end, so a swap
never changes the model under a request in flight; the old model is dropped once no request
holds it. Loading happens off the request path (in a worker thread).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpipeline import onnx_export
from mlpipeline.config import Params, ServiceConfig
from mlpipeline.schema import CONTRACT_FILE, ModelContract, Schema
from mlpipeline.tasks import Task, task_for
from serving.schemas import RequestContract, request_contract

log = logging.getLogger("serving.champion")

# A tracking server that is down must not stall a reload check for minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
# While the registry stays unreachable, say so once and then only this often (not every poll).
STILL_FAILING_LOG_SECONDS = 600


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    run_id: str
    model: Any  # the scikit-learn pipeline as registered
    requests: RequestContract  # the version's own contract, as request models and its task
    onnx_session: Any = None  # its verified ONNX twin, when the version ships one
    metadata: dict[str, Any] = field(default_factory=dict)
    # validated columns -> scores, with the twin when there is one (set after init)
    scores: Callable[[dict[str, list[Any]]], np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", self.task.scorer(self.model, self.onnx_session))

    @property
    def schema(self) -> Schema:
        return self.requests.schema

    @property
    def task(self) -> Task:
        return self.requests.task

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.onnx_session is not None else "scikit-learn"


class Champion:
    """Holds the current champion; `check()` reloads it when the alias has moved."""

    def __init__(self, params: ServiceConfig) -> None:
        from mlpipeline import tracking  # mlflow: the service pays this once, at start-up

        self._mlflow = tracking.mlflow
        self.params = params
        self.max_records = params.serving.max_records
        # Versions logged before contracts travelled with models are served by the pipeline's
        # params.yaml schema, when the service was given one.
        self.fallback_contract = (
            ModelContract(schema=params.schema, threshold=params.evaluate.threshold)
            if isinstance(params, Params) else None)
        self.name = params.mlflow.registered_model
        self.client = tracking.client(params)
        self.current: LoadedModel | None = None
        self.not_ready_reason = "the model has not been loaded yet"
        self.last_check_error = ""
        self.failing_since: dt.datetime | None = None  # first failed check of the current run
        self._logged_failure_at = 0.0
        self._lock = threading.Lock()  # one reload at a time (poller and /admin/reload)
        # The challenger awaiting a decision that the registry tags `shadow: true`, scored
        # beside the champion on every request (serving.shadow), and since when.
        self.shadow: LoadedModel | None = None
        self.shadow_since: str | None = None

    def registry_status(self) -> dict[str, Any]:
        """Whether the last check reached the registry (and loaded what it names)."""
        return {"reachable": not self.last_check_error,
                "error": self.last_check_error or None,
                "failing_since": self.failing_since.isoformat(timespec="seconds")
                if self.failing_since else None}

    def check(self, trigger: str = "check") -> str:
        """Look where `champion` points; load and swap if it moved. Returns what happened:
        'loaded', 'unchanged', 'no-champion' or 'error' (the current model stays). Then the
        shadow is looked up the same way: the registry, not this replica's params, decides.
        `trigger` (startup, poll, webhook, admin) goes into the loaded model's metadata
        before the swap: requests answered meanwhile on the event loop see it whole."""
        with self._lock:
            outcome = self._check_champion(trigger)
            if outcome != "error":  # an unreachable registry is said once, by the champion's
                self._check_shadow()
            return outcome

    def _check_champion(self, trigger: str) -> str:
        try:
            try:
                version = self.client.get_model_version_by_alias(self.name, "champion")
            except self._mlflow.exceptions.MlflowException as error:
                if is_missing(error):
                    self._recovered()  # the registry answered: no champion alias yet
                    if self.current is None:
                        self.not_ready_reason = (
                            f"no champion yet for model {self.name!r}: run the pipeline "
                            "(`make demo`) so a model passes the gate")
                    return "no-champion"
                raise
            if self.current is not None and self.current.version == str(version.version):
                self._recovered()
                return "unchanged"
            loaded = self._load(version)
            loaded.metadata["loaded_by"] = trigger
        except Exception as error:
            self._failed(f"{type(error).__name__}: {_first_line(error)}")
            return "error"
        old = self.current
        self.current = loaded  # the swap: one reference assignment
        self._recovered()
        log.info("serving %s v%s (was %s)", self.name, loaded.version,
                 f"v{old.version}" if old else "none")
        return "loaded"

    def load(self, version: str | None = None, alias: str | None = None) -> LoadedModel:
        """One version, by number or by alias (the champion when neither is given), loaded as
        the service loads what it serves (batch scoring: serving.batch)."""
        if version:
            found = self.client.get_model_version(self.name, version)
        else:
            found = self.client.get_model_version_by_alias(self.name, alias or "champion")
        return self._load(found)

    def _check_shadow(self) -> None:
        """The shadow: the `challenger` while it awaits a decision (tag approval: awaiting),
        is tagged `shadow: true` and is not the champion; none otherwise. A failure keeps
        what was there."""
        from mlpipeline.registry import CHALLENGER, in_shadow

        try:
            try:
                version = self.client.get_model_version_by_alias(self.name, CHALLENGER)
            except self._mlflow.exceptions.MlflowException as error:
                if not is_missing(error):
                    raise
                version = None
            champion = self.current.version if self.current else None
            if not in_shadow(version) or str(version.version) == champion:
                if self.shadow is not None:
                    log.info("shadow v%s stopped", self.shadow.version)
                self.shadow, self.shadow_since = None, None
                return
            if self.shadow is not None and self.shadow.version == str(version.version):
                return
            self.shadow = self._load(version)
            self.shadow_since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            log.info("shadow: v%s scores every request beside champion v%s",
                     self.shadow.version, champion)
        except Exception as error:
            log.warning("shadow check failed, keeping %s: %s: %s",
                        f"v{self.shadow.version}" if self.shadow else "no shadow",
                        type(error).__name__, _first_line(error))

    def _failed(self, error: str) -> None:
        now = time.monotonic()
        keeping = f"v{self.current.version}" if self.current else "no model"
        self.last_check_error = error
        if self.current is None:
            self.not_ready_reason = f"registry unreachable: {error}"
        if self.failing_since is None:
            self.failing_since = dt.datetime.now(dt.UTC)
            log.warning("champion check failed, keeping %s: %s", keeping, error)
            self._logged_failure_at = now
        elif now - self._logged_failure_at >= STILL_FAILING_LOG_SECONDS:
            log.warning("champion checks failing since %s, keeping %s: %s",
                        self.failing_since.isoformat(timespec="seconds"), keeping, error)
            self._logged_failure_at = now

    def _recovered(self) -> None:
        if self.failing_since is not None:
            seconds = (dt.datetime.now(dt.UTC) - self.failing_since).total_seconds()
            log.info("champion checks work again after %.0f s of failures", seconds)
        self.failing_since = None
        self.last_check_error = ""

    def _load(self, version: Any) -> LoadedModel:
        # Resolve through our own client, never MLflow's global URI (it may name another store).
        location = self.client.get_model_version_download_uri(self.name, version.version)
        # The download is gone once the model is in memory, and after a failed load too (a
        # replica checks every poll: each leftover folder would stay in the temp dir).
        with tempfile.TemporaryDirectory(prefix="champion-") as scratch:
            local = Path(self._mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=scratch,
                tracking_uri=self.client.tracking_uri))
            model = self._mlflow.sklearn.load_model(str(local))
            twin = local / "extra_files" / onnx_export.FILE_NAME
            onnx_session = onnx_export.session(twin.read_bytes()) if twin.is_file() else None
            contract = self._contract(local / "extra_files" / CONTRACT_FILE, version.version)
        schema = contract.schema
        task = task_for(schema, contract.threshold)
        run = self.client.get_run(version.run_id) if version.run_id else None
        metrics = run.data.metrics if run else {}
        tags = version.tags
        metadata = {
            "name": self.name,
            "version": str(version.version),
            "run_id": version.run_id,
            "task": task.name,
            "data_version": tags.get("data_version", ""),
            "raw_data_version": tags.get("raw_data_version", ""),
            "training_window": tags.get("training_window", ""),
            "git_commit": tags.get("git_commit", ""),
            "gate": tags.get("gate", ""),
            "gate_reason": tags.get("gate_reason", ""),
            "metrics": {k: metrics[k] for k in task.metric_directions if k in metrics},
            "loaded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "contract": {"task": task.name, "features": schema.feature_names,
                         "target": schema.target, "classes": schema.classes,
                         # a cut on the positive probability: only a binary model has one
                         **({"threshold": contract.threshold} if task.name == "binary"
                            else {}),
                         "decision": task.decision},
        }
        loaded = LoadedModel(self.name, str(version.version), version.run_id or "", model,
                             request_contract(contract, self.max_records), onnx_session,
                             metadata)
        metadata["runtime"] = loaded.runtime
        return loaded

    def _contract(self, path: Path, version: str) -> ModelContract:
        if path.is_file():
            return ModelContract.model_validate_json(path.read_text())
        if self.fallback_contract is None:
            raise ValueError(f"version {version} carries no {CONTRACT_FILE} (it was logged "
                             "before models carried their contract): retrain it with `dvc "
                             "repro`, or give the service a params.yaml with its `schema`")
        log.warning("version %s carries no %s: serving it with params.yaml's schema",
                    version, CONTRACT_FILE)
        return self.fallback_contract


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else ""


def is_missing(error: Exception) -> bool:
    """An MLflow error that says the model, version or alias does not exist."""
    code = getattr(error, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or (
        "not found" in str(error).lower())
