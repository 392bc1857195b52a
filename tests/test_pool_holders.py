"""Issue 13: who holds what (``Pool.connections()``), long holds and leaks reported with the
stack that took the connection, and ``Pool.reports()``; against a real PostgreSQL."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

import pytest
from django_lido import Pool
from django_lido.labels import clear_label, set_label
from helpers import app_name, connector, eventually

LOGGER = "django_lido.pool"
HOLDER_KEYS = {"thread", "thread_id", "greenlet", "label"}
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
        # No statement hook here (that is Django's): nothing is known of transactions.
        assert first["in_transaction"] is None and first["last_statement"] is None
        assert first["statement_running"] is False
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
        (back,) = messages(caplog, "came back")
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
