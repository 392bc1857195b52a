"""The pool under gevent with the other drivers: psycopg2 made cooperative by psycogreen,
PyMySQL (pure Python, so its sockets are gevent's after ``patch_all()``), and the blocking
ones (mysqlclient, psycopg2 without psycogreen), which the pool warns about.

Each test runs a fresh interpreter that calls ``gevent.monkey.patch_all()`` first; many
greenlets share a small pool while a ticker greenlet counts how often the hub ran. The
subprocess timeout is the watchdog: a hang fails the test."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import pytest

from harness.mariadb import MariaDBServer
from harness.process import run_python_json

pytest.importorskip("gevent")

APP = "lido_gevent_drivers"
MYSQL_DB = "lido_gevent_drivers"

# A ticker greenlet (the hub ran), a watcher greenlet (peak server connections, through
# ``count()``, on its own connection) and a load: GREENLETS greenlets x ROUNDS checkouts
# of one query each that sleeps on the server, so the checkouts wait for each other.
_LOAD = """
from gevent import monkey
monkey.patch_all()
import json, sys, time, warnings
import gevent
{setup}
from django_lido import BlockingDriverWarning, Pool, PoolTimeout
warnings.simplefilter("error", BlockingDriverWarning)  # a blocking driver fails the run

ticks = 0
def ticker():
    global ticks
    while True:
        gevent.sleep(0.005)
        ticks += 1
gevent.spawn(ticker)

pool = Pool(connect, max_size=4, timeout=10)
peak, running = 0, True
def watch():
    global peak
    admin = raw_connect()
    while running:
        peak = max(peak, count(admin))
        gevent.sleep(0.005)
    admin.close()

done = 0
def work():
    global done
    for _ in range(4):
        conn = pool.getconn()
        try:
            cur = conn.cursor()
            cur.execute(SLEEP)
            cur.fetchall()
            cur.close()
        finally:
            pool.putconn(conn)
    done += 1

watcher = gevent.spawn(watch)
t0, ticks0 = time.monotonic(), ticks
gevent.joinall([gevent.spawn(work) for _ in range(50)], timeout=30)
took, ticked = time.monotonic() - t0, ticks - ticks0

# One long query: the hub keeps running while it waits on the server.
conn = pool.getconn()
t1, ticks1 = time.monotonic(), ticks
cur = conn.cursor()
cur.execute(LONG_SLEEP)
cur.fetchall()
cur.close()
during_query = ticks - ticks1
long_took = time.monotonic() - t1

# With all four held, a waiter times out while the ticker runs.
held = [conn] + [pool.getconn() for _ in range(3)]
def wait():
    t = time.monotonic()
    try:
        pool.getconn(timeout=0.3)
    except PoolTimeout:
        return ("timeout", time.monotonic() - t)
    return ("got", time.monotonic() - t)
outcome, waited = gevent.spawn(wait).get(timeout=5)
for c in held:
    pool.putconn(c)
running = False
watcher.join(2)
s = pool.stats()
print(json.dumps(dict(done=done, took=took, ticked=ticked, during_query=during_query,
      long_took=long_took, peak=peak, outcome=outcome, waited=waited, in_use=s["in_use"],
      size=s["pool_size"], queued=s["requests_queued"], waiting=s["requests_waiting"])))
pool.close()
"""


def _run(script: str, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = run_python_json(script, *args, watchdog=60.0)
    return result


def _check_load(r: dict[str, Any]) -> None:
    assert r["done"] == 50, r
    assert r["in_use"] == 0 and r["waiting"] == 0, r
    assert 1 <= r["peak"] <= 4 and r["size"] <= 4, r
    assert r["queued"] > 0, r  # greenlets did wait for each other
    # 200 queries of 10 ms on 4 connections: the hub ran meanwhile.
    assert r["ticked"] >= 0.3 * r["took"] / 0.005, r
    # A 0.3 s query did not stop the hub (a blocking driver gives 0 ticks here).
    assert r["long_took"] >= 0.25 and r["during_query"] >= 20, r
    assert r["outcome"] == "timeout" and 0.25 <= r["waited"] < 1.5, r


def test_psycopg2_with_psycogreen(pg: Any) -> None:
    pytest.importorskip("psycopg2")
    pytest.importorskip("psycogreen")
    setup = f"""
