"""Params presets: the same project for another task, in a copy of its own.

`python -m mlpipeline.preset TASK DEST` (what `make demo TASK=regression` runs first) copies
the pipeline's files into DEST with params.yaml's sections replaced by the preset's
(`src/mlpipeline/presets/TASK.yaml`, a commented params file of the sections that differ):
another source outcome, schema, models, gate and registered model. The copy has its own git
repository, DVC cache and MLflow store, so the project's own params.yaml, data and registry
are never touched; a second run starts the copy afresh.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

from mlpipeline.config import PARAMS_FILE, find_root
from mlpipeline.plots_page import TEMPLATE_FILE as PLOTS_TEMPLATE

PRESETS_DIR = Path(__file__).parent / "presets"
# What a pipeline run needs from the project; src/ because dvc.yaml hashes stage code.
PROJECT_FILES = ["dvc.yaml", PARAMS_FILE, ".dvcignore", ".gitignore", ".dvc/config",
                 ".dvc/.gitignore", "data/.gitignore", "reports/.gitignore", "models/.gitignore",
                 "data/landing/.gitkeep", "src",
                 PLOTS_TEMPLATE]
_SECTION = re.compile(r"^([A-Za-z_]\w*):", re.MULTILINE)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def sections(text: str) -> tuple[str, dict[str, str]]:
    """A params file as (its header, {section: its text}); a section runs from its top-level
    key to the next one, its comments and blank lines included."""
    starts = [m.start() for m in _SECTION.finditer(text)]
    header = text[:starts[0]] if starts else text
    found = {}
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        block = text[start:end]
        found[_SECTION.match(block).group(1)] = block  # type: ignore[union-attr]
    return header, found


def apply(params_text: str, preset_text: str) -> str:
    """params.yaml with each section the preset has replaced by the preset's, in place,
    comments kept; the preset's other sections appended."""
    header, base = sections(params_text)
    _, replacing = sections(preset_text)
    merged = {**base, **replacing}
    return header + "".join(block if block.endswith("\n\n") else block.rstrip("\n") + "\n\n"
                            for block in merged.values()).rstrip("\n") + "\n"


def preset_text(name: str) -> str:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"preset: no preset {name!r}; there are {', '.join(presets())}")
    return path.read_text()


def committed_pipeline_state(root: Path) -> dict[str, str]:
    """dvc.lock and the tracked reports as HEAD has them (none outside a git repository)."""
    from mlpipeline.relock import committed_state

    try:
        return committed_state(root)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {}


def copy_project(root: Path, dest: Path, preset: str | None = None) -> Path:
    """A fresh copy of the project at `dest`, committed in a git repository of its own, ready
    for `dvc repro`: its code and params, and HEAD's dvc.lock and reports as a fresh clone
    has them; with a `preset`, that preset's params and no lock (it is another pipeline)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        source, target = root / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    if preset is not None:
        params = dest / PARAMS_FILE
        params.write_text(apply(params.read_text(), preset_text(preset)))
    else:  # as a fresh clone has it: the committed dvc.lock and reports
        for path, text in committed_pipeline_state(root).items():
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            (dest / path).write_text(text)

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("-c", "user.name=preset", "-c", "user.email=preset@localhost", "commit", "-q",
        "-m", f"a copy of the project{f' with the {preset} preset' if preset else ''}")
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlpipeline.preset",
                                     description="A copy of the project for another task.")
    parser.add_argument("preset", choices=presets())
    parser.add_argument("dest", type=Path, help="the copy's folder (replaced if it exists)")
    args = parser.parse_args(argv)
    dest = copy_project(find_root(), args.dest.resolve(), args.preset)
    print(f"preset: the project with the {args.preset} preset -> {dest}")


if __name__ == "__main__":
    main()
