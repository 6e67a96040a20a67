"""What keeps CT cycles safe, shared by a cycle (monitoring.ct) and the recovery of a killed
one (monitoring.journal): the cycle lock, and opening the registry and reading or restoring
its champion."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlpipeline.config import Params

LOCK_FILE = ".ct.lock"
LOCK_BUSY = 75  # exit code when another cycle holds the lock (EX_TEMPFAIL: try again later)


class LockBusy(Exception):
    pass


@contextlib.contextmanager
def cycle_lock(root: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on <root>/.ct.lock; the OS drops it if we die."""
    with (root / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise LockBusy(f"another CT cycle holds {LOCK_FILE} (pid {holder}); "
                           "wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_registry(params: Params) -> Any:
    from mlpipeline.registry import Registry  # mlflow: not for --help

    try:
        registry = Registry(params)
        champion_version(registry)
        return registry
    except Exception as error:  # nothing has changed yet: say what to fix, no traceback
        raise SystemExit(f"ct: cannot use the MLflow store {params.tracking_uri()}: "
                         f"{str(error) or type(error).__name__}") from None


class RegistryOpening:
    """open_registry on a thread, so that MLflow's import and the champion lookup (~2 s) run
    while the cycle's first `dvc repro` does, which cannot move the champion. `get()` waits for
    it and raises what open_registry raised."""

    def __init__(self, params: Params) -> None:
        self._registry: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, args=(params,), daemon=True,
                                         name="open-registry")
        self._thread.start()

    def _open(self, params: Params) -> None:
        try:
            self._registry = open_registry(params)
        except BaseException as error:  # SystemExit too: raised again in the caller
            self._error = error

    def get(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._registry


def champion_version(registry: Any) -> str | None:
    from mlpipeline.registry import CHAMPION

    version = registry.version_by_alias(CHAMPION)
    return str(version.version) if version else None


def restore_champion(registry: Any, version: str, note: str) -> str:
    """Champion back to `version` if it moved; returns the champion."""
    if champion_version(registry) != version:
        registry.set_champion(version, "rollback", note=note)
    return version
