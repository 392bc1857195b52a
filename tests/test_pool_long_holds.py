"""Issue 15, point 6: a connection held longer than ``leak_threshold`` while still
referenced is reported once, with the name of the thread that took it, and again when it
comes back; against a real PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from django_lido import Pool
from helpers import app_name, connector, eventually

LOGGER = "django_lido.pool"


def reports(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
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


def test_a_long_hold_is_reported_once_with_the_thread_then_when_it_comes_back(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(max_size=2, leak_threshold=0.3)
    held: list[Any] = []
    taken, done = threading.Event(), threading.Event()

    def take() -> None:
        held.append(pool.getconn())
        taken.set()
        done.wait(10)  # alive while the hold is reported; ends before the return

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        t = threading.Thread(target=take, name="the-holder")
        t.start()
        taken.wait(5)
        # A short hold by another thread is not reported.
        pool.putconn(pool.getconn())
        eventually(lambda: reports(caplog, "has been held"), "the long hold is reported", 5)
        time.sleep(1.0)  # three more thresholds: no second report of the same hold
        (report,) = reports(caplog, "has been held")
        assert "by thread 'the-holder'" in report
        assert "leak_threshold=0.3 s" in report
        assert not reports(caplog, "came back")
        done.set()
        t.join()

        pool.putconn(held.pop())
        (back,) = reports(caplog, "came back")
        assert "taken by a thread that has ended" in back
        assert len(reports(caplog, "has been held")) == 1


def test_each_hold_is_reported_and_a_new_hold_again(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(max_size=1, leak_threshold=0.2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for n in (1, 2):
            conn = pool.getconn()
            eventually(
                lambda n=n: len(reports(caplog, "has been held")) == n,
                f"hold {n} is reported",
                5,
            )
            assert "by thread 'MainThread'" in reports(caplog, "has been held")[-1]
            pool.putconn(conn)
            assert len(reports(caplog, "came back")) == n


def test_no_report_when_off_or_for_short_holds(
    make_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    off = make_pool(max_size=1, leak_threshold=None)
    zero = make_pool(max_size=1, leak_threshold=0)
    short = make_pool(max_size=1, leak_threshold=5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        conns = [(p, p.getconn()) for p in (off, zero, short)]
        time.sleep(0.5)
        for p, conn in conns:
            p.putconn(conn)
    assert not reports(caplog, "has been held") and not reports(caplog, "came back")
