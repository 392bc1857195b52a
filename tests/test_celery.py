"""Celery workers with OPTIONS["pool"], for real: a throwaway Redis broker, the shared
PostgreSQL server, a tiny Django project with a Celery app (harness/celery_worker.py) and a
``celery worker`` subprocess running 400 tasks that each do an ORM and a cursor query.

Celery's Django fixup calls ``conn.close()`` and, in a prefork child with OPTIONS["pool"],
``conn.close_pool()`` before and after every task: the pool must survive that (one pool per
worker process, kept across tasks) while each task's connection goes back at its end."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django_helpers import database, unique

from harness.celery_worker import (
    CeleryWorker,
    create_table_sql,
    run_tasks_in_subprocess,
    write_project,
)
from harness.redis import RedisServer

TASKS = 400
CONCURRENCY = 4
TASKS_TIMEOUT = 25.0  # the watchdog: all results within this, or the test fails


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    # Only looked up: Celery itself runs in the worker and in the sender's subprocess.
    for module in ("celery", "redis"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    with RedisServer() as server:
        yield server


def _sessions(pg: Any, dbname: str) -> int:
    rows = pg.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", [dbname])
    return int(rows[0][0])


def _run(
    pg: Any, redis: RedisServer, pool: str, max_size: int, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    if pg.execute("SHOW server_version_num")[0][0] < "140000":
        pytest.skip("pg_stat_database.sessions needs PostgreSQL 14")
    dbname = unique("celery")
    pg.create_database(dbname)
    pg.execute(create_table_sql(), dbname=dbname)
    directory = Path(tempfile.mkdtemp(prefix="lido-celery-"))
    try:
        databases = {
            "default": database(pg, name=dbname, pool={"min_size": 0, "max_size": max_size})
        }
        broker, backend = redis.broker_url(), redis.backend_url()
        config = write_project(directory, databases, broker, backend, apps=("django_lido",))
        before = _sessions(pg, dbname)
        worker = CeleryWorker(directory, config, pool=pool, concurrency=concurrency)
        worker.start()
        try:
            start = time.monotonic()
            try:
                results = run_tasks_in_subprocess(broker, backend, TASKS, timeout=TASKS_TIMEOUT)
            except Exception as exc:
                raise AssertionError(f"{exc!r}\n{worker.log_tail()}") from exc
            elapsed = time.monotonic() - start
        finally:
            # A warm shutdown (SIGTERM) that does not end within its bound gives None.
            exit_code = worker.stop()
            if exit_code is None:
                worker.kill()
        # The worker has stopped: every backend it had has exited and flushed its counters.
        return {
            "results": results,
            "elapsed": elapsed,
            "exit": exit_code,
            "sessions": _sessions(pg, dbname) - before,
            "stats": worker.process_stats(),
            "log": worker.log_tail(100_000),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Run in a child Python of its own: the wrapper and pools it makes stay out of this process.
_FIXUP_CHECK = """
import json, sys
import django
from django.conf import settings
settings.configure(DATABASES={"default": json.loads(sys.argv[1])}, USE_TZ=False)
django.setup()
from django.db import connection as w
def one():
    with w.cursor() as cur:
        cur.execute("SELECT 1")
        return cur.fetchone()[0]
assert one() == 1
pool = w.pool
w.close()
# A function of Celery's fixup module (celery.fixups.django), as its _close_database.
fixup = {"__name__": "celery.fixups.django"}
exec("def _close_database(conn):\\n    conn.close()\\n    conn.close_pool()", fixup)
fixup["_close_database"](w)
assert not pool.closed and w.pool is pool
assert one() == 1
assert pool.stats()["in_use"] == 1
fixup["_close_database"](w)
assert pool.stats()["in_use"] == 0 and not pool.closed
w.close_pool()  # any other caller closes it
assert pool.closed
print("ok")
"""


def test_close_pool_keeps_the_pool_only_when_celerys_fixup_calls_it(pg: Any) -> None:
    entry = database(pg, pool={"max_size": 2})
    proc = subprocess.run(
        [sys.executable, "-c", _FIXUP_CHECK, json.dumps(entry)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _check(run: dict[str, Any], processes: int, max_size: int) -> None:
    assert len(run["results"]) == TASKS, run["log"]
    assert run["exit"] == 0, run["log"]  # SIGTERM ended the worker, within its bound
    assert "Traceback" not in run["log"], run["log"]
    assert run["sessions"] <= processes * max_size, (run["sessions"], run["log"])
    with_pools = [s for s in run["stats"] if s["pools"]]
    assert 1 <= len(with_pools) <= processes, run["stats"]
    for process in with_pools:
        assert len(process["pools"]) == 1, process  # one pool per process, kept across tasks
        assert process["pools"][0]["in_use"] == 0, process


def test_prefork_keeps_one_pool_per_worker_process(pg: Any, redis: RedisServer) -> None:
    run = _run(pg, redis, "prefork", max_size=2)
    _check(run, processes=CONCURRENCY, max_size=2)
    # The tasks ran in several child processes, each on few server sessions.
    workers = {pid for pid, _ in run["results"]}
    assert 1 < len(workers) <= CONCURRENCY
    assert len({backend for _, backend in run["results"]}) <= CONCURRENCY * 2


def test_threads_pool_shares_one_pool(pg: Any, redis: RedisServer) -> None:
    run = _run(pg, redis, "threads", max_size=CONCURRENCY)
    _check(run, processes=1, max_size=CONCURRENCY)
    assert len({pid for pid, _ in run["results"]}) == 1


def test_gevent_pool_shares_one_pool_among_more_greenlets_than_connections(
    pg: Any, redis: RedisServer
) -> None:
    """-P gevent -c 16 on max_size 4: the greenlets wait for each other on the hub."""
    if importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed")
    run = _run(pg, redis, "gevent", max_size=CONCURRENCY, concurrency=16)
    _check(run, processes=1, max_size=CONCURRENCY)
    assert len({pid for pid, _ in run["results"]}) == 1
    (process,) = [s for s in run["stats"] if s["pools"]]
    pool = process["pools"][0]
    assert pool["requests_timeouts"] == 0 and pool["requests_queued"] > 0, process
