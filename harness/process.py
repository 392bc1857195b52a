"""Ending a server's process group that a harness started with ``start_new_session=True``
(gunicorn's master, a Celery worker): politely and bounded, then by force."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


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
