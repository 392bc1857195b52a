"""Servers and workers a harness starts in a process group of their own (gunicorn's master,
uvicorn, daphne, a Celery worker): started until ready (``ServedProcess``), ended politely
and bounded, then by force."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Self


def terminate(proc: subprocess.Popen[Any], timeout: float) -> int | None:
    """SIGTERM to ``proc`` (its graceful shutdown), waits up to ``timeout``; returns its exit
    code, or None when it had to be killed with its whole group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return None
    return proc.returncode


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL to ``proc``'s process group (its children too), then reaps it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def run_python_json(script: str, *args: str, watchdog: float, python: str = "") -> Any:
    """Runs ``script`` in a fresh interpreter (from ``/``, so the source tree is not on its
    path), killed after ``watchdog`` seconds (a hang fails the caller); asserts it exited
    0 and returns the JSON of its last line of output."""
    import json
    import sys

    p = subprocess.run(
        [python or sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=watchdog,
        cwd="/",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


class ServedProcess:
    """A server or worker a harness runs in a process group of its own, its output in
    ``log``: ``start()`` returns once ``ready()``, failing with the log's tail if it exits
    first or is not ready within the timeout; ``stop()`` asks for a graceful shutdown
    (SIGTERM), bounded, and returns the exit code (None if it had to be killed).
    Subclasses give ``what`` (for messages), ``command()`` and ``ready()``."""

    what = "server"

    def __init__(self, log: Path, cwd: Path, env: dict[str, str]) -> None:
        self.log = log
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Self:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.cwd, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.what} exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            if self.ready():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.what} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        proc, self.proc = self.proc, None
        return None if proc is None else terminate(proc, timeout)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_group(proc)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()  # kills the group when the graceful stop runs out of time
