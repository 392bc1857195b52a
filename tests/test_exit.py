"""Interpreter exit while threads are busy in the pool never aborts the process.

CPython 3.11 to 3.13 ends a daemon thread that takes the GIL during finalization with
pthread_exit, whose forced unwind aborts the process when it crosses the binding's frames.
Each mode starts a fresh interpreter with threads doing one kind of pool work, exits it, and
repeats: the race hit about one exit in two before the fix, so a few dozen exits per mode
would all but surely catch it."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from harness.exit_child import MODES

pytestmark = pytest.mark.fault

RUNS = 16  # per mode; a race that hits one exit in two is missed with probability 2**-16

CHILD = str(Path(__file__).resolve().parent.parent / "harness" / "exit_child.py")


def _exit_once(mode: str, conninfo: str) -> tuple[int, str]:
    p = subprocess.run(
        [sys.executable, CHILD, mode, conninfo],
        capture_output=True,
        text=True,
        timeout=30,  # the watchdog: a hang fails the test
        cwd="/",
    )
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("mode", MODES)
def test_exit_with_threads_busy_in_the_pool_never_aborts(pg: Any, mode: str) -> None:
    conninfo = pg.conninfo()
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda _: _exit_once(mode, conninfo), range(RUNS)))
    bad = [(rc, out[-400:]) for rc, out in results if rc != 0 or "exiting" not in out]
    busy = [int(out.split("exiting ")[1].split()[0]) for rc, out in results if "exiting " in out]
    assert all(busy), f"the threads did no pool work before some exits: {busy}"
    assert not bad, f"{len(bad)} of {RUNS} exits failed; first: rc={bad[0][0]}\n{bad[0][1]}"
