"""A fork while another thread keeps a pooled connection in a ``threading.local``: in the
child CPython frees the other threads' locals before the pool's fork hooks run, so the
connection's leak watch fires with the pool's locks still held across the fork. The child
must neither hang nor touch the parent's connection; against a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from django_lido import Pool
from helpers import app_name, connector


def test_a_fork_child_ignores_the_parents_connections_freed_with_thread_locals(pg: Any) -> None:
    pool = Pool(connector(pg, app_name()), max_size=2, timeout=5)
    local = threading.local()
    taken, done = threading.Event(), threading.Event()
    after: list[Any] = []

    def hold() -> None:
        local.conn = pool.getconn()
        taken.set()
        done.wait(20)
        after.append(local.conn.execute("SELECT 1").fetchone())
        pool.putconn(local.conn)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert taken.wait(10)
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                s = pool.stats()
                code = 0 if (s["in_use"], s["connections_leaked"]) == (0, 0) else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if waited[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the fork child hung")
        assert os.waitstatus_to_exitcode(waited[1]) == 0
    finally:
        done.set()
        t.join()
    # The parent's connection was left alone.
    assert after == [(1,)]
    s = pool.stats()
    assert (s["in_use"], s["connections_leaked"], s["connections_num"]) == (0, 0, 1)
    pool.close()


FORKS_WHILE_CHECKING = r"""
import os, sys, threading
from django_lido import Pool
conninfo, forks = sys.argv[1], int(sys.argv[2])
pool = Pool(conninfo, max_size=4, check_after_idle=0)
stop = threading.Event()

def checking():
    while not stop.is_set():
        with pool.connection() as conn:
            conn.execute("SELECT 1")

threads = [threading.Thread(target=checking, daemon=True) for _ in range(2)]
for t in threads:
    t.start()
failed = 0
for _ in range(forks):
    pid = os.fork()
    if pid == 0:  # a pool of the child's own, checked at every checkout
        code = 1
        try:
            child = Pool(conninfo, check_after_idle=0)
            for _ in range(3):
                with child.connection(timeout=5) as conn:
                    conn.execute("SELECT 1")
            code = 0
        finally:
            os._exit(code)
    failed += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0
stop.set()
for t in threads:
    t.join(10)
pool.close()
print("failed children:", failed)
"""


@pytest.mark.fault
def test_forks_while_threads_check_connections_neither_hang_nor_crash(pg: Any) -> None:
    """Threads keep checking connections (round trips, the deadline timer) while the main
    thread forks again and again: the pools' locks are held across each fork() by the
    binding's fork handlers, so no thread can block on one while holding the GIL (the parent
    hung), and the child gets them free (it hung or crashed now and then)."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", FORKS_WHILE_CHECKING, pg.conninfo(), "40"],
        capture_output=True,
        text=True,
        timeout=60,  # the watchdog: a hang fails the test
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "failed children: 0" in p.stdout, p.stdout + p.stderr[-2000:]
