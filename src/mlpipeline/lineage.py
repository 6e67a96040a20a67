"""Where a model came from: git commit, DVC data version, params hash. Plain I/O, no MLflow."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mlpipeline.config import RAW_DIR, Params

PIPELINE_OUTPUTS = ("dvc.lock", "reports", "models", "data")


def git_state(root: Path) -> tuple[str, bool]:
    """(commit, dirty). Dirty means code or params differ from the commit; what the pipeline
    itself writes while it runs (dvc.lock, reports/, models/, data/) does not count."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "none", True
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  *(f":!{path}" for path in PIPELINE_OUTPUTS))
    return commit, bool(changes)


def file_md5(path: Path) -> str:
    """The hash DVC records for a file output in dvc.lock (plain md5 of its bytes)."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def raw_data_version(root: Path) -> str:
    """DVC's hash of data/raw as dvc.lock records it (`unknown` before the first run)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return "unknown"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") == str(RAW_DIR):
                return str(out.get("md5", "unknown"))
    return "unknown"


def params_dict(params: Params) -> dict[str, Any]:
    return params.model_dump(mode="json", by_alias=True, exclude={"root"})


def params_hash(params: Params) -> str:
    """Hash of the params that shape the model (not of gate or tracking settings)."""
    canonical = json.dumps(flat_params(params), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flat_params(params: Params) -> dict[str, str]:
    """The knobs that shape a model, flattened to MLflow's `section.key` params."""
    data = params_dict(params)
    chosen = {
        "source": data["source"],
        "window": data["window"],
        "validate": data["validate"],
        "prepare": data["prepare"],
        "train": {"model": params.train.model, "seed": params.train.seed,
                  **params.train.chosen_hyperparams()},
        "evaluate": data["evaluate"],
    }
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = str(value)

    walk("", chosen)
    return flat
