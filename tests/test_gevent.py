"""The pool under gevent: each test runs a fresh interpreter that calls
``gevent.monkey.patch_all()`` first, then greenlets check connections out of a small pool
against the throwaway PostgreSQL. A checkout that has to wait switches to the hub (other
greenlets keep running), its timeout fires, and the maintenance never blocks the hub.
A watchdog (the subprocess timeout) fails a hang."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytest.importorskip("gevent")

APP = "lido_gevent_test"

PRELUDE = textwrap.dedent(
    f"""
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    import gevent, psycopg
    from django_lido import Pool, PoolTimeout
    conninfo = sys.argv[1] + " application_name={APP}"
    ticks = 0
    def ticker():
        global ticks
        while True:
            gevent.sleep(0.005)
            ticks += 1
    gevent.spawn(ticker)
    def server_connections():
        with psycopg.connect(sys.argv[1]) as c:
            return c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                ("{APP}",),
            ).fetchone()[0]
    """
)


def _run(pg: Any, body: str, watchdog: float = 30.0) -> dict[str, Any]:
    script = PRELUDE + textwrap.dedent(body)
    p = subprocess.run(
        [sys.executable, "-c", script, pg.conninfo()],
        capture_output=True,
        text=True,
        timeout=watchdog,  # a hang fails the test
        cwd="/",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return result


def test_many_greenlets_share_a_small_pool(pg: Any) -> None:
    r = _run(
        pg,
        """
        pool = Pool(conninfo, max_size=4, timeout=10)
        peak = 0
        running = True
        def watch():
            global peak
            with psycopg.connect(sys.argv[1]) as c:
                while running:
                    n = c.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        ("lido_gevent_test",),
                    ).fetchone()[0]
                    peak = max(peak, n)
                    gevent.sleep(0.005)
        done = 0
        def work():
            global done
            for _ in range(4):
                with pool.connection() as conn:
                    conn.execute("SELECT pg_sleep(0.01)")
            done += 1
        watcher = gevent.spawn(watch)
        t0 = time.monotonic()
        ticks0 = ticks
        gevent.joinall([gevent.spawn(work) for _ in range(50)], timeout=20)
        took = time.monotonic() - t0
        running = False
        watcher.join(2)
        s = pool.stats()
        print(json.dumps(dict(done=done, took=took, peak=peak, in_use=s["in_use"],
              size=s["pool_size"], waiting=s["requests_waiting"],
              queued=s["requests_queued"], ticks=ticks - ticks0)))
        pool.close()
        """,
    )
    assert r["done"] == 50, r
    assert r["in_use"] == 0 and r["waiting"] == 0, r
    assert 1 <= r["peak"] <= 4 and r["size"] <= 4, r
    assert r["queued"] > 0, r  # greenlets did wait for each other
    # 200 checkouts of 10 ms on 4 connections: at least 0.5 s, not serialized.
    assert r["took"] < 10, r
    assert r["ticks"] >= 0.3 * r["took"] / 0.005, r  # the hub kept running meanwhile


def test_a_waiting_greenlet_times_out_while_others_run(pg: Any) -> None:
    r = _run(
        pg,
        """
        pool = Pool(conninfo, max_size=1, timeout=0.3)
        held = pool.getconn()
        def wait():
            t0, ticks0 = time.monotonic(), ticks
            try:
                pool.getconn()
            except PoolTimeout:
                return ("timeout", time.monotonic() - t0, ticks - ticks0)
            return ("got", time.monotonic() - t0, ticks - ticks0)
        g = gevent.spawn(wait)
        outcome, waited, ticked = g.get(timeout=5)
        pool.putconn(held)
        # The pool still serves afterwards.
        pool.putconn(pool.getconn())
        s = pool.stats()
        print(json.dumps(dict(outcome=outcome, waited=waited, ticked=ticked,
                              in_use=s["in_use"], timeouts=s["requests_timeouts"])))
        pool.close()
        """,
    )
    assert r["outcome"] == "timeout", r
    assert 0.25 <= r["waited"] < 1.5, r
    assert r["ticked"] >= 10, r  # another greenlet progressed during the wait
    assert r["in_use"] == 0 and r["timeouts"] == 1, r


def test_a_greenlet_killed_while_waiting_leaves_no_slot_behind(pg: Any) -> None:
    r = _run(
        pg,
        """
        pool = Pool(conninfo, max_size=1, timeout=5)
        held = pool.getconn()
        g = gevent.spawn(pool.getconn)
        gevent.sleep(0.1)
        waiting = pool.stats()["requests_waiting"]
        g.kill(timeout=2)
        pool.putconn(held)
        again = pool.getconn(timeout=1)
        pool.putconn(again)
        s = pool.stats()
        print(json.dumps(dict(waiting=waiting, killed=g.dead, in_use=s["in_use"],
              after=s["requests_waiting"], size=s["pool_size"])))
        pool.close()
        """,
    )
    assert r["waiting"] == 1 and r["killed"], r
    assert r["in_use"] == 0 and r["after"] == 0 and r["size"] == 1, r


def test_maintenance_keeps_min_size_without_blocking_the_hub(pg: Any) -> None:
    r = _run(
        pg,
        """
        pool = Pool(conninfo, min_size=3, max_size=4)
        t0, ticks0 = time.monotonic(), ticks
        while pool.stats()["pool_size"] < 3 and time.monotonic() - t0 < 10:
            gevent.sleep(0.01)
        filled = time.monotonic() - t0
        ticked = ticks - ticks0
        on_server = server_connections()
        conn = pool.getconn()
        conn.execute("SELECT 1")
        pool.putconn(conn)
        t1 = time.monotonic()
        pool.close()
        closed = time.monotonic() - t1
        print(json.dumps(dict(filled=filled, ticked=ticked, on_server=on_server,
              real_thread=type(pool._maintenance).__name__, closed=closed,
              alive=pool._maintenance.is_alive())))
        """,
    )
    assert r["filled"] < 10 and r["on_server"] == 3, r
    assert r["real_thread"] == "RealThread", r
    assert r["closed"] < 1.5 and not r["alive"], r
