"""A process that forks keeps no idle connections (lifecycle.py, the engine's
``keep_no_idle``): what the parent's pools do at a fork while other threads use them and a
connect is under way, against a real PostgreSQL. Each scenario runs in a subprocess of its
own (it forks), bounded by the subprocess timeout and by the script's own deadlines."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from helpers import app_name

# min_size 2: the maintenance opens one connection, then a second whose connect is held
# at a gate while the process forks. Then three threads each take a connection (the pool
# is full: three in use, one being opened), the gate opens, and they give them back. A
# sampler thread watches pool_max all along.
_CONNECT_UNDER_WAY = """
import json, os, sys, threading, time
import psycopg
from django_lido import Pool

dsn, app = sys.argv[1], sys.argv[2]
gate, release, stop = threading.Event(), threading.Event(), threading.Event()
maintenance_pids = []

def connect():
    conn = psycopg.connect(dsn, application_name=app)
    if threading.current_thread().name.endswith("-maintenance"):
        maintenance_pids.append(conn.info.backend_pid)
        if len(maintenance_pids) == 2:
            assert gate.wait(30), "the gate never opened"
    return conn

def until(pred, what, seconds=10):
    deadline = time.monotonic() + seconds
    while not pred():
        assert time.monotonic() < deadline, (what, pool.stats())
        time.sleep(0.005)

pool = Pool(connect, min_size=2, max_size=4, timeout=10)
until(lambda: (pool.stats()["idle"], pool.stats()["opening"]) == (1, 1), "filling")
pool_max = []

def sample():
    while not stop.is_set():
        pool_max.append(pool.stats()["pool_max"])
        time.sleep(0.001)

sampler = threading.Thread(target=sample)
sampler.start()
before = pool.stats()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
after = pool.stats()

held, errors = threading.Barrier(4, timeout=20), []

def hold():
    try:
        conn = pool.getconn(10)
        held.wait()
        assert release.wait(30)
        conn.execute("SELECT 1")
        pool.putconn(conn)
    except Exception as e:
        errors.append(repr(e))
        held.abort()

holders = [threading.Thread(target=hold) for _ in range(3)]
for t in holders:
    t.start()
held.wait()
full = pool.stats()
gate.set()
# Its slot is free once the close is done (a connection being closed counts in pool_size).
until(lambda: (pool.stats()["opening"], pool.stats()["pool_size"]) == (0, 3), "the close")
arrived = pool.stats()
with psycopg.connect(dsn, autocommit=True) as watcher:  # the server's view, meanwhile
    deadline = time.monotonic() + 10
    while True:
        alive = [p for (p,) in watcher.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (maintenance_pids,))]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.02)
release.set()
for t in holders:
    t.join(30)
stop.set()
sampler.join(30)
final = pool.stats()
print(json.dumps({
    "before": before, "after": after, "full": full, "arrived": arrived, "final": final,
    "errors": errors, "pool_max": [min(pool_max), max(pool_max), len(pool_max)],
    "maintenance_pids": maintenance_pids, "alive": alive,
}, default=str))
pool.close()
"""


def test_a_connect_under_way_at_the_fork_is_closed_when_it_arrives(pg: Any) -> None:
    app = app_name()
    p = subprocess.run(
        [sys.executable, "-c", _CONNECT_UNDER_WAY, pg.conninfo(), app],
        capture_output=True, text=True, timeout=90, cwd="/",
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    before, after, full, arrived, final = (
        r[k] for k in ("before", "after", "full", "arrived", "final")
    )
    assert (before["idle"], before["opening"], before["pool_min"]) == (1, 1, 2), before
    # At the fork: the idle connection is closed, the connect under way goes on, min_size
    # is 0 and max_size is untouched.
    assert (after["idle"], after["opening"], after["pool_min"]) == (0, 1, 0), after
    assert (after["pool_max"], after["closes_after_fork"]) == (4, 1), after
    # Other threads take every slot but the one being opened: none is capped.
    assert r["errors"] == [], r["errors"]
    assert (full["in_use"], full["opening"], full["pool_size"]) == (3, 1, 4), full
    # The gated connect arrived and was closed, not kept idle.
    assert (arrived["idle"], arrived["in_use"], arrived["pool_size"]) == (0, 3, 3), arrived
    assert arrived["closes_after_fork"] == 2, arrived
    # The holders' connections all went idle: nothing closed as above max_size.
    assert (final["idle"], final["in_use"], final["pool_size"]) == (3, 0, 3), final
    closes = {k: v for k, v in final.items() if k.startswith("closes_") and v}
    assert closes == {"closes_after_fork": 2}, closes
    assert final["returns_bad"] == 0, final
    assert final["connections_num"] == 5, final
    low, high, samples = r["pool_max"]
    assert (low, high) == (4, 4) and samples > 0, r["pool_max"]
    # On the server, while the holders' connections were still open: both maintenance
    # connections (the idle one and the gated one) were gone.
    assert len(set(r["maintenance_pids"])) == 2, r
    assert r["alive"] == [], r


# An AsyncPool with one idle connection forks from inside its event loop.
_ASYNC = """
import asyncio, json, os, sys
from django_lido import AsyncPool

async def main():
    pool = AsyncPool(sys.argv[1], max_size=2, timeout=10)
    conn = await pool.getconn()
    pid = conn.info.backend_pid
    await pool.putconn(conn)
    before = pool.stats()
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    after = pool.stats()
    conn = await pool.getconn()  # a new one, opened on demand
    served = conn.info.backend_pid != pid
    await pool.putconn(conn)
    await pool.close()
    print(json.dumps([before, after, served]))

asyncio.run(asyncio.wait_for(main(), 30))
"""


def test_an_async_pool_keeps_no_idle_connection_either(pg: Any) -> None:
    p = subprocess.run(
        [sys.executable, "-c", _ASYNC, pg.conninfo(application_name=app_name())],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "after fork failed" not in p.stderr, p.stderr
    before, after, served = json.loads(p.stdout.strip().splitlines()[-1])
    assert before["idle"] == 1, before
    assert (after["idle"], after["pool_size"], after["closes_after_fork"]) == (0, 0, 1), after
    assert served
