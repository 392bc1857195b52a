"""The pool under gevent: each test runs a fresh interpreter that calls
``gevent.monkey.patch_all()`` first, then greenlets check connections out of a small pool
against the throwaway PostgreSQL. A checkout that has to wait switches to the hub (other
greenlets keep running), its timeout fires, and the maintenance never blocks the hub.
A watchdog (the subprocess timeout) fails a hang."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from harness import demo_site
from harness.process import run_python_json
from harness.servers import free_port

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


def _run(pg: Any, body: str, watchdog: float = 30.0, patch: str = "") -> dict[str, Any]:
    script = PRELUDE.replace("monkey.patch_all()", f"monkey.patch_all({patch})")
    script += textwrap.dedent(body)
    result: dict[str, Any] = run_python_json(script, pg.conninfo(), watchdog=watchdog)
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


def test_greenlets_wait_on_the_hub_with_real_threads_too(pg: Any) -> None:
    """patch_all(thread=False): sockets are green but threads real; a greenlet that waits
    must still let the holder run and give its connection back."""
    r = _run(
        pg,
        """
        import threading
        pool = Pool(conninfo, max_size=1, timeout=5)
        def hold():
            conn = pool.getconn()
            gevent.sleep(0.2)
            pool.putconn(conn)
        holder = gevent.spawn(hold)
        gevent.sleep(0.01)
        t0 = time.monotonic()
        conn = pool.getconn()
        waited = time.monotonic() - t0
        pool.putconn(conn)
        holder.join(2)
        s = pool.stats()
        print(json.dumps(dict(waited=waited, in_use=s["in_use"],
              maintenance=type(pool._maintenance).__name__)))
        pool.close()
        """,
        patch="thread=False",
    )
    assert 0.1 <= r["waited"] < 2, r
    assert r["in_use"] == 0 and r["maintenance"] == "Thread", r


def test_a_real_thread_giving_back_wakes_a_waiting_greenlet(pg: Any) -> None:
    """A grant from another OS thread (a real thread's putconn; in production also the
    maintenance thread) must wake the hub, not only mark the waiter: no other greenlet
    runs meanwhile (the ticker is stopped) to wake the loop by chance."""
    r = _run(
        pg,
        """
        import gc
        from gevent import Greenlet, monkey
        for g in [g for g in gc.get_objects() if isinstance(g, Greenlet)]:
            g.kill()
        real_sleep = monkey.get_original("time", "sleep")
        start_thread = monkey.get_original("_thread", "start_new_thread")
        pool = Pool(conninfo, max_size=1, timeout=5)
        held = pool.getconn()
        def give_back():
            real_sleep(0.2)
            pool.putconn(held)
        start_thread(give_back, ())
        t0 = time.monotonic()
        conn = pool.getconn()
        waited = time.monotonic() - t0
        pool.putconn(conn)
        print(json.dumps(dict(waited=waited, in_use=pool.stats()["in_use"])))
        pool.close()
        """,
    )
    assert 0.15 <= r["waited"] < 2, r
    assert r["in_use"] == 0, r


def test_maintenance_keeps_min_size_without_blocking_the_hub(pg: Any) -> None:
    r = _run(
        pg,
        """
        pool = Pool(conninfo, min_size=3, max_size=4)
        t0, ticks0 = time.monotonic(), ticks
        while pool.stats()["idle"] < 3 and time.monotonic() - t0 < 10:
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


SITE_DIR = demo_site.SITE_DIR
SITE_DB = "lido_gevent_site"
CLIENTS = 30
REQUESTS = 20  # per client


def _get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> Any:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        resp = c.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status}")
        return json.loads(body)
    finally:
        if conn is None:
            c.close()


def test_gunicorn_gevent_worker_serves_many_clients_on_a_small_pool(pg: Any) -> None:
    """gunicorn -k gevent, one worker, max_size 4: 30 concurrent clients x 20 requests
    (a transaction held 5 ms in one request of five) all answered, never more than 4
    server connections, none left in use."""
    pytest.importorskip("gunicorn")
    demo_site.create_database(pg, SITE_DB)
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loadsite.settings",
        "LIDO_DEMO_DB_NAME": SITE_DB,
        "LIDO_DEMO_DB_HOST": "127.0.0.1",
        "LIDO_DEMO_DB_PORT": str(pg.port),
        "LIDO_DEMO_DB_USER": pg.user,
        "LIDO_DEMO_POOL_MAX_SIZE": "4",
    }
    cmd = [
        sys.executable, "-m", "gunicorn", "--chdir", str(SITE_DIR),
        "--bind", f"127.0.0.1:{port}", "--worker-class", "gevent", "--workers", "1",
        "--worker-connections", "100", "--timeout", "20", "--graceful-timeout", "5",
        "--log-level", "warning", "loadsite.wsgi",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    peak = 0
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                _get(port, "/pool-stats")
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not answer within 20 s"
                time.sleep(0.05)

        def client(i: int) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                for n in range(REQUESTS):
                    pk = 1 + (i * REQUESTS + n) % 100
                    row = _get(port, f"/{'slow' if n % 5 == 0 else 'item'}/{pk}", conn)
                    assert row["id"] == pk
            finally:
                conn.close()
            return REQUESTS

        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend'"
        )
        with ThreadPoolExecutor(CLIENTS) as ex:
            futures = [ex.submit(client, i) for i in range(CLIENTS)]
            while not all(f.done() for f in futures):
                peak = max(peak, pg.execute(sql, (SITE_DB,))[0][0])
                time.sleep(0.01)
            served = sum(f.result(timeout=30) for f in futures)
        stats = _get(port, "/pool-stats")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert served == CLIENTS * REQUESTS
    assert 1 <= peak <= 4, peak
    assert stats["in_use"] == 0 and stats["pool_size"] <= 4, stats
    assert stats["requests_timeouts"] == 0, stats
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""


def test_eventlet_is_refused_at_the_first_checkout(pg: Any) -> None:
    pytest.importorskip("eventlet")
    script = textwrap.dedent(
        """
        import eventlet
        eventlet.monkey_patch()
        import sys, psycopg
        from django_lido import Pool
        pool = Pool(lambda: psycopg.connect(sys.argv[1]), max_size=1, timeout=1)
        try:
            pool.getconn()
        except RuntimeError as e:
            print(e)
        """
    )
    p = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, pg.conninfo()],
        capture_output=True, text=True, timeout=20, cwd="/",
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "does not support eventlet" in p.stdout and "gevent" in p.stdout, p.stdout
