"""A CT cycle killed with SIGKILL in the middle of its retrain (what an out-of-memory kill or a
cancelled job does) is never built upon: the next cycle, or `make models`, says so and puts
back params.yaml, dvc.lock, the reports, the data and the champion from before it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mlpipeline.config import load_params
from tests.conftest import ENV, Project

pytestmark = pytest.mark.slow


def champion(project: Project) -> str:
    from mlpipeline.registry import CHAMPION, Registry

    return str(Registry(load_params(project.root)).version_by_alias(CHAMPION).version)


@pytest.fixture
def killed(killed_once: tuple[Project, dict[str, str]],
           tmp_path: Path) -> tuple[Project, dict[str, str]]:
    """Each test's own copy of the killed project (its MLflow store and DVC cache included)."""
    project = Project(tmp_path / "killed")
    shutil.copytree(killed_once[0].root, project.root, symlinks=True)
    return project, killed_once[1]


@pytest.fixture(scope="module")
def killed_once(trained_project: Project, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Project, dict[str, str]]:
    """A copy of the trained project whose forced cycle was killed while `evaluate` ran."""
    project = Project(tmp_path_factory.mktemp("killed") / "project")
    shutil.copytree(trained_project.root, project.root, symlinks=True)
    before = {name: project.read(name) for name in
              ("params.yaml", "dvc.lock", "reports/metrics.json", "reports/gate.json")}
    cycle = subprocess.Popen([sys.executable, "-m", "monitoring.ct", "--force"],
                             cwd=project.root, env=ENV, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    assert cycle.stdout is not None
    output = []
    for line in cycle.stdout:
        output.append(line)
        if "Running stage 'evaluate'" in line:  # train has run, dvc.lock is half updated
            os.killpg(cycle.pid, signal.SIGKILL)  # the cycle and the DVC it runs
            break
    cycle.wait()
    assert cycle.returncode == -signal.SIGKILL, "".join(output)[-3000:]
    assert project.read("params.yaml") != before["params.yaml"]  # the cycle had moved things
    entry = json.loads(project.read(".ct-journal/journal.json"))
    assert entry["step"] == "retrain" and entry["champion_before"] == champion(project)
    return project, before


def test_make_models_undoes_a_killed_cycle(killed: tuple[Project, dict[str, str]]) -> None:
    project, before = killed
    result = project.run(sys.executable, "-m", "monitoring.journal")  # `make models` runs it
    assert "was interrupted at step 'retrain'" in result.stdout
    for name, content in before.items():
        assert project.read(name) == content, name
    status = json.loads(project.run(sys.executable, "-m", "dvc", "status", "--json").stdout)
    assert status == {}  # data back as dvc.lock names it
    assert champion(project) == "1"
    assert not (project.root / ".ct-journal").exists()


def test_the_next_cycle_reports_and_restores_before_it_runs(
        killed: tuple[Project, dict[str, str]]) -> None:
    project, _ = killed
    clock = load_params(project.root).source.n_batches  # where the killed cycle left it
    result = project.run(sys.executable, "-m", "monitoring.ct")
    assert "was interrupted at step 'retrain'" in result.stdout
    summary = json.loads(project.read("reports/ct/summary.json"))
    assert summary["recovered"]["step"] == "retrain" and not summary["recovered"]["problems"]
    assert summary["status"] == "ok" and summary["champion_before"] == "1"
    # The clock moved once from where the killed cycle found it, not from where it left it.
    params = load_params(project.root)
    assert params.source.n_batches == clock  # 8 -> 9 before, 8 -> 9 again now
    assert f"{params.window.start}..{params.window.end}" == summary["window_before"]
    assert "killed at step 'retrain'" in project.read("reports/ct/summary.md")
    assert not (project.root / ".ct-journal").exists()
