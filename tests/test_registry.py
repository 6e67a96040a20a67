"""The registry with a real MLflow store: first champion, promotion, rejection, floors,
rollback, lineage, and a failed run that leaves the champion alone.

The data comes from the real DVC stages (`dvc repro prepare`); then train, evaluate and
register run in this process for each scenario, so MLflow is imported once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import Project, make_project

pytestmark = pytest.mark.slow


def run_stages(project: Project) -> tuple[dict[str, Any], str]:
    """train -> evaluate -> register in process, as `dvc repro` would run them."""
    from mlpipeline import evaluate, register, train

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for stage in (train, evaluate, register):
            stage.main()
    return json.loads(project.read("reports/gate.json")), out.getvalue()


def use_model(project: Project, model: str, **hyperparams: Any) -> str:
    def update(params: dict[str, Any]) -> None:
        params["train"]["model"] = model
        params["train"]["hyperparams"][model] = hyperparams
    project.set_params(update)
    return project.commit(f"train {model} {hyperparams}")


def champion_predictions(project: Project) -> tuple[str, np.ndarray]:
    import mlflow

    from mlpipeline.config import load_params
    from mlpipeline.registry import CHAMPION, Registry

    registry = Registry(load_params(project.root))
    version = registry.version_by_alias(CHAMPION).version
    model = mlflow.sklearn.load_model(f"models:/{registry.name}@{CHAMPION}")
    test = pd.read_parquet(project.root / "data/prepared/test.parquet")
    return str(version), model.predict_proba(test[model.feature_names_in_])[:, 1]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    project = make_project(tmp_path_factory.mktemp("registry") / "project")

    def floors(params: dict[str, Any]) -> None:
        params["gate"] = {"min_metrics": {"roc_auc": 0.6, "precision": 0.2},
                          "compare_metric": "roc_auc", "tolerance": 0.005}
    project.set_params(floors)
    project.commit("test floors")
    project.dvc("repro", "prepare")
    cwd = os.getcwd()
    os.chdir(project.root)
    try:
        from mlpipeline.config import load_params
        from mlpipeline.registry import Registry

        steps: dict[str, Any] = {"project": project}
        use_model(project, "dummy", strategy="prior")
        steps["dummy"] = run_stages(project)
        commit = use_model(project, "random_forest", n_estimators=3, max_depth=2,
                           class_weight="balanced", random_state=1)
        steps["weak"] = run_stages(project)
        steps["weak_commit"] = commit
        commit = use_model(project, "random_forest", n_estimators=50, max_depth=10,
                           min_samples_leaf=5, class_weight="balanced_subsample")
        steps["strong"] = run_stages(project)
        steps["strong_commit"] = commit
        steps["champion_before_worse"] = champion_predictions(project)
        use_model(project, "random_forest", n_estimators=2, max_depth=1,
                  class_weight="balanced", random_state=3)
        steps["worse"] = run_stages(project)
        steps["champion_after_worse"] = champion_predictions(project)
        registry = Registry(load_params(project.root))
        steps["aliases_before_rollback"] = registry.aliases()
        steps["rollback"] = registry.rollback()
        steps["aliases_after_rollback"] = registry.aliases()
        steps["history"] = registry.history()
        steps["lineage_v3"] = registry.lineage("3")
        yield steps
    finally:
        os.chdir(cwd)


def test_model_below_the_floors_is_registered_but_never_champion(scenario: dict) -> None:
    report, output = scenario["dummy"]
    assert report["version"] == "1" and report["promoted"] is False
    assert report["champion_after"] is None
    assert "roc_auc >= floor" in report["reason"]
    assert "gate REJECTED" in output


def test_first_model_clearing_the_floors_becomes_champion(scenario: dict) -> None:
    report, output = scenario["weak"]
    assert report["version"] == "2" and report["promoted"] is True
    assert report["champion_before"] is None and report["champion_after"] == "2"
    assert "champion none -> v2" in output


def test_better_model_is_promoted_and_old_champion_becomes_previous(scenario: dict) -> None:
    report, _ = scenario["strong"]
    assert report["promoted"] is True and report["champion_after"] == "3"
    before = report["champion_before"]
    assert before["version"] == "2"
    # The champion was scored again on the same, current test rows.
    assert before["metrics_on_current_test"]["rows"] == report["challenger_metrics"]["rows"]
    assert report["challenger_metrics"]["roc_auc"] > before["metrics_on_current_test"]["roc_auc"]
    assert scenario["aliases_before_rollback"]["2"] == ["previous"]


def test_worse_model_is_a_challenger_and_the_champion_is_untouched(scenario: dict) -> None:
    report, _ = scenario["worse"]
    assert report["version"] == "4" and report["promoted"] is False
    assert "roc_auc vs champion v3" in report["reason"]
    assert report["champion_after"] == "3"
    assert scenario["aliases_before_rollback"]["4"] == ["challenger"]
    version_before, proba_before = scenario["champion_before_worse"]
    version_after, proba_after = scenario["champion_after_worse"]
    assert version_before == version_after == "3"
    np.testing.assert_array_equal(proba_before, proba_after)


def test_rollback_moves_champion_to_previous_and_is_recorded(scenario: dict) -> None:
    event = scenario["rollback"]
    assert (event.from_version, event.to_version, event.reason) == ("3", "2", "rollback")
    aliases = scenario["aliases_after_rollback"]
    assert aliases["2"] == ["champion"] and aliases["3"] == ["previous"]
    assert [(p.from_version, p.to_version, p.reason) for p in scenario["history"]] == [
        (None, "2", "gate pass"), ("2", "3", "gate pass"), ("3", "2", "rollback")]


def test_lineage_names_the_commit_and_data_version(scenario: dict) -> None:
    project: Project = scenario["project"]
    lineage = scenario["lineage_v3"]
    assert lineage["git_commit"] == scenario["strong_commit"]
    assert lineage["git_dirty"] == "false"
    lock = yaml.safe_load(project.read("dvc.lock"))
    train_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"]
                     if o["path"] == "data/prepared/train.parquet")
    assert lineage["data_version"] == train_md5
    assert lineage["raw_data_version"] == lock["stages"]["generate"]["outs"][0]["md5"]
    assert lineage["training_window"] == "2026-01-05..2026-02-23"
    assert lineage["gate"] == "passed" and lineage["metrics"]["roc_auc"] > 0.6
    assert [p["reason"] for p in lineage["promotions"]] == ["gate pass", "rollback"]


def test_registry_cli_lists_versions_and_prints_lineage(scenario: dict) -> None:
    project: Project = scenario["project"]
    listing = project.run("python", "-m", "mlpipeline.registry", "list").stdout
    assert "champion" in listing and "previous" in listing and "rejected" in listing
    assert "v3 -> v2  rollback" in listing
    lineage = json.loads(project.run("python", "-m", "mlpipeline.registry", "lineage", "3").stdout)
    assert lineage["git_commit"] == scenario["strong_commit"]


def test_failure_before_register_leaves_the_champion_unchanged(scenario: dict) -> None:
    project: Project = scenario["project"]
    version_before, proba_before = champion_predictions(project)
    # Each value is valid alone (params.yaml's check passes); together sklearn refuses them
    # when it fits, in `train`.
    use_model(project, "random_forest", bootstrap=False, max_samples=0.5)
    result = project.dvc("repro", check=False)
    assert result.returncode != 0
    assert "failed to reproduce 'train'" in result.stderr
    version_after, proba_after = champion_predictions(project)
    assert version_after == version_before
    np.testing.assert_array_equal(proba_before, proba_after)
