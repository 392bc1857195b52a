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
