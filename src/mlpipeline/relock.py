"""The committed state is what the code produces: `dvc.lock` and the tracked reports as a fresh
clone's `dvc repro` writes them.

`python -m mlpipeline.relock` (`make lock`) runs the pipeline in a throw-away copy of this
working tree (its code and params, with a new MLflow store, as on a fresh clone), copies the
`dvc.lock` and tracked reports it wrote back here, and lists what changed against HEAD.
Commit them with the change to a stage's code or params. (After `make demo`, first put
params.yaml back: `git checkout HEAD -- params.yaml dvc.lock reports`.) The copy's outputs go
to this project's DVC cache, so `dvc checkout` then brings them here too.

Two outputs differ from run to run by design, and nothing else may: `reports/run.json` names
the MLflow run (its id, its model's id, the commit it ran at) and `reports/gate.json` carries
that run id. `differences` compares two such states and names every other stage, path and
field that differs; the test suite holds HEAD to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from mlpipeline.config import GATE_REPORT, RUN_INFO, find_root

LOCK = "dvc.lock"
REPORTS = "reports"
# The outputs that hold the MLflow run id: their lock hashes differ between any two runs.
RUN_OUTPUTS = (str(RUN_INFO), str(GATE_REPORT))
RUN_ID_FIELDS = {str(GATE_REPORT): ("run_id",)}  # ... and these fields of them


def committed_state(root: Path, revision: str = "HEAD") -> dict[str, str]:
    """dvc.lock and the files git tracks under reports/ at `revision`: {path: text}."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout

    paths = git("ls-tree", "-r", "--name-only", revision, "--", LOCK, REPORTS).split()
    return {path: git("show", f"{revision}:{path}") for path in paths
            if not path.endswith(".gitignore")}  # the project's file, not an output


def working_state(root: Path, paths: list[str]) -> dict[str, str]:
    """The same paths as they are in the working tree (absent ones left out)."""
    return {path: (root / path).read_text() for path in paths if (root / path).is_file()}


def _entries(stage: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {entry["path"]: {k: v for k, v in entry.items() if k != "path"}
            for entry in stage.get(kind) or []}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON or YAML as {dotted.path: leaf} (a list's items by their index)."""
    items = (value.items() if isinstance(value, dict) else
             enumerate(value) if isinstance(value, list) and value else None)
    if items is None:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in items:
        flat.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def lock_differences(expected: str, actual: str) -> list[str]:
    """Every stage, dependency, output and param where two dvc.lock texts differ, but the
    hashes of RUN_OUTPUTS (as outputs and as dependencies)."""
    old = (yaml.safe_load(expected) or {}).get("stages", {})
    new = (yaml.safe_load(actual) or {}).get("stages", {})
    found = [f"dvc.lock: stage {name} only in {'the expected' if name in old else 'the new'} "
             "lock" for name in sorted(set(old) ^ set(new))]
    for name in [n for n in new if n in old]:
        before, after = old[name], new[name]
        if before.get("cmd") != after.get("cmd"):
            found.append(f"dvc.lock: stage {name}: cmd {before.get('cmd')!r} -> "
                         f"{after.get('cmd')!r}")
        for kind in ("deps", "outs"):
            was, now = _entries(before, kind), _entries(after, kind)
            for path in sorted(set(was) | set(now)):
                if path in RUN_OUTPUTS:  # `register` depends on run.json too
                    continue
                if was.get(path) != now.get(path):
                    found.append(f"dvc.lock: stage {name}: {kind[:-1]} {path}: "
                                 f"{_hash(was.get(path))} -> {_hash(now.get(path))}")
        was, now = _flat(before.get("params") or {}), _flat(after.get("params") or {})
        for key in sorted(set(was) | set(now)):
            if was.get(key, "(none)") != now.get(key, "(none)"):
                found.append(f"dvc.lock: stage {name}: param {key}: "
                             f"{was.get(key, '(none)')!r} -> {now.get(key, '(none)')!r}")
    return found


def _hash(entry: dict[str, Any] | None) -> str:
    return "(none)" if entry is None else str(entry.get("md5"))


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """What differs between two states ({path: text}: dvc.lock and the tracked reports),
    the MLflow run's traces aside: one line per stage and path (per field for JSON)."""
    found = []
    for path in sorted(set(expected) | set(actual)):
        if path in expected and path not in actual:
            found.append(f"{path}: not written")
        elif path not in expected:
            found.append(f"{path}: written, but not committed")
        elif path == LOCK:
            found += lock_differences(expected[path], actual[path])
        elif path == str(RUN_INFO):
            continue  # the run's ids and the commit it ran at: new every run
        elif expected[path] != actual[path]:
            found += _file_differences(path, expected[path], actual[path])
    return found


def _file_differences(path: str, expected: str, actual: str) -> list[str]:
    if not path.endswith(".json"):
        return [f"{path}: differs"]
    old, new = _flat(json.loads(expected)), _flat(json.loads(actual))
    skipped = RUN_ID_FIELDS.get(path, ())
    return [f"{path}: {key}: {old.get(key, '(none)')!r} -> {new.get(key, '(none)')!r}"
            for key in sorted(set(old) | set(new))
            if key not in skipped and old.get(key, "(none)") != new.get(key, "(none)")]


def relock(root: Path) -> list[str]:
    """Run the pipeline on a fresh copy of `root`'s working tree, write its dvc.lock and
    tracked reports here; what changed against HEAD."""
    from mlpipeline.preset import copy_project

    committed = committed_state(root)
    with tempfile.TemporaryDirectory(prefix="relock-") as tmp:
        copy = copy_project(root, Path(tmp) / "project")
        dvc = [sys.executable, "-m", "dvc"]
        subprocess.run([*dvc, "cache", "dir", "--local", str(root / ".dvc" / "cache")],
                       cwd=copy, check=True, capture_output=True)
        result = subprocess.run([*dvc, "repro"], cwd=copy, env=_fresh_env())
        if result.returncode != 0:
            raise SystemExit("relock: `dvc repro` failed in the copy (its output above)")
        written = working_state(copy, [*committed, *_tracked_reports(copy)])
        for path, text in written.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        for path in set(committed) - set(written):
            (root / path).unlink(missing_ok=True)
    return differences(committed, written)


def _tracked_reports(copy: Path) -> list[str]:
    """What the copy's repro wrote under reports/ that git would track there."""
    listed = subprocess.run(["git", "ls-files", "--others", "--modified", "--exclude-standard",
                             "--", REPORTS], cwd=copy, capture_output=True, text=True,
                            check=True).stdout
    return listed.split()


def _fresh_env() -> dict[str, str]:
    """This environment as a fresh clone's: the copy's own embedded MLflow store (no
    MLFLOW_TRACKING_URI), this interpreter first on PATH (dvc.yaml runs `python -m ...`)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipeline.relock",
        description="Write the dvc.lock and tracked reports a fresh clone's `dvc repro` "
                    "writes for this working tree's code and params.")
    parser.parse_args(argv)
    root = find_root()
    changed = relock(root)
    print(f"relock: {LOCK} and the tracked reports written from a fresh repro of this "
          "working tree; `dvc checkout` brings its outputs here")
    print("\n".join(f"  {line}" for line in changed) if changed else
          "relock: the same as HEAD (the MLflow run's traces aside)")


if __name__ == "__main__":
    main()
