"""Promotions are atomic for the history: concurrent promoters in separate processes each
leave their entry and a consistent from -> to chain, and a promoter killed (SIGKILL) between
its writes leaves nothing that the next registry command does not settle."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ENV, Project

pytestmark = pytest.mark.slow


@pytest.fixture
def registry_project(trained_project: Project, tmp_path: Path) -> Project:
    """A copy of the trained project (its own MLflow store) with nine versions, v1 champion."""
    from mlpipeline.config import load_params
    from mlpipeline.registry import Registry

    root = tmp_path / "project"
    shutil.copytree(trained_project.root, root, ignore=shutil.ignore_patterns(".dvc"))
    run = json.loads((root / "reports/run.json").read_text())
    registry = Registry(load_params(root))
    for _ in range(8):  # the same logged model, registered again: v2..v9
        registry.register(run)
    return Project(root)


def registry_cli(project: Project, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlpipeline.registry", *args],
                            cwd=project.root, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def state(project: Project) -> tuple[list, str, str | None]:
    from mlpipeline.config import load_params
    from mlpipeline.registry import CHAMPION, PREVIOUS, Registry

    registry = Registry(load_params(project.root))
    history = registry.history()  # first: it settles what a killed promoter left
    champion, previous = registry.version_by_alias(CHAMPION), registry.version_by_alias(PREVIOUS)
    return history, str(champion.version), str(previous.version) if previous else None


def test_eight_concurrent_promoters_leave_eight_entries(registry_project: Project) -> None:
    promoters = [registry_cli(registry_project, "promote", str(v)) for v in range(2, 10)]
    for promoter in promoters:
        output = promoter.communicate()[0]
        assert promoter.returncode == 0, output
    history, champion, previous = state(registry_project)
    assert len(history) == 9  # the first champion and the eight promotions
    assert sorted(e.to_version for e in history[1:]) == [str(v) for v in range(2, 10)]
    for before, after in itertools.pairwise(history):
        assert after.from_version == before.to_version  # each saw the one before it
    assert champion == history[-1].to_version and previous == history[-1].from_version


KILLED_PROMOTER = textwrap.dedent("""
    import os, signal, sys
    from mlpipeline.config import load_params
    from mlpipeline.registry import Registry

    registry = Registry(load_params())
    set_alias = registry.client.set_registered_model_alias

    def set_alias_then_die(name, alias, version):
        if alias == sys.argv[2] and sys.argv[3] == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        set_alias(name, alias, version)
        if alias == sys.argv[2] and sys.argv[3] == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    registry.client.set_registered_model_alias = set_alias_then_die
    registry.set_champion(sys.argv[1], "manual")
""")


def kill_promoter(project: Project, version: str, alias: str, when: str) -> None:
    result = subprocess.run([sys.executable, "-c", KILLED_PROMOTER, version, alias, when],
                            cwd=project.root, env=ENV, capture_output=True, text=True)
    assert result.returncode == -9, result.stderr


def test_a_promoter_killed_between_its_writes_is_settled(registry_project: Project) -> None:
    # Killed right after `champion` moved, before the history said so: v3 is served.
    kill_promoter(registry_project, "3", "champion", "after")
    listing = registry_cli(registry_project, "history")
    output = listing.communicate()[0]
    assert listing.returncode == 0, output
    assert "interrupted promotion v1 -> v3" in output and "settled as done" in output
    history, champion, previous = state(registry_project)
    assert champion == "3" and history[-1].to_version == "3"  # alias and history agree
    assert (history[-1].from_version, previous) == ("1", "1")

    # Killed after `previous` moved, before `champion` did: the promotion never happened.
    kill_promoter(registry_project, "5", "champion", "before")
    history_before = len(history)
    history, champion, previous = state(registry_project)
    assert champion == "3" and previous == "1"  # `previous` put back
    assert len(history) == history_before and history[-1].to_version == "3"

    # And the next promotion goes through (the dead promoter's lock is broken).
    promoter = registry_cli(registry_project, "promote", "4")
    assert promoter.wait(timeout=120) == 0, promoter.communicate()[0]
    history, champion, _ = state(registry_project)
    assert champion == "4" and (history[-1].from_version, history[-1].to_version) == ("3", "4")


def test_a_lock_taken_after_a_long_wait_is_not_broken_as_expired(tmp_path: Path) -> None:
    """The lock's lease runs from when it was taken, not from when its holder began to wait:
    otherwise a third promoter breaks in while the second still holds it (two writers, one
    history number, a lost entry: seen once as eight entries instead of nine)."""
    import threading
    import time

    from mlpipeline.config import load_params
    from mlpipeline.registry import Registry
    from tests.conftest import REPO

    params = load_params(REPO).model_copy(update={"root": tmp_path})
    with Registry(params).promotion_lock():  # the store exists before the clock starts
        pass
    lease = 3.0  # also how long a waiter waits
    inside: list[tuple[str, float, float]] = []

    def hold(name: str, start_after: float, seconds: float) -> None:
        time.sleep(start_after)
        with Registry(params).promotion_lock(wait_seconds=lease):
            entered = time.monotonic()
            time.sleep(seconds)
            inside.append((name, entered, time.monotonic()))

    threads = [threading.Thread(target=hold, args=args) for args in
               [("first", 0.0, 2.0), ("waited", 0.3, 2.0), ("third", 2.5, 0.1)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans = sorted(inside, key=lambda s: s[1])
    assert [name for name, _, _ in spans] == ["first", "waited", "third"]
    for (_, _, left), (name, entered, _) in itertools.pairwise(spans):
        assert entered >= left, f"{name} entered while the lock was held"
