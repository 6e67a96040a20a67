"""Take the README's screenshots (docs/*.png) of what a user sees after `make demo`.

    make demo && .tools/bin/uv run python docs/screenshots.py

Starts the MLflow UI, the Evidently dashboard and the service on this project (the make
targets a user runs), opens each page in Debian's headless Chromium through its DevTools
protocol, waits until the page shows what it is about, and writes a PNG under 200 kB. The
MLflow assistant panel and shared-view banner are closed first, as a user would close them.
Chromium is not installed by `make setup`: `apt install chromium`. Nothing leaves 127.0.0.1.
"""

import base64
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs"
MAX_BYTES = 200_000
# What a user closes on a first visit: the assistant panel, the shared-view banner.
CLOSE_PANELS = ('document.querySelector(\'[data-component-id='
                '"mlflow.assistant.chat_panel.close"]\')?.click(); '
                'document.querySelector(\'[aria-label="Hide banner"]\')?.click()')


@dataclass(frozen=True)
class Shot:
    file: str
    url: str
    shows: str  # text the page holds once it has drawn
    width: int
    height: int
    before: str = ""  # JavaScript run once it has drawn

# Opens the tune-* run's row in the runs table, showing its nested trial runs.
# Its button shows a plus (a path with a vertical bar, "V4.5") until the row is open.
EXPAND = ("[...document.querySelectorAll('button[data-component-id*=runnamecellrenderer]')]"
          ".filter(b => (b.innerHTML || '').includes('V4.5')).slice(0, 1)"
          ".forEach(b => b.click())")


def wait_for(what: str, ready: Callable[[], object], timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = ready()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.25)
    raise SystemExit(f"screenshots: {what} not ready after {timeout:.0f} s")


@contextmanager
def started(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


class Page:
    """One Chromium tab driven over the DevTools protocol."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def call(self, method: str, **params: object) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True)
        return result["result"].get("value")

    def take(self, shot: Shot) -> Path:
        self.call("Emulation.setDeviceMetricsOverride", width=shot.width, height=shot.height,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=shot.url)
        # `before` runs on each look: the assistant panel opens a moment after the page, and
        # the runs table draws only the columns in view.
        wait_for(f"{shot.url} showing {shot.shows!r}", lambda: self.evaluate(
            f"(() => {{ {shot.before}; return document.body !== null && "
            f"document.body.innerText.includes({shot.shows!r}); }})()"))
        # Charts animate in: let them finish before the picture.
        self.evaluate("new Promise(done => setTimeout(done, 2500))")
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path = OUT / shot.file
        path.write_bytes(png)
        return path


@contextmanager
def chromium() -> Iterator[Page]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("screenshots: no chromium on PATH (apt install chromium)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as profile, started(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
            Path(profile).with_suffix(".log")):
        targets = f"http://127.0.0.1:{port}/json"
        wait_for("chromium", lambda: answers(targets))
        with urllib.request.urlopen(targets) as response:
            [tab] = [t for t in json.load(response) if t["type"] == "page"]
        with connect(tab["webSocketDebuggerUrl"], max_size=None) as socket_to_tab:
            yield Page(socket_to_tab)


def printed_url(log: Path, pattern: str) -> str:
    return str(wait_for(f"an address in {log.name}", lambda: (m := re.search(
        pattern, log.read_text(errors="replace"))) and m.group(0)))


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="screenshots-"))
    make = ["make", "--no-print-directory"]
    with (started([*make, "ui"], logs / "ui.log"), started([*make, "dashboard"],
          logs / "dashboard.log"), started([*make, "serve"], logs / "serve.log"),
          chromium() as page):
        runs = printed_url(logs / "ui.log", r"http://\S+/runs\?viewStateShareKey\S+")
        model = printed_url(logs / "ui.log", r"http://\S+/#/models/\S+")
        dashboard = printed_url(logs / "dashboard.log", r"http://\S+/projects/[\w-]+")
        wait_for("the MLflow UI", lambda: answers("http://127.0.0.1:5000/health"))
        wait_for("the service", lambda: answers("http://127.0.0.1:8000/ready"))
        shots = [
            Shot("mlflow-runs.png", runs, "registered_version", 1700, 360, CLOSE_PANELS),
            # The search's trials, nested under their tune-* run (its row expanded).
            Shot("mlflow-tune.png", runs, "trial-4", 1700, 560, CLOSE_PANELS + "; " + EXPAND),
            Shot("mlflow-model.png", model, "Champion changes", 1300, 760, CLOSE_PANELS),
            Shot("dashboard.png", dashboard, "Share of drifted features", 1300, 1400),
            # The champion's performance and its margin to the gate's floors, further down.
            Shot("dashboard-performance.png", dashboard, "Margin to the gate's floors", 1300,
                 620, "window.scrollTo(0, document.body.scrollHeight)"),
            Shot("docs.png", "http://127.0.0.1:8000/docs", "/predict", 1100, 720),
        ]
        for shot in shots:
            path = page.take(shot)
            size = path.stat().st_size
            print(f"screenshots: {path.relative_to(ROOT)} {size / 1000:.0f} kB")
            if size > MAX_BYTES:
                sys.exit(f"screenshots: {path.name} is over {MAX_BYTES / 1000:.0f} kB")


if __name__ == "__main__":
    main()
