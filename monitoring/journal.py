"""The CT cycle's journal: what a cycle is about to change, written before it changes it.

`.ct-journal/` holds a copy of every tracked file the cycle may rewrite (params.yaml,
dvc.lock, reports, plots), the champion before the cycle and the step it is in. A cycle that
ends, well or badly, removes it. One left behind means the cycle's process died (kill -9, an
out-of-memory kill, a cancelled job): the next cycle, or `python -m monitoring.journal`
(run by `make models`), says so and puts everything back as it was before that cycle, data
included (`dvc checkout`) and the champion too. Nothing is ever continued from there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlpipeline.config import (
    GATE_REPORT,
    METRICS,
    PARAMS_FILE,
    PLOTS_DIR,
    PLOTS_SPEC,
    RUN_INFO,
    TUNE_REPORT,
    VALIDATION_REPORT,
)

JOURNAL_DIR = ".ct-journal"
ENTRY = "journal.json"
# What a cycle may rewrite that git tracks; DVC-cached outputs come back with `dvc checkout`.
TRACKED = [Path(PARAMS_FILE), Path("dvc.lock"), METRICS, RUN_INFO, GATE_REPORT,
           VALIDATION_REPORT, PLOTS_SPEC, TUNE_REPORT]


@dataclass
class Journal:
    root: Path
    started: str
    pid: int
    champion_before: str | None
    step: str = "start"
    files: dict[str, bool] = field(default_factory=dict)  # path -> existed before
    # dvc.lock's outputs that were not in the workspace before the cycle (a fresh clone has
    # the lock but no data): put back means absent again, not "missing from the cache".
    absent_outputs: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.root / JOURNAL_DIR

    @classmethod
    def begin(cls, root: Path, champion_before: str | None) -> Journal:
        """Copy the tracked files aside and write the entry; only then may the cycle start."""
        journal = cls(root, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      os.getpid(), champion_before)
        staging = root / f"{JOURNAL_DIR}.new"
        shutil.rmtree(staging, ignore_errors=True)
        paths = TRACKED + sorted(p.relative_to(root) for p in (root / PLOTS_DIR).glob("*"))
        for path in paths:
            source = root / path
            journal.files[str(path)] = source.is_file()
            if source.is_file():
                (staging / "files" / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, staging / "files" / path)
        journal.absent_outputs = [path for path in lock_outputs(root)
                                  if not (root / path).exists()]
        staging.mkdir(exist_ok=True)
        journal._write(staging)
        staging.rename(journal.folder)  # the journal exists whole, or not at all
        return journal

    def record_champion(self, version: str | None) -> None:
        """The champion before the cycle, once the registry is open: before any step that can
        move it (until then there is nothing of the registry's to put back)."""
        self.champion_before = version
        self._write(self.folder)

    def at(self, step: str) -> None:
        """Record the step the cycle is entering."""
        self.step = step
        self._write(self.folder)

    def _write(self, folder: Path) -> None:
        tmp = folder / f"{ENTRY}.tmp"
        tmp.write_text(json.dumps({"started": self.started, "pid": self.pid,
                                   "champion_before": self.champion_before,
                                   "step": self.step, "files": self.files,
                                   "absent_outputs": self.absent_outputs}, indent=2))
        os.replace(tmp, folder / ENTRY)

    @classmethod
    def find(cls, root: Path) -> Journal | None:
        """The journal a dead cycle left behind, if any (call with the cycle lock held)."""
        shutil.rmtree(root / f"{JOURNAL_DIR}.new", ignore_errors=True)  # died while beginning
        entry = root / JOURNAL_DIR / ENTRY
        if not entry.is_file():
            return None
        data = json.loads(entry.read_text())
        return cls(root, data["started"], data["pid"], data["champion_before"], data["step"],
                   data["files"], data.get("absent_outputs", []))

    def restore_files(self) -> list[str]:
        """Tracked files back as they were, then the DVC outputs they name. Returns problems."""
        problems = []
        for path, existed in self.files.items():
            target = self.root / path
            try:
                if existed:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(self.folder / "files" / path, target)
                else:
                    target.unlink(missing_ok=True)
            except OSError as error:
                problems.append(f"{path}: {error}")
        if not (self.root / "dvc.lock").is_file():  # nothing had run: no outputs to put back
            return problems
        result = subprocess.run([sys.executable, "-m", "dvc", "checkout", "--force"],
                                cwd=self.root, capture_output=True, text=True)
        if result.returncode != 0:
            # What the cache cannot give back is fine where it was not here before the cycle:
            # the cycle made it, so it goes. Anything else is a problem to name.
            failed = failed_targets(result.stderr)
            gone = [t for t in failed if t.rstrip("/") in self.absent_outputs]
            for made in (self.root / target for target in gone):
                if made.is_dir():
                    shutil.rmtree(made)
                else:
                    made.unlink(missing_ok=True)
            if not failed or len(gone) < len(failed):
                problems.append(f"dvc checkout: {result.stderr.strip()[-300:]}")
        return problems

    def end(self) -> None:
        """The cycle ended (well, or failed and restored): nothing to recover."""
        done = self.root / f"{JOURNAL_DIR}.done"
        shutil.rmtree(done, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(done)
            shutil.rmtree(done, ignore_errors=True)

    def describe(self) -> str:
        return (f"the CT cycle started at {self.started} (pid {self.pid}) was interrupted "
                f"at step '{self.step}'")


def lock_outputs(root: Path) -> list[str]:
    """Every output path dvc.lock records (none without a lock)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return []
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return [out["path"] for stage in stages.values() for out in stage.get("outs") or []]


def failed_targets(stderr: str) -> list[str]:
    """The paths `dvc checkout` lists after "Checkout failed for following targets:"."""
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if "Checkout failed for following targets" in line), None)
    if start is None:
        return []
    targets = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith(("Is your cache", "<http")):
            break
        targets.append(line.strip())
    return targets


def recover(root: Path, set_champion: Any) -> dict[str, Any] | None:
    """Undo what an interrupted cycle left; `set_champion(version, note)` moves the alias back
    (given the champion now). Returns what was found and done, or None when all was clean."""
    journal = Journal.find(root)
    if journal is None:
        return None
    print(f"ct: {journal.describe()}; restoring the state from before it")
    problems = journal.restore_files()
    champion = None
    if journal.champion_before is not None:
        try:
            champion = set_champion(journal.champion_before,
                                    f"CT cycle interrupted at step '{journal.step}'")
        except Exception as error:  # the store is down: keep the journal, try next time
            problems.append(f"champion: {error}")
    recovered = {"started": journal.started, "pid": journal.pid, "step": journal.step,
                 "champion": champion or journal.champion_before, "problems": problems}
    if problems:
        print("ct: NOT fully restored: " + "; ".join(problems))
    else:
        journal.end()
        print(f"ct: restored params.yaml, dvc.lock, reports and data; champion "
              f"v{recovered['champion']}" if recovered["champion"] else "ct: restored")
    return recovered


def main() -> int:
    """`python -m monitoring.journal` (run by `make models`): undo an interrupted cycle."""
    from mlpipeline.config import find_root, load_params
    from monitoring.cycle_guard import (
        LOCK_BUSY,
        LockBusy,
        cycle_lock,
        open_registry,
        restore_champion,
    )

    root = find_root()
    if Journal.find(root) is None:
        return 0
    try:
        with cycle_lock(root):  # a live cycle's journal is not an interrupted one
            registry = open_registry(load_params(root))
            recovered = recover(root, lambda version, note: restore_champion(
                registry, version, note))
    except LockBusy as busy:
        print(f"ct: {busy}")
        return LOCK_BUSY
    return 1 if recovered and recovered["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
