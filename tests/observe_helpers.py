"""Processes with pools for the observability tests: a child Python that opens a pool,
holds connections and publishes its record, until the test lets it go."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# argv: conninfo, pool name, max_size, connections to hold, more pool options as JSON. Ends
# when its stdin closes, or after 60 s whatever happens (the alarm's default action ends it).
_CHILD = """
import json, signal, sys
signal.alarm(60)
from django_lido import Pool
from django_lido.observe import publish

pool = Pool(sys.argv[1], name=sys.argv[2], max_size=int(sys.argv[3]), **json.loads(sys.argv[5]))


def take_in_the_child():
    return [pool.getconn() for _ in range(int(sys.argv[4]))]


held = take_in_the_child()
for conn in held:
    conn.execute("SELECT 1")
publish.current().publish_once(force=True)
print("ready", flush=True)
sys.stdin.read()
"""
# The function of the child that takes its connections: the stacks name it.
TAKER = "take_in_the_child"


class PoolChild:
    """A child Python with one pool (``held`` connections lent out), publishing to
    ``runtime_dir``."""

    def __init__(
        self,
        conninfo: str,
        runtime_dir: Path,
        name: str,
        max_size: int = 4,
        held: int = 1,
        **options: Any,
    ) -> None:
        env = {**os.environ, "LIDO_RUNTIME_DIR": str(runtime_dir)}
        argv = [sys.executable, "-c", _CHILD, conninfo, name, str(max_size), str(held),
                json.dumps(options)]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> PoolChild:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.strip() == b"ready":
                    return self
                if not line:
                    break
        self.kill()
        err = self.proc.stderr.read().decode() if self.proc.stderr else ""
        raise AssertionError(f"the child with a pool did not get ready:\n{err}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> PoolChild:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_for(predicate: Any, timeout: float = 10.0, step: float = 0.05) -> Any:
    """Polls ``predicate()`` until it returns something true; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {predicate}"
        time.sleep(step)
