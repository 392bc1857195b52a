"""A network that dies silently (issue 15, point 2): packets dropped, no RST, no ICMP. The
checkout raises within ``timeout`` + 10% whether it has to connect or to check idle
connections, through ``Pool`` and through Django. The network is a namespace, a veth pair
and a forwarder to a throwaway PostgreSQL made by the test (harness/netns.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from django.db.utils import OperationalError
from django_helpers import configure, database, handler
from django_lido import Pool, PoolTimeout

from harness import netns

pytestmark = pytest.mark.fault

TIMEOUT = 2.0
BOUND = TIMEOUT * 1.1  # what the issue allows


@pytest.fixture(scope="module")
def blackhole(pg_throwaway: Any) -> Iterator[netns.BlackHole]:
    why = netns.unavailable()
    if why:
        pytest.skip(f"no network namespace for a black hole: {why}")
    with netns.BlackHole(f"{pg_throwaway.host}/.s.PGSQL.{pg_throwaway.port}") as bh:
        yield bh


@pytest.fixture
def cut(blackhole: netns.BlackHole) -> Iterator[netns.BlackHole]:
    """The network as it is until the test calls ``drop()``; restored afterwards, so that
    nothing stays blocked."""
    try:
        yield blackhole
    finally:
        blackhole.restore()


def _conninfo(bh: netns.BlackHole, pg: Any) -> str:
    return f"host={bh.host} port={bh.port} user={pg.user} dbname=postgres"


def _took(call: Callable[[], object], expect: type[BaseException]) -> tuple[float, BaseException]:
    """Runs ``call`` in a thread (a watchdog: the test fails rather than hangs), expecting
    it to raise ``expect``; returns the time it took and the exception."""
    box: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            call()
        except BaseException as exc:
            box["exc"] = exc
        box["took"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(TIMEOUT * 10)
    assert not t.is_alive(), "the checkout hung on the dead network"
    exc = box.get("exc")
    assert isinstance(exc, expect), f"expected {expect.__name__}, got {exc!r}"
    return box["took"], exc


def test_a_connect_into_a_black_hole_ends_within_the_timeout(cut, pg_throwaway):
    pool = Pool(_conninfo(cut, pg_throwaway), max_size=4, timeout=TIMEOUT, name="bh-connect")
    cut.drop()
    took, exc = _took(pool.getconn, PoolTimeout)
    assert took <= BOUND, f"{took:.2f} s"
    assert isinstance(exc.__cause__, psycopg.OperationalError)
    cut.restore()
    pool.close()


def test_idle_connections_behind_a_black_hole_are_not_checked_past_the_timeout(cut, pg_throwaway):
    pool = Pool(
        _conninfo(cut, pg_throwaway),
        max_size=4,
        timeout=TIMEOUT,
        check_after_idle=0,  # a round trip at every checkout
        name="bh-check",
    )
    held = [pool.getconn() for _ in range(4)]
    for conn in held:
        pool.putconn(conn)
    cut.drop()
    took, _ = _took(pool.getconn, PoolTimeout)
    assert took <= BOUND, f"{took:.2f} s"
    cut.restore()
    # The network is back: the pool serves again (the cut-off connection was replaced).
    with pool.connection(timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pool.close()


def test_djangos_connect_into_a_black_hole_ends_within_the_timeout(cut, pg_throwaway):
    configure(pg_throwaway, default=database(pg_throwaway))
    entry = database(pg_throwaway, pool={"max_size": 2, "timeout": TIMEOUT})
    entry.update(HOST=cut.host, PORT=str(cut.port))
    h = handler(default=entry)
    w = h["default"]
    w.ensure_connection()  # the pool exists and has one idle connection
    w.close()
    cut.drop()
    other = w.copy()  # a second thread's wrapper: it must connect
    w.ensure_connection()  # the idle one (no check: idle under check_after_idle)
    took, exc = _took(other.ensure_connection, OperationalError)
    assert took <= BOUND, f"{took:.2f} s"
    assert isinstance(exc.__cause__, PoolTimeout)
    assert isinstance(exc.__cause__.__cause__, psycopg.OperationalError)
    cut.restore()
    w.close()
    w.close_pool()