import psycopg2
from psycogreen.gevent import patch_psycopg
patch_psycopg()
dsn = sys.argv[1]
def raw_connect():
    c = psycopg2.connect(dsn)
    c.autocommit = True
    return c
def connect(timeout):
    return psycopg2.connect(dsn, application_name="{APP}", connect_timeout=max(1, int(timeout)))
def count(admin):
    cur = admin.cursor()
    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", ("{APP}",))
    return cur.fetchone()[0]
SLEEP, LONG_SLEEP = "SELECT pg_sleep(0.01)", "SELECT pg_sleep(0.3)"
"""
    _check_load(_run(_LOAD.format(setup=setup), pg.conninfo()))


@pytest.fixture(scope="module")
def maria() -> Iterator[MariaDBServer]:
    if importlib.util.find_spec("pymysql") is None:
        pytest.skip("PyMySQL is not installed")
    with MariaDBServer() as server:
        server.create_database(MYSQL_DB)
        yield server


_MYSQL_SETUP = f"""
import {{driver}}
kw = json.loads(sys.argv[1])
def raw_connect():
    return {{driver}}.connect(**kw, autocommit=True)
def connect():
    return {{driver}}.connect(**kw, database="{MYSQL_DB}")
def count(admin):
    cur = admin.cursor()
    cur.execute("SELECT count(*) FROM information_schema.processlist WHERE db = %s",
                ("{MYSQL_DB}",))
    return cur.fetchall()[0][0]
SLEEP, LONG_SLEEP = "SELECT SLEEP(0.01)", "SELECT SLEEP(0.3)"
"""


def test_pymysql(maria: MariaDBServer) -> None:
    setup = _MYSQL_SETUP.format(driver="pymysql")
    _check_load(_run(_LOAD.format(setup=setup), json.dumps(maria.connect_kwargs())))


# A blocking driver under gevent: the pool warns, once, when it learns the driver, and
# still serves; the same driver without gevent, or made cooperative, gives no warning.
_WARN = """
import sys, json, warnings
if sys.argv[2] == "gevent":
    from gevent import monkey
    monkey.patch_all()
{setup}
from django_lido import BlockingDriverWarning, Pool
pool = Pool(connect, max_size=2, timeout=5)
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    for _ in range(3):
        conn = pool.getconn()
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        pool.putconn(conn)
ours = [str(w.message) for w in seen if issubclass(w.category, BlockingDriverWarning)]
print(json.dumps(dict(warnings=ours, in_use=pool.stats()["in_use"])))
pool.close()
"""


@pytest.mark.parametrize("mode", ["gevent", "threads"])
def test_mysqlclient_under_gevent_is_warned_about(maria: MariaDBServer, mode: str) -> None:
    pytest.importorskip("MySQLdb")
    setup = _MYSQL_SETUP.format(driver="MySQLdb")
    r = _run(_WARN.format(setup=setup), json.dumps(maria.connect_kwargs()), mode)
    assert r["in_use"] == 0, r
    if mode == "threads":
        assert r["warnings"] == [], r
        return
    assert len(r["warnings"]) == 1, r  # once per pool
    assert "mysqlclient" in r["warnings"][0] and "PyMySQL" in r["warnings"][0], r


def test_pymysql_under_gevent_is_not_warned_about(maria: MariaDBServer) -> None:
    setup = _MYSQL_SETUP.format(driver="pymysql")
    r = _run(_WARN.format(setup=setup), json.dumps(maria.connect_kwargs()), "gevent")
    assert r["warnings"] == [] and r["in_use"] == 0, r


@pytest.mark.parametrize("green", [False, True], ids=["plain", "psycogreen"])
def test_psycopg2_without_psycogreen_is_warned_about(pg: Any, green: bool) -> None:
    pytest.importorskip("psycopg2")
    pytest.importorskip("psycogreen")
    setup = """
import psycopg2
if sys.argv[3] == "green":
    from psycogreen.gevent import patch_psycopg
    patch_psycopg()
def connect():
    return psycopg2.connect(sys.argv[1])
"""
    script = _WARN.format(setup=setup)
    r = _run(script, pg.conninfo(), "gevent", "green" if green else "plain")
    assert r["in_use"] == 0, r
    if green:
        assert r["warnings"] == [], r
    else:
        assert len(r["warnings"]) == 1 and "psycogreen" in r["warnings"][0], r
