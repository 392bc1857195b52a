"""Django under a real ``gunicorn`` (harness/gunicorn_server.py) on the throwaway
PostgreSQL: sync, gthread and gevent (psycopg2 + psycogreen) workers under bounded load, and
``--preload``, where the master's import-time connection must not outlive the start.

Each asserts no errors, server connections within the workers' budget (workers x
``max_size``), and ``in_use`` 0 in every worker at its exit. gunicorn's own bounds (the
start-up wait, the graceful stop) and the load's deadline are the watchdogs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django_helpers import LIDO_ENGINE, unique

from harness.asgi_server import ServerConnections, drive
from harness.django_db import postgres_entry
from harness.gunicorn_server import TABLE_SQL, GunicornServer, write_project

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gunicorn") is None, reason="gunicorn is not installed"
)


@pytest.fixture(scope="module")
def table(pg: Any) -> Any:
    pg.execute(TABLE_SQL)
    return pg


def entry(pg: Any, app: str, **pool: Any) -> dict[str, Any]:
    return postgres_entry(pg, engine=LIDO_ENGINE, app=app, pool={"timeout": 10, **pool})


def _serve_and_load(
    root: Path,
    pg: Any,
    app: str,
    *,
    budget: int,
    requests: int,
    concurrency: int,
    **server: Any,
) -> list[dict[str, Any]]:
    """Serves, drives the load, stops; checks the load and the server connections and
    returns the workers' exit statistics."""
    gunicorn = GunicornServer(root, **server)
    with ServerConnections(pg, app, interval=0.01) as seen:
        gunicorn.start()
        try:
            load = drive(
                gunicorn.port, ["/orm", "/slow"], requests=requests, concurrency=concurrency,
                request_timeout=15, deadline=60,
            )  # fmt: skip
        finally:
            code = gunicorn.stop()
    print(load.summary(), f"peak server connections {seen.peak}")
    assert code == 0, gunicorn.log_tail()
    assert load.finished, load.summary()
    assert load.ok == load.sent == requests, (load.summary(), load.errors, gunicorn.log_tail())
    assert "Traceback" not in gunicorn.log_tail(1000), gunicorn.log_tail()
    assert 1 <= seen.peak <= budget, seen.peak
    stats = gunicorn.process_stats()
    workers = server.get("workers", 1)
    assert 1 <= len(stats) <= workers, stats
    for process in stats:
        assert len(process["pools"]) == 1, process
        pool = process["pools"][0]
        assert pool["in_use"] == 0 and pool["requests_timeouts"] == 0, process
        assert pool["pool_size"] <= pool["pool_max"], process
    return stats


def test_sync_workers(table: Any, tmp_path: Path) -> None:
    app = unique("lido_gunicorn_sync")
    write_project(tmp_path, databases={"default": entry(table, app, max_size=2)})
    _serve_and_load(
        tmp_path, table, app, budget=2 * 2, requests=300, concurrency=8,
        worker_class="sync", workers=2,
    )  # fmt: skip


def test_gthread_workers_share_a_pool_smaller_than_their_threads(
    table: Any, tmp_path: Path
) -> None:
    app = unique("lido_gunicorn_gthread")
    write_project(tmp_path, databases={"default": entry(table, app, max_size=3)})
    stats = _serve_and_load(
        tmp_path, table, app, budget=2 * 3, requests=400, concurrency=24,
        worker_class="gthread", workers=2, threads=8,
    )  # fmt: skip
    # 8 threads per worker on 3 connections: some requests waited for a connection.
    assert sum(p["pools"][0]["requests_queued"] for p in stats) > 0, stats


def test_gevent_worker_with_psycopg2_and_psycogreen(table: Any, tmp_path: Path) -> None:
    pytest.importorskip("gevent")
    pytest.importorskip("psycopg2")
    pytest.importorskip("psycogreen")
    app = unique("lido_gunicorn_gevent2")
    write_project(
        tmp_path, databases={"default": entry(table, app, max_size=4)}, psycogreen=True,
        hide_psycopg=True,
    )  # fmt: skip
    stats = _serve_and_load(
        tmp_path, table, app, budget=4, requests=600, concurrency=30,
        worker_class="gevent", workers=1, worker_connections=100,
    )  # fmt: skip
    assert stats[0]["pools"][0]["requests_queued"] > 0, stats
    log = (tmp_path / "gunicorn.log").read_text()
    assert "BlockingDriverWarning" not in log, log  # psycogreen made psycopg2 cooperative


def _count(pg: Any, app: str) -> int:
    rows = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))
    return int(rows[0][0])


def test_preload_master_keeps_no_connection(table: Any, tmp_path: Path) -> None:
    """``--preload``: the master imports the application, which runs a query and keeps
    its connection (no request ends there to give it back); after it forks the workers it
    keeps none, so at steady state the server has exactly the workers' connections (one
    each: a sync worker serves one request at a time)."""
    app = unique("lido_gunicorn_preload")
    write_project(
        tmp_path, databases={"default": entry(table, app, max_size=2)}, query_at_import=True
    )
    gunicorn = GunicornServer(tmp_path, worker_class="sync", workers=2, preload=True)
    with gunicorn:
        (imported,) = gunicorn.import_queries()
        assert gunicorn.proc is not None and imported["pid"] == gunicorn.proc.pid
        load = drive(gunicorn.port, ["/orm"], requests=100, concurrency=4, deadline=30)
        assert load.ok == load.sent == 100, (load.summary(), gunicorn.log_tail())
        # Steady state: the workers' connections, and nothing of the master's.
        deadline = time.monotonic() + 10
        while (n := _count(table, app)) != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        backends = table.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        )
        assert n == 2, (n, backends, gunicorn.log_tail())
        assert imported["backend"] not in {b for (b,) in backends}, (imported, backends)
        assert len(gunicorn.worker_pids()) == 2
    assert "Traceback" not in gunicorn.log_tail(1000), gunicorn.log_tail()


# A process with a filled pool (min_size 2) and one still filling forks; the child exits at
# once. The parent then keeps no idle connection, does not fill min_size again, and still
# serves.
_FORKS = """
import json, os, sys, time
import psycopg
from django_lido import Pool
def make():
    return Pool(lambda: psycopg.connect(sys.argv[1], application_name=sys.argv[2]),
                min_size=2, max_size=3, timeout=5)
filled = make()
deadline = time.monotonic() + 10
while filled.stats()["idle"] < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
before = filled.stats()
filling = make()  # its maintenance is opening two connections while the process forks
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
after = filled.stats()
time.sleep(1.0)  # the maintenance would fill min_size within this
later = [filled.stats(), filling.stats()]
with filled.connection() as conn:
    conn.execute("SELECT 1")
served = filled.stats()
print(json.dumps([before, after, later, served], default=str))
filled.close()
filling.close()
"""


def test_a_process_that_forks_keeps_no_idle_connections(pg: Any) -> None:
    app = unique("lido_forks")
    p = subprocess.run(
        [sys.executable, "-c", _FORKS, pg.conninfo(), app],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    before, after, later, served = json.loads(p.stdout.strip().splitlines()[-1])
    assert (before["idle"], before["pool_min"]) == (2, 2), before
    assert (after["idle"], after["pool_size"], after["pool_min"]) == (0, 0, 0), after
    for pool in later:
        assert pool["pool_size"] == 0 and pool["pool_min"] == 0, pool
    assert served["in_use"] == 0 and served["pool_size"] == 1, served
    assert _count(pg, app) == 0  # the child never closed the parent's; the parent did
