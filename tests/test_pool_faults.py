"""The pool when the server or the process misbehaves: killed backends, restarts, fork,
interpreter exit. Each module-scoped server here may be restarted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psycopg
import pytest
from django_lido import Pool
from helpers import app_name, backend_pid, connector, eventually

pytestmark = pytest.mark.fault


@pytest.fixture
def pool(pg_throwaway):
    app = app_name("fault")
    p = Pool(connector(pg_throwaway, app), max_size=3, name=app)
    p.app = app
    yield p
    p.close()


def test_terminated_idle_backend_is_replaced_transparently(pg_throwaway, pool):
    conns = [pool.getconn() for _ in range(2)]
    pids = {backend_pid(c) for c in conns}
    for c in conns:
        pool.putconn(c)
    assert pg_throwaway.terminate_backends(application_name=pool.app) == 2
    # The probe sees both dead sockets; the caller gets a working connection.
    conn = pool.getconn()
    assert backend_pid(conn) not in pids
    assert conn.execute("select 1").fetchone() == (1,)
    pool.putconn(conn)
    assert pool.stats()["closes_check_failed"] == 2


def test_server_restart_is_survived(pg_throwaway, pool):
    conns = [pool.getconn() for _ in range(3)]
    for c in conns:
        pool.putconn(c)
    pg_throwaway.restart()
    for _ in range(5):
        with pool.connection() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    assert pool.stats()["closes_check_failed"] == 3


def test_connection_in_use_during_restart_is_closed_on_return(pg_throwaway, pool):
    conn = pool.getconn()
    pg_throwaway.restart()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    pool.putconn(conn)  # broken: closed, not kept
    assert pool.stats()["returns_bad"] == 1
    with pool.connection() as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_fork_child_starts_empty_and_parent_keeps_working(pg_throwaway, pool):
    idle = pool.getconn()
    parent_idle_pid = backend_pid(idle)
    pool.putconn(idle)
    held = pool.getconn()  # the same one, held across the fork
    other = pool.getconn()
    other_pid = backend_pid(other)
    pool.putconn(other)  # one idle, one held
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 1
        try:
            s = pool.stats()
            assert (s["pool_size"], s["in_use"], s["idle"]) == (0, 0, 0), s
            conn = pool.getconn()
            child_pid = backend_pid(conn)
            assert child_pid not in (parent_idle_pid, other_pid)
            assert conn.execute("select 1").fetchone() == (1,)
            pool.putconn(conn)
            pool.putconn(held)  # the parent's: set aside, not closed
            pool.close()
            os.write(w, str(child_pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    child_backend = int(os.read(r, 100) or b"0")
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_backend
    # The parent's held connection still works; its idle one was closed at the fork (a
    # process that forks keeps no idle connections, lifecycle.py) and a new one opens.
    assert held.execute("select 1").fetchone() == (1,)
    pool.putconn(held)
    conns = [pool.getconn() for _ in range(2)]
    pids = {backend_pid(c) for c in conns}
    assert parent_idle_pid in pids and other_pid not in pids and len(pids) == 2
    for c in conns:
        assert c.execute("select 1").fetchone() == (1,)
        pool.putconn(c)


EXIT_SCRIPT = """
import sys, threading, psycopg
from django_lido import Pool
ci = sys.argv[1]
pool = Pool(lambda: psycopg.connect(ci), min_size=2, max_size=2, name="exit")
pool.wait(timeout=10)
held = [pool.getconn(), pool.getconn()]
# A daemon thread blocked waiting for a connection when the interpreter exits.
t = threading.Thread(target=lambda: pool.getconn(timeout=60), daemon=True)
t.start()
while pool.stats()["requests_waiting"] == 0:
    pass
print("exiting", flush=True)
"""


def test_interpreter_exit_with_open_pool_and_waiter_does_not_hang(pg_throwaway):
    app = app_name("exit")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(EXIT_SCRIPT),
            pg_throwaway.conninfo(application_name=app),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exiting" in proc.stdout
    eventually(lambda: pg_throwaway.backend_count(app) == 0, "server sessions ended")
