"""Tracking set-up: side effects of MLflow that must not leak."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO


def test_the_store_block_does_not_pin_the_process_to_the_project_store(tmp_path,
                                                                          monkeypatch) -> None:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; after `store` neither it nor
    MLflow's global URI may be left set, or every later project in the process would read
    it back as an override."""
    from mlpipeline import tracking
    from mlpipeline.config import load_params

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = load_params(REPO).model_copy(update={"root": tmp_path})
    before = tracking.mlflow.get_tracking_uri()
    with tracking.store(params):
        assert tracking.mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking.mlflow.get_tracking_uri() == before

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the user's own choice
    with tracking.store(params):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"


@pytest.mark.slow
def test_registry_and_monitoring_leave_mlflow_global_uri_unset(trained_project) -> None:
    """Every module reaches MLflow through `tracking` (a client that carries its store, or
    a `store` block): after looking up the champion, loading it and reading its reference
    (what the CT cycle does in its own process), no global tracking URI is left set."""
    script = """
import json, os
from mlflow.tracking._tracking_service import utils
from mlpipeline.config import load_params
from mlpipeline.registry import Registry
from monitoring.drift import champion_reference

params = load_params()
registry = Registry(params)
registry.load_sklearn("1")
info, reference = champion_reference(registry)
print(json.dumps({"set": utils._tracking_uri, "env": os.environ.get("MLFLOW_TRACKING_URI"),
                  "rows": len(reference), "versions": len(registry.versions())}))
"""
    out = trained_project.run(sys.executable, "-c", script).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["versions"] >= 1 and found["rows"] > 0
    assert found["set"] is None and found["env"] is None


@pytest.mark.slow
def test_the_logged_signature_and_contract_come_from_the_schema(trained_project) -> None:
    """The signature is built from the schema, not inferred from five rows: a feature the
    schema lets be null is optional. The contract beside it is the schema and threshold."""
    from mlflow.models import get_model_info

    from mlpipeline import tracking
    from mlpipeline.config import load_params
    from mlpipeline.schema import CONTRACT_FILE, ModelContract

    params = load_params(trained_project.root)
    run = json.loads((trained_project.root / "reports/run.json").read_text())
    with tracking.store(params):
        inputs = {spec.name: spec for spec in get_model_info(run["model_uri"]).signature.inputs}
        folder = tracking.mlflow.artifacts.download_artifacts(run["model_uri"])
    optional = {name for name, spec in inputs.items() if not spec.required}
    assert optional == {"employment_years", "credit_score"}  # max_null_share > 0
    assert inputs["age"].type.name == "double" and inputs["region"].type.name == "string"
    contract = ModelContract.model_validate_json(
        (Path(folder) / "extra_files" / CONTRACT_FILE).read_text())
    assert contract.schema == params.schema
    assert contract.threshold == params.evaluate.threshold


@pytest.mark.slow
def test_the_training_data_is_logged_with_its_dvc_hash_and_column_types(trained_project
                                                                        ) -> None:
    """The dataset inputs carry the split file's md5 (as in dvc.lock) and a schema read from
    the column types, which MLflow would otherwise infer value by value (a minute at 1M)."""
    from mlpipeline import tracking
    from mlpipeline.config import TEST_SPLIT, TRAIN_SPLIT, load_params
    from mlpipeline.lineage import file_md5

    params = load_params(trained_project.root)
    run = json.loads((trained_project.root / "reports/run.json").read_text())
    found = tracking.client(params).get_run(run["run_id"]).inputs.dataset_inputs
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in found}
    assert set(inputs) == {"training", "evaluation"}
    train, test = inputs["training"], inputs["evaluation"]
    assert train.digest == file_md5(trained_project.root / TRAIN_SPLIT)[:8]
    assert test.digest == file_md5(trained_project.root / TEST_SPLIT)[:8]
    columns = {c["name"]: c for c in json.loads(train.schema)["mlflow_colspec"]}
    assert columns["application_date"]["type"] == "datetime"
    assert columns["age"] == {"type": "double", "name": "age", "required": True}
    assert columns["credit_score"]["required"] is False  # it has missing values
    assert columns["region"]["type"] == "string" and columns["default"]["type"] == "long"
    assert json.loads(train.profile)["num_rows"] == len(
        pd.read_parquet(trained_project.root / TRAIN_SPLIT))
