"""Shared fixtures: throw-away copies of the project in which the real DVC pipeline runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlpipeline.config import set_values
from mlpipeline.preset import copy_project

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The source clock and training window that params.yaml ships with (CT moves them).
INITIAL_STATE = {"source.n_batches": 8, "window.start": "2026-01-05", "window.end": "2026-02-23"}
INITIAL_TAG = "initial"  # a project copy's first commit
TRAINED_TAG = "trained"  # the shared trained project's commit right after its `dvc repro`

ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "ITERATIVE_DO_NOT_TRACK": "1",
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
ENV.pop("MLFLOW_TRACKING_URI", None)  # each project copy uses its own embedded store


# xdist hands out test files in collection order (--dist loadfile --no-loadscope-reorder):
# the longest go first, so the short ones fill in behind them at the end instead of a long
# one starting last and adding up. Seconds on two workers: loop ~360, stack ~340 (its data
# stages on Spark), landing ~250, the other tasks' loops ~190, pipeline ~150, killed cycle
# ~110, serving (live) ~110, engines ~100, promotions ~70, tracking server ~50, registry ~50,
# serving ~50, monitoring ~35.
RUN_FIRST = ("tests/test_loop.py", "tests/test_stack.py", "tests/test_landing.py",
             "tests/test_tasks_loop.py", "tests/test_pipeline.py", "tests/test_ct_killed.py",
             "tests/test_engines.py",
             "tests/test_serving_live.py", "tests/test_shadow.py",
             "tests/test_promotions.py", "tests/test_tracking_server.py",
             "tests/test_registry.py", "tests/test_serving.py", "tests/test_monitoring.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return RUN_FIRST.index(path) if path in RUN_FIRST else len(RUN_FIRST)

    items.sort(key=rank)  # stable: the order within each file is kept


@pytest.fixture(autouse=True)
def no_tracking_uri_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without MLFLOW_TRACKING_URI: mlflow.set_tracking_uri exports it, and
    a leftover would point the next test's project at another project's store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


class Project:
    """A copy of the project in its own folder, with its own git repo, DVC cache and MLflow."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(args), cwd=self.root, env={**ENV, **(env or {})},
                                capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "dvc"), *args, check=check)

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args)

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, update: Callable[[dict[str, Any]], None]) -> None:
        data = self.params()
        update(data)
        (self.root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def read(self, relative: str) -> str:
        return (self.root / relative).read_text()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").stdout.strip()


def make_project(root: Path, preset: str | None = None) -> Project:
    """A copy of the project (with a task preset's params, if named) in its initial state."""
    copy_project(REPO, root, preset)
    # Tests start from the initial state whatever CT (or `make demo`) moved in the working copy.
    params = root / "params.yaml"
    params.write_text(set_values(params.read_text(), INITIAL_STATE))
    project = Project(root)
    project.commit("initial state")
    project.git("tag", INITIAL_TAG)  # HEAD's dvc.lock and reports, as on a fresh clone
    return project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """One full `dvc repro` on the default params, shared by the tests that only read it."""
    project = make_project(tmp_path_factory.mktemp("trained") / "project")
    project.dvc("repro")
    project.commit("trained")
    project.git("tag", TRAINED_TAG)  # what a fresh repro wrote, whatever tests do after
    return project

