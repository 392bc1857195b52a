"""Issue 13: who holds what (``Pool.connections()``), long holds and leaks reported with the
stack that took the connection, and ``Pool.reports()``; against a real PostgreSQL."""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from django_lido import Pool
from django_lido.labels import clear_label, set_label
from helpers import app_name, connector, eventually

LOGGER = "django_lido.pool"
HOLDER_KEYS = {"thread", "thread_id", "greenlet", "task", "label"}
CONNECTION_KEYS = {
    "id", "held_for", "taken_at", "holder", "in_transaction", "transaction_for",
    "last_statement", "last_statement_seconds", "statement_running", "stack",
    "transaction_stack",
}  # fmt: skip
REPORT_KEYS = {
    "kind", "at", "connection_id", "seconds", "holder", "stack", "transaction_stack",
    "last_statement",
}  # fmt: skip


def messages(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and what in r.getMessage()]


@pytest.fixture
def make_pool(pg: Any) -> Any:
    pools: list[Pool] = []

    def make(**options: Any) -> Pool:
        pool = Pool(connector(pg, app_name()), **options)
        pools.append(pool)
        return pool

    yield make
    for p in pools:
        p.close()


def take_for_the_report(pool: Pool) -> Any:
    """The function whose name the taking stack must show."""
    return pool.getconn()


def test_connections_lists_each_holder_with_its_stack(make_pool: Any) -> None:
    pool = make_pool(max_size=3)
    assert pool.connections() == []
    before = time.time()
    conn = take_for_the_report(pool)
    other: list[Any] = []
    ready, done = threading.Event(), threading.Event()

    def hold_in_a_thread() -> None:
        set_label("GET /orders/")
        other.append(pool.getconn())
        ready.set()
        done.wait(10)
        pool.putconn(other.pop())
        clear_label()

    t = threading.Thread(target=hold_in_a_thread, name="the-holder")
    t.start()
    try:
        assert ready.wait(10)
        rows = pool.connections()
        assert len(rows) == 2
        first, second = rows  # oldest first
        assert set(first) == CONNECTION_KEYS and set(first["holder"]) == HOLDER_KEYS
        assert first["holder"]["thread"] == "MainThread"
        assert first["holder"]["thread_id"] == threading.get_ident()
        assert first["holder"]["label"] is None
        assert second["holder"]["thread"] == "the-holder"
        assert second["holder"]["label"] == "GET /orders/"
        assert before <= first["taken_at"] <= time.time()
        assert first["held_for"] >= 0
        # No statement hook here (that is Django's): no statement is known, and of the
        # transaction only what psycopg's status says, not since when.
        assert first["in_transaction"] is False and first["last_statement"] is None
        assert first["statement_running"] is False
        conn.execute("SELECT 1")  # psycopg begins a transaction
        row = pool.connections()[0]
        assert row["in_transaction"] is True and row["transaction_for"] is None
        assert first["stack"][-1].endswith(" in take_for_the_report")
        assert any(line.endswith("in test_connections_lists_each_holder_with_its_stack")
                   for line in first["stack"])  # fmt: skip
        assert second["stack"][-1].endswith(".<locals>.hold_in_a_thread")
        assert all(".py:" in line and " in " in line for line in first["stack"])
    finally:
        done.set()
        t.join(10)
        pool.putconn(conn)
    assert pool.connections() == []


def test_stack_depth_bounds_the_stack_and_zero_turns_it_off(make_pool: Any) -> None:
    def nested(pool: Pool, n: int) -> Any:
        return nested(pool, n - 1) if n else pool.getconn()

    for depth, expected in ((3, 3), (0, None)):
        pool = make_pool(max_size=1, stack_depth=depth)
        conn = nested(pool, 10)
        (row,) = pool.connections()
        stack = row["stack"]
        assert (len(stack) if stack is not None else None) == expected
        if stack is not None:
            assert all(line.endswith(" in test_stack_depth_bounds_the_stack_and_zero_turns_it_off."
                                     "<locals>.nested") for line in stack)  # fmt: skip
        pool.putconn(conn)


def test_a_long_hold_is_logged_with_the_stack_that_took_it(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(max_size=2, leak_threshold=0.2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        conn = take_for_the_report(pool)
        eventually(lambda: messages(caplog, "has been held"), "the long hold is reported", 10)
        (held,) = messages(caplog, "has been held")
        assert "taken at:" in held and "in take_for_the_report" in held
        pool.putconn(conn)
        assert len(messages(caplog, "came back")) == 1
    kinds = [r["kind"] for r in pool.reports()]
    assert kinds == ["long_hold", "long_hold_returned"]
    first = pool.reports()[0]
    assert set(first) == REPORT_KEYS
    assert first["stack"][-1].endswith(" in take_for_the_report")
    assert first["seconds"] >= 0.2 and first["holder"]["thread"] == "MainThread"


def test_a_leak_is_logged_with_the_stack_that_took_it(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(max_size=1, leak_threshold=None)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        conn = take_for_the_report(pool)
        del conn
        gc.collect()
        (leak,) = messages(caplog, "dropped by its holder")
    assert "taken at:" in leak and "in take_for_the_report" in leak
    (report,) = pool.reports()
    assert report["kind"] == "leak"
    assert report["stack"][-1].endswith(" in take_for_the_report")
    assert pool.stats()["connections_leaked"] == 1


def test_the_reports_ring_keeps_the_last_hundred(make_pool: Any) -> None:
    pool = make_pool(max_size=1, leak_threshold=None)
    for _ in range(105):
        conn = pool.getconn()
        del conn
        gc.collect()
    reports = pool.reports()
    assert len(reports) == 100 and all(r["kind"] == "leak" for r in reports)
    assert [r["at"] for r in reports] == sorted(r["at"] for r in reports)


GEVENT_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import json, sys
import gevent, psycopg
from django_lido import Pool
from django_lido.labels import set_label
pool = Pool(lambda: psycopg.connect(sys.argv[1]), max_size=2)
release = gevent.event.Event()
def hold(label):
    set_label(label)
    conn = pool.getconn()
    release.wait(10)
    pool.putconn(conn)
gs = [gevent.spawn(hold, "GET /a/"), gevent.spawn(hold, "GET /b/")]
gs[0].name, gs[1].name = "g-alpha", "g-beta"
gevent.sleep(0.2)
rows = pool.connections()
release.set()
gevent.joinall(gs, timeout=10)
print(json.dumps([[r["holder"]["greenlet"], r["holder"]["label"], r["stack"][-1]] for r in rows]))
pool.close()
"""


def test_under_gevent_the_holder_is_the_greenlet(pg: Any) -> None:
    pytest.importorskip("gevent")
    p = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, pg.conninfo()],
        capture_output=True,
        text=True,
        timeout=60,  # a hang fails the test
        cwd="/",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    rows = sorted(json.loads(p.stdout.strip().splitlines()[-1]))
    assert [r[:2] for r in rows] == [["g-alpha", "GET /a/"], ["g-beta", "GET /b/"]]
    assert all(r[2].endswith(" in hold") for r in rows)
