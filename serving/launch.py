"""Helpers for starting an HTTP server as a child process (tests, benchmarks)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until GET `url` answers 200; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def start_service(root: Path, port: int, poll_seconds: float, log: Path,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m serving` for the project in `root`, as a child process logging to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port),
             "--poll-seconds", str(poll_seconds)],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
