"""A CT cycle that fails after its new model was promoted moves the champion back.

The failure comes last, at `push data` (the DVC remote named by DVC_REMOTE_URL is a file, not
a folder), after a forced retrain whose gate passed: the hardest case for "a failed cycle
leaves the champion, the data and params as they were". Its own file, so that xdist runs it
beside the long loop test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mlpipeline.config import load_params
from tests.conftest import make_project

pytestmark = pytest.mark.slow


def test_a_cycle_failing_after_promotion_restores_the_champion(tmp_path: Path) -> None:
    from mlpipeline.registry import CHAMPION, Registry

    project = make_project(tmp_path / "project")
    project.dvc("repro")
    project.commit("v1")
    params_before, lock_before = project.read("params.yaml"), project.read("dvc.lock")
    batches_before = sorted(p.name for p in (project.root / "data/raw").iterdir())
    not_a_folder = tmp_path / "remote-is-a-file"
    not_a_folder.write_text("a DVC remote cannot live here\n")

    result = project.run(sys.executable, "-m", "monitoring.ct", "--force", check=False,
                         env={"DVC_REMOTE_URL": str(not_a_folder)})
    out = result.stdout + result.stderr
    summary = json.loads(project.read("reports/ct/summary.json"))

    assert result.returncode == 1, out
    assert summary["status"] == "failed" and summary["failed_step"] == "push data", out
    assert summary["gate"]["promoted"] is True  # v2 was champion when the push failed ...
    assert summary["champion_before"] == summary["champion_after"] == "1"  # ... and is no more
    assert summary["restore_problems"] == []
    registry = Registry(load_params(project.root))
    assert str(registry.version_by_alias(CHAMPION).version) == "1"
    last = registry.history()[-1]
    assert (last.from_version, last.to_version, last.reason) == ("2", "1", "rollback")
    assert "push data" in last.note
    assert "FAILED at step 'push data'" in out
    assert project.read("params.yaml") == params_before
    assert project.read("dvc.lock") == lock_before
    assert sorted(p.name for p in (project.root / "data/raw").iterdir()) == batches_before
    status = project.dvc("status", "--json")  # every stage's outputs match dvc.lock again
    assert json.loads(status.stdout) == {}, status.stdout
