"""promotion.mode shadow through a real CT cycle: the challenger that answered requests in
shadow is promoted when its answers, joined with the outcomes that arrived (in every batch
since the shadow began), hold against the champion's on enough rows; kept while there are
too few; rejected when worse. (The service side, answering in shadow: test_serving.py.)"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from mlpipeline.config import load_params, set_values
from mlpipeline.source import synthetic_batch
from serving.prediction_log import PredictionLog
from tests.conftest import REPO, Project

pytestmark = pytest.mark.slow

REQUEST_ROWS = 50  # records per logged request


def answered_in_shadow(trained_project: Project, root: Path, min_rows: int,
                       shadow: str, batches: int = 1) -> tuple[Project, str]:
    """A copy of the trained project in shadow mode whose challenger (the same trained model,
    registered again) answered every request of the `batches` batches that land next: as the
    champion did (`same`), or the other way round (`inverted`)."""
    from mlpipeline.registry import Registry

    project = Project(root)
    shutil.copytree(trained_project.root, project.root, symlinks=True)
    path = project.root / "params.yaml"
    params = load_params(project.root)
    first = params.source.n_batches
    path.write_text(set_values(path.read_text(), {
        "promotion.mode": "shadow", "promotion.shadow_min_rows": min_rows,
        # the CT cycle's clock adds one more: `batches` land in it
        "source.n_batches": first + batches - 1}))
    params = load_params(project.root)
    registry = Registry(params)
    waiting = registry.register(json.loads(project.read("reports/run.json")))
    registry.hold(waiting, shadow=True, replaced=None)  # as register leaves it in shadow
    champion = str(registry.version_by_alias("champion").version)

    features = params.schema.feature_names
    model = joblib.load(project.root / "models/model.joblib")
    log = PredictionLog(params.path(params.serving.prediction_log_dir), 100_000, 60)
    for index in range(first, first + batches):
        batch = synthetic_batch(params.source, index)
        probability = params.task.scores(model, batch[features])[:, 1]
        theirs = probability if shadow == "same" else 1 - probability
        for start in range(0, len(batch), REQUEST_ROWS):
            rows = slice(start, start + REQUEST_ROWS)
            columns = {name: batch[name].iloc[rows].tolist()
                       for name in [params.schema.id_column, *features]}
            for version, answer, role in ((champion, probability, "champion"),
                                          (waiting, theirs, "shadow")):
                log.append(columns, {"prediction": (answer[rows] >= 0.5).astype(int).tolist(),
                                     "probability": answer[rows].tolist()},
                           version, f"request-{index}-{start}", role=role)
    log.close()
    return project, waiting


@pytest.mark.parametrize(("min_rows", "shadow", "action"), [
    (200, "same", "promote"), (5000, "same", "keep"), (200, "inverted", "reject")])
def test_a_ct_cycle_promotes_a_shadow_on_enough_labelled_evidence_and_not_before(
        trained_project: Project, tmp_path: Path, min_rows: int, shadow: str,
        action: str) -> None:
    from mlpipeline.registry import Registry

    project, waiting = answered_in_shadow(trained_project, tmp_path / "project", min_rows,
                                          shadow)
    result = project.run(sys.executable, "-m", "monitoring.ct")
    summary = json.loads(project.read("reports/ct/summary.json"))
    assert summary["status"] == "ok", result.stdout + result.stderr
    verdict = summary["shadow"]
    assert (verdict["action"], verdict["version"]) == (action, waiting)
    evidence = verdict["evidence"]
    assert evidence["requests"] == 1500 // REQUEST_ROWS  # every request, paired
    assert evidence["requests_without_shadow_answer"] == 0
    assert evidence["labelled"]["rows"] == 1500  # the outcomes joined on the id
    registry = Registry(load_params(project.root))
    champion = str(registry.version_by_alias("champion").version)
    card = registry.card(waiting)
    assert "On the 1500 of them whose outcomes arrived:" in card  # the card has the evidence
    if action == "promote":
        assert champion == waiting and summary["promoted"]
        assert "promoted on shadow evidence: roc_auc" in verdict["reason"]
        assert "**Promoted on shadow evidence** by" in card
        assert registry.decisions()[-1].reason == "shadow evidence"
    elif action == "keep":
        assert champion != waiting and not summary["promoted"]
        assert "1500 labelled requests so far, promotion.shadow_min_rows is 5000" \
            in verdict["reason"]
        assert registry.version_by_alias("challenger").tags["approval"] == "awaiting"
        # `make shadow-report` runs the same report, from the log and the newest batch.
        assert "monitoring.shadow" in project.run(
            "make", "-n", "-f", str(REPO / "Makefile"), "shadow-report").stdout
        report = project.run(sys.executable, "-m", "monitoring.shadow").stdout
        assert f"shadow: v{waiting} beside champion v{champion} on 30 requests" in report
        assert "on 1500 labelled rows: roc_auc champion" in report
        # ... and says what the next cycle decides against promotion.shadow_min_rows, and
        # what a person can do meanwhile.
        assert (f"next CT cycle: keep: v{waiting} kept in shadow: 1500 labelled requests so "
                "far, promotion.shadow_min_rows is 5000") in report
        assert f"or decide now: make approve V={waiting}" in report
    else:
        assert champion != waiting and registry.version_by_alias("challenger") is None
        ours, theirs = (evidence["labelled"][who]["roc_auc"] for who in ("shadow", "champion"))
        assert ours < theirs and f"rejected on shadow evidence: roc_auc {ours:.4f}" \
            in verdict["reason"]
    assert f"| shadow | **{action}**" in project.read("reports/ct/summary.md")
    assert np.isclose(evidence["agreement"]["label_agreement"], 1.0) == (shadow == "same")


def test_shadow_evidence_over_two_batches_is_judged_whole(trained_project: Project,
                                                          tmp_path: Path) -> None:
    """Answers from the batch before the newest count too: 2 x 1,500 labelled requests meet
    a promotion.shadow_min_rows of 2,000 that neither batch meets alone."""
    project, waiting = answered_in_shadow(trained_project, tmp_path / "project", 2000, "same",
                                          batches=2)
    result = project.run(sys.executable, "-m", "monitoring.ct")
    summary = json.loads(project.read("reports/ct/summary.json"))
    assert summary["status"] == "ok", result.stdout + result.stderr
    assert summary["new_batch"]["since_champion"] == 2  # two batches landed in this cycle
    verdict = summary["shadow"]
    assert verdict["evidence"]["labelled"]["rows"] == 3000, verdict
    assert (verdict["action"], verdict["version"]) == ("promote", waiting)
