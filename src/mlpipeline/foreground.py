"""`python -m mlpipeline.foreground NAME -- COMMAND...`: a long-running command (a server) that
Ctrl-C stops cleanly, for the make targets that start one (`make serve`, `ui`, `dashboard`).

Ctrl-C in a terminal sends SIGINT to its whole foreground process group: the server, but
also `make`, which then dies of it (status 130, "make: *** ... Interrupt" or "Error 241"
after the server's own exit code) however cleanly the server stopped. So the command runs
in a process group of its own, made the terminal's foreground group while it runs: Ctrl-C
reaches the server alone, it shuts down, and this prints one line and exits 0, as does
make. Without a terminal (a pipe, CI) the command runs as it is. Any other ending passes its
exit code on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

# A server's endings after Ctrl-C (or a polite kill): uvicorn exits 0, others die of it.
STOPPED = {0, -signal.SIGINT, 128 + signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM}


@contextlib.contextmanager
def terminal_given_to(pgid: int) -> Iterator[None]:
    """The controlling terminal's foreground group is `pgid` in the block, ours after it.
    (Changing it from what is then a background group needs SIGTTOU ignored.)"""
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:  # no controlling terminal
        yield
        return
    before = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        ours = os.tcgetpgrp(tty) == os.getpgrp()
        if ours:
            os.tcsetpgrp(tty, pgid)
        try:
            yield
        finally:
            if ours:
                os.tcsetpgrp(tty, os.getpgrp())
    finally:
        signal.signal(signal.SIGTTOU, before)
        os.close(tty)


def run(name: str, command: list[str]) -> int:
    """Run `command` in the terminal's foreground; 0 with one line when Ctrl-C stopped it."""
    child = subprocess.Popen(command, process_group=0)

    def to_command(sig: int) -> None:  # its whole group: a server's own children too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)

    # A SIGINT without a terminal to hand over, or a SIGTERM (a supervisor stopping make's
    # group), reaches this process, not the command's group: pass it on, so the command
    # never outlives us.
    signal.signal(signal.SIGTERM, lambda *_: to_command(signal.SIGTERM))
    with terminal_given_to(child.pid):
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:
                to_command(signal.SIGINT)
    if code in STOPPED:
        print(f"\n{name}: stopped", flush=True)
        return 0
    return code


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3 or args[1] != "--":
        raise SystemExit("usage: python -m mlpipeline.foreground NAME -- COMMAND...")
    sys.exit(run(args[0], args[2:]))


if __name__ == "__main__":
    main()
