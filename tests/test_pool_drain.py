"""``drain()`` against a real PostgreSQL: every connection of a pool replaced, the pool left
open. The server's own list of backends (``pg_stat_activity``, read on a separate
connection) shows which connections are gone and which are new. (``AsyncPool``'s:
test_async_pool.py.)"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from django_lido import Pool
from helpers import app_name, backend_pid, connector, eventually, server_pids


def within_max_size(pg: Any, app: str, pool: Pool) -> bool:
    s = pool.stats()
    assert s["pool_size"] <= s["pool_max"], s
    return pg.backend_count(app) <= s["pool_max"]


@pytest.fixture
def make_pool(pg: Any):
    pools: list[Pool] = []

    def make(**options: Any) -> Pool:
        app = app_name("lido-drain")
        pool = Pool(connector(pg, app), name=app, **options)
        pool.app = app  # type: ignore[attr-defined]
        pools.append(pool)
        return pool

    yield make
    for p in pools:
        p.close()


def test_idle_connections_close_now_and_the_held_one_when_it_comes_back(pg, make_pool):
    pool = make_pool(min_size=2, max_size=4)
    app = pool.app
    # Opened by maintenance alone (a wait() would race it and might open more).
    eventually(lambda: pool.stats()["idle"] == 2, "min_size opened")
    conns = [pool.getconn() for _ in range(3)]
    idle_pids = {backend_pid(c) for c in conns[1:]}
    held, held_pid = conns[0], backend_pid(conns[0])
    for c in conns[1:]:
        pool.putconn(c)
    assert pool.stats()["idle"] == 2
    old = idle_pids | {held_pid}
    assert server_pids(pg, app) == old, pool.stats()

    pool.drain()
    s = pool.stats()
    assert (s["closes_drained"], s["in_use"], s["pool_min"], s["pool_max"]) == (2, 1, 2, 4)
    assert not pool.closed
    eventually(lambda: not server_pids(pg, app) & idle_pids, "the idle ones' backends ended")
    assert held_pid in server_pids(pg, app)
    assert held.execute("SELECT 1").fetchone() == (1,), "the held one is not disturbed"
    # Maintenance refills min_size (one held, one opened anew).
    eventually(lambda: pool.stats()["pool_size"] == 2, "min_size refilled")

    pool.putconn(held)
    assert pool.stats()["closes_drained"] == 3
    eventually(lambda: held_pid not in server_pids(pg, app), "the held one closed on return")
    eventually(lambda: pool.stats()["idle"] == 2, "min_size refilled again")
    fresh = [pool.getconn() for _ in range(3)]
    assert not {backend_pid(c) for c in fresh} & old, "new checkouts get new connections"
    for c in fresh:
        pool.putconn(c)
    s = pool.stats()
    assert s["in_use"] == 0
    closes = {k: v for k, v in s.items() if k.startswith("closes_") and v}
    assert closes == {"closes_drained": 3}, "nothing else closed"
    eventually(lambda: within_max_size(pg, app, pool), "no more server connections than max")


def test_a_waiter_gets_a_fresh_connection_when_the_drained_one_comes_back(pg, make_pool):
    pool = make_pool(max_size=1)
    held = pool.getconn()
    old_pid = backend_pid(held)
    pool.drain()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(pool.getconn(timeout=20)))
    t.start()
    eventually(lambda: pool.stats()["requests_waiting"] == 1, "the waiter queued")
    pool.putconn(held)
    t.join(30)
    assert len(got) == 1
    assert backend_pid(got[0]) != old_pid
    pool.putconn(got[0])
    s = pool.stats()
    assert (s["closes_drained"], s["in_use"], s["pool_size"], s["idle"]) == (1, 0, 1, 1)
    with pool.connection() as conn:
        now = backend_pid(conn)
    eventually(lambda: server_pids(pg, pool.app) == {now}, "one left")


def test_a_connect_under_way_serves_its_checkout_then_closes_on_return(pg):
    app = app_name("lido-drain")
    conninfo = pg.conninfo(application_name=app)
    gate = threading.Event()

    def connect() -> psycopg.Connection:
        gate.wait(20)
        return psycopg.connect(conninfo)

    with Pool(connect, name=app, max_size=2) as pool:
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(pool.getconn(timeout=30)))
        t.start()
        eventually(lambda: pool.stats()["opening"] == 1, "the connect is under way")
        pool.drain()
        gate.set()
        t.join(30)
        (conn,) = got
        assert conn.execute("SELECT 2").fetchone() == (2,)
        opened_pid = backend_pid(conn)
        pool.putconn(conn)
        s = pool.stats()
        assert (s["closes_drained"], s["pool_size"], s["in_use"]) == (1, 0, 0)
        eventually(lambda: opened_pid not in server_pids(pg, app), "closed on return")
        # Connections opened after the drain are kept.
        again = pool.getconn()
        pool.putconn(again)
        assert pool.stats()["idle"] == 1


def test_a_closed_pool_is_left_alone(pg, make_pool):
    pool = make_pool(max_size=1)
    pool.putconn(pool.getconn())
    pool.close()
    pool.drain()
    assert pool.stats()["closes_drained"] == 0
