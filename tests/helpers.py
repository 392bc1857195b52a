"""Small helpers shared by the pool tests."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import psycopg

_apps = itertools.count()


def app_name(prefix: str = "lido-test") -> str:
    """A unique application_name, so a test can count its own server connections."""
    return f"{prefix}-{next(_apps)}"


def connector(server: Any, application_name: str, **extra: Any) -> Callable[[], psycopg.Connection]:
    conninfo = server.conninfo(application_name=application_name, **extra)
    return lambda: psycopg.connect(conninfo)


def backend_pid(conn: psycopg.Connection) -> int:
    return conn.info.backend_pid


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Waits for a condition that background work makes true (not a timing assertion:
    the timeout only bounds a hang)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def server_pids(server: Any, application_name: str) -> set[int]:
    """The backends of a pool's connections (by their application_name), as the server
    lists them, read on a connection of its own."""
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    return {int(r[0]) for r in server.execute(sql, [application_name])}
