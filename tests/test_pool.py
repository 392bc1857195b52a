"""The Python pool against a real PostgreSQL: checkout, return, limits, options, stats."""

from __future__ import annotations

import gc
import logging
import threading
import time

import psycopg
import pytest
from django_lido import Pool, PoolClosed, PoolTimeout, TooManyWaiters
from helpers import app_name, backend_pid, connector, eventually


@pytest.fixture
def make_pool(pg):
    pools: list[Pool] = []

    def make(**options):
        app = options.pop("app", None) or app_name()
        pool = Pool(connector(pg, app), name=options.pop("name", app), **options)
        pool.app = app
        pools.append(pool)
        return pool

    yield make
    for p in pools:
        p.close()


def test_checkout_reuses_the_same_physical_connection(make_pool):
    pool = make_pool(max_size=2)
    conn = pool.getconn()
    pid = backend_pid(conn)
    conn.execute("select 1")
    pool.putconn(conn)
    again = pool.getconn()
    assert backend_pid(again) == pid
    pool.putconn(again)
    s = pool.stats()
    assert (s["connections_num"], s["requests_num"], s["pool_size"], s["idle"]) == (1, 2, 1, 1)


def test_open_transaction_is_rolled_back_on_return(pg, make_pool):
    pg.execute("create table if not exists rollback_t (v int)")
    pool = make_pool(max_size=1)
    conn = pool.getconn()
    conn.execute("insert into rollback_t values (42)")
    pool.putconn(conn)  # never committed
    conn = pool.getconn()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute("select count(*) from rollback_t where v = 42").fetchone() == (0,)
    pool.putconn(conn)
    assert pool.stats()["returns_rolled_back"] == 2


def test_failed_transaction_is_rolled_back_and_reused(make_pool):
    pool = make_pool(max_size=1)
    conn = pool.getconn()
    pid = backend_pid(conn)
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("select 1/0")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    pool.putconn(conn)
    conn = pool.getconn()
    assert backend_pid(conn) == pid
    assert conn.execute("select 2").fetchone() == (2,)
    pool.putconn(conn)


def test_connection_context_commits_or_rolls_back(pg, make_pool):
    pg.execute("create table if not exists ctx_t (v int)")
    pool = make_pool(max_size=1)
    with pool.connection() as conn:
        conn.execute("insert into ctx_t values (1)")
    with pytest.raises(RuntimeError), pool.connection() as conn:
        conn.execute("insert into ctx_t values (2)")
        raise RuntimeError("boom")
    assert pg.execute("select v from ctx_t order by v") == [(1,)]
    assert pool.stats()["in_use"] == 0


def test_session_state_reset_hook_and_its_failure(make_pool):
    calls = []

    def reset(conn):
        calls.append(backend_pid(conn))
        conn.execute("reset all")
        if len(calls) == 2:
            raise RuntimeError("cannot reset")

    pool = make_pool(max_size=1, reset=reset)
    conn = pool.getconn()
    pid = backend_pid(conn)
    conn.execute("set search_path to pg_catalog")
    conn.commit()
    pool.putconn(conn)
    conn = pool.getconn()
    assert conn.execute("show search_path").fetchone() == ('"$user", public',)
    pool.putconn(conn)  # reset raises: closed, never reused
    conn = pool.getconn()
    assert backend_pid(conn) != pid
    pool.putconn(conn)
    assert pool.stats()["returns_bad"] == 1


def test_connection_closed_by_holder_is_not_reused(make_pool):
    pool = make_pool(max_size=1)
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    conn2 = pool.getconn()
    assert not conn2.closed
    assert conn2 is not conn
    pool.putconn(conn2)


def test_returning_twice_or_a_stranger_is_an_error(pg, make_pool):
    pool = make_pool(max_size=1)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(ValueError, match="not checked out from it"):
        pool.putconn(conn)
    stranger = psycopg.connect(pg.conninfo())
    with pytest.raises(ValueError):
        pool.putconn(stranger)
    stranger.close()


def test_max_size_is_a_hard_cap_on_server_connections(pg, make_pool):
    pool = make_pool(max_size=3, timeout=10)
    peak = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    def work():
        try:
            while not stop.is_set():
                with pool.connection() as conn:
                    conn.execute("select pg_sleep(0.001)")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for _ in range(40):
        peak = max(peak, pg.backend_count(pool.app))
        threading.Event().wait(0.02)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert 1 <= peak <= 3
    assert pool.stats()["connections_num"] <= 3


def test_timeout_message_says_why(make_pool):
    pool = make_pool(max_size=1, name="tiny")
    held = pool.getconn()
    with pytest.raises(PoolTimeout) as e:
        pool.getconn(timeout=0.2)
    msg = str(e.value)
    assert "pool 'tiny'" in msg and "0.20 s" in msg and "size 1/1, in use 1" in msg
    pool.putconn(held)
    assert pool.stats()["requests_timeouts"] == 1


def test_max_waiting_rejects_at_once(make_pool):
    pool = make_pool(max_size=1, max_waiting=1)
    held = pool.getconn()
    waiting = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=10)))
    waiting.start()
    eventually(lambda: pool.stats()["requests_waiting"] == 1, "a waiter queued")
    with pytest.raises(TooManyWaiters):
        pool.getconn(timeout=10)
    pool.putconn(held)
    waiting.join()


def test_waiters_are_served_first_come_first_served(make_pool):
    pool = make_pool(max_size=1, timeout=30)
    held = pool.getconn()
    order: list[int] = []

    def wait_then_record(i):
        conn = pool.getconn()
        order.append(i)
        pool.putconn(conn)

    threads = []
    for i in range(6):
        t = threading.Thread(target=wait_then_record, args=(i,))
        t.start()
        threads.append(t)
        eventually(lambda i=i: pool.stats()["requests_waiting"] == i + 1, "waiter queued")
    pool.putconn(held)
    for t in threads:
        t.join()
    assert order == list(range(6))


def test_within_its_turn_a_thread_keeps_reusing_then_hands_over_and_queues(make_pool):
    # A turn of 1 s (the longest allowed) leaves the first steps ample time.
    pool = make_pool(max_size=1, turn_length=1.0, timeout=30)
    conn = pool.getconn()  # the main thread's turn begins
    got: list[object] = []

    def waiter():
        c = pool.getconn()
        got.append(c)
        pool.putconn(c)

    t = threading.Thread(target=waiter)
    t.start()
    eventually(lambda: pool.stats()["requests_waiting"] == 1, "waiter queued")
    # Within its turn the holder returns and checks out again ahead of the waiter, which
    # is told that a connection went idle but finds none, and keeps waiting.
    for _ in range(3):
        pool.putconn(conn)
        conn = pool.getconn()
    assert pool.stats()["requests_waiting"] == 1 and not got
    # Once the turn is over, a return goes straight to the waiter, and the holder's next
    # checkout queues behind it rather than taking the connection back.
    time.sleep(1.05)
    pool.putconn(conn)
    conn = pool.getconn(timeout=30)
    t.join()
    assert len(got) == 1
    pool.putconn(conn)


def test_a_connection_returned_within_a_turn_reaches_the_waiter(make_pool):
    pool = make_pool(max_size=1, turn_length=1.0, timeout=30)
    conn = pool.getconn()
    served = threading.Event()

    def waiter():
        pool.putconn(pool.getconn())
        served.set()

    t = threading.Thread(target=waiter)
    t.start()
    eventually(lambda: pool.stats()["requests_waiting"] == 1, "waiter queued")
    pool.putconn(conn)  # within the turn: idle, and the waiter is told; nobody takes it back
    t.join(20)
    assert served.is_set()
    assert pool.stats()["requests_timeouts"] == 0


def test_waiting_thread_does_not_hold_the_gil(make_pool):
    pool = make_pool(max_size=1)
    held = pool.getconn()
    done = threading.Event()

    def waiter():
        pool.putconn(pool.getconn(timeout=60))
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    eventually(lambda: pool.stats()["requests_waiting"] == 1, "waiter queued")
    # Pure Python: it can run only while the waiter has released the GIL. A waiter holding
    # it would let this loop run only after its own 60 s timeout, no longer waiting.
    total = 0
    for i in range(200_000):
        total += i
    assert pool.stats()["requests_waiting"] == 1
    assert not done.is_set()
    pool.putconn(held)
    t.join()
    assert done.is_set()


def test_connect_error_is_the_drivers_and_frees_the_slot(pg):
    # A permanent failure (the server answers: no such database) is raised at once.
    # Transient ones (the server down) are retried: see test_pool_outage.py.
    conninfo = pg.conninfo(dbname="lido_no_such_database")
    bad = Pool(lambda: psycopg.connect(conninfo), max_size=1, name="bad")
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        bad.getconn(timeout=5)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        bad.getconn(timeout=5)  # the slot came back: a second attempt, not a timeout
    s = bad.stats()
    assert (s["pool_size"], s["connections_errors"]) == (0, 2)
    bad.close()


def test_failed_connect_hands_the_slot_to_a_waiter_who_tries_itself(pg):
    attempts = []
    gate = threading.Event()
    conninfo = pg.conninfo(application_name=app_name())

    def connect():
        attempts.append(threading.current_thread().name)
        if len(attempts) == 1:
            gate.wait(10)
            raise psycopg.OperationalError("first connect fails")
        return psycopg.connect(conninfo)

    pool = Pool(connect, max_size=1, name="handover")
    results = {}

    def take(label):
        try:
            conn = pool.getconn(timeout=20)
            results[label] = "ok"
            pool.putconn(conn)
        except psycopg.OperationalError as e:
            results[label] = str(e)

    first = threading.Thread(target=take, args=("first",), name="first")
    first.start()
    eventually(lambda: len(attempts) == 1, "first connect started")
    second = threading.Thread(target=take, args=("second",), name="second")
    second.start()
    eventually(lambda: pool.stats()["requests_waiting"] == 1, "second waits")
    gate.set()
    first.join()
    second.join()
    assert results == {"first": "first connect fails", "second": "ok"}
    assert attempts == ["first", "second"]
    pool.close()


def test_slow_connect_does_not_block_other_checkouts(pg):
    conninfo = pg.conninfo(application_name=app_name())
    gate = threading.Event()
    slow_started = threading.Event()
    opened = []

    def connect():
        opened.append(1)
        if len(opened) == 2:
            slow_started.set()
            gate.wait(20)
        return psycopg.connect(conninfo)

    pool = Pool(connect, max_size=2, name="slow")
    fast = pool.getconn()
    pool.putconn(fast)
    held = pool.getconn()  # the only idle one
    slow = threading.Thread(target=lambda: pool.putconn(pool.getconn()))
    slow.start()
    assert slow_started.wait(10), "the second connect never started"
    # While the second connect hangs, returns and checkouts of the first go on.
    for _ in range(100):
        pool.putconn(held)
        held = pool.getconn(timeout=1)
    pool.putconn(held)
    gate.set()
    slow.join()
    assert len(opened) == 2
    pool.close()


def test_leaked_connection_frees_its_slot_and_is_logged(make_pool, caplog):
    pool = make_pool(max_size=1)

    def forget():
        conn = pool.getconn()
        conn.execute("select 1")
        # returns without putconn: the connection goes with this frame

    with caplog.at_level(logging.WARNING, logger="django_lido.pool"):
        t = threading.Thread(target=forget)
        t.start()
        t.join()
        gc.collect()
    assert pool.stats()["connections_leaked"] == 1
    assert any("without being returned" in r.getMessage() for r in caplog.records)
    conn = pool.getconn(timeout=2)  # the slot is free again
    pool.putconn(conn)


def test_pool_keeps_no_strong_reference_to_leased_connections(make_pool):
    import weakref

    pool = make_pool(max_size=1)
    conn = pool.getconn()
    ref = weakref.ref(conn)
    del conn
    gc.collect()
    assert ref() is None


def test_round_trip_check_only_after_idle_window(make_pool):
    # Two pools, so that neither half depends on how long anything takes: a window no test
    # outlasts, and a zero one that every idle spell exceeds.
    checks = []
    pool = make_pool(max_size=1, check_after_idle=3600, check=lambda c: checks.append(1))
    pool.putconn(pool.getconn())
    pool.putconn(pool.getconn())
    assert checks == []
    pool = make_pool(max_size=1, check_after_idle=0, check=lambda c: checks.append(1))
    pool.putconn(pool.getconn())  # a new connection is not checked
    pool.putconn(pool.getconn())
    assert checks == [1]


def test_failed_round_trip_check_replaces_the_connection(make_pool):
    def check(conn):
        raise psycopg.OperationalError("pretend the network is gone")

    pool = make_pool(max_size=1, check_after_idle=0, check=check)
    conn = pool.getconn()
    pid = backend_pid(conn)
    pool.putconn(conn)
    conn = pool.getconn()  # check fails: closed and replaced by a new connection
    assert backend_pid(conn) != pid
    pool.putconn(conn)
    assert pool.stats()["closes_check_failed"] == 1


def test_max_uses_and_max_lifetime_recycle(make_pool):
    pool = make_pool(max_size=1, max_uses=2)
    pids = []
    for _ in range(4):
        conn = pool.getconn()
        pids.append(backend_pid(conn))
        pool.putconn(conn)
    assert pids[0] == pids[1] != pids[2] == pids[3]
    pool = make_pool(max_size=1, max_lifetime=0.1, lifetime_jitter=0)
    conn = pool.getconn()
    pid = backend_pid(conn)
    pool.putconn(conn)
    threading.Event().wait(0.15)
    conn = pool.getconn()
    assert backend_pid(conn) != pid
    pool.putconn(conn)
    assert pool.stats()["closes_lifetime"] == 1


def test_min_size_is_kept_and_max_idle_closes_the_rest(pg, make_pool):
    pool = make_pool(min_size=2, max_size=4, max_idle=0.3)
    eventually(lambda: pg.backend_count(pool.app) == 2, "min_size opened in background")
    conns = [pool.getconn() for _ in range(4)]
    assert pg.backend_count(pool.app) == 4
    for c in conns:
        pool.putconn(c)
    eventually(lambda: pg.backend_count(pool.app) == 2, "idle above min_size closed")
    assert pool.stats()["closes_idle"] == 2


def test_resize_grows_for_waiters_and_shrinks_idle(pg, make_pool):
    pool = make_pool(max_size=1)
    held = pool.getconn()
    got = []
    t = threading.Thread(target=lambda: got.append(pool.getconn(timeout=10)))
    t.start()
    eventually(lambda: pool.stats()["requests_waiting"] == 1, "waiter queued")
    pool.resize(0, 2)
    t.join()
    assert len(got) == 1
    pool.putconn(got[0])
    pool.putconn(held)
    pool.resize(0, 1)
    eventually(lambda: pg.backend_count(pool.app) == 1, "shrunk")
    with pytest.raises(ValueError, match="min_size"):
        pool.resize(3, 2)


def test_close_wakes_waiters_and_closes_everything(pg, make_pool):
    pool = make_pool(max_size=1)
    held = pool.getconn()
    errors = []

    def waiter():
        try:
            pool.getconn(timeout=30)
        except PoolClosed as e:
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    eventually(lambda: pool.stats()["requests_waiting"] == 1, "waiter queued")
    pool.close()
    t.join()
    assert len(errors) == 1
    assert pg.backend_count(pool.app) == 1  # still in use
    pool.putconn(held)  # closed on return
    eventually(lambda: pg.backend_count(pool.app) == 0, "closed on return")
    with pytest.raises(PoolClosed):
        pool.getconn()


@pytest.mark.parametrize(
    ("options", "exc", "text"),
    [
        (
            {"min_size": 5, "max_size": 2},
            ValueError,
            "min_size=5: an integer from 0 to max_size (2)",
        ),
        ({"timeout": -1}, ValueError, "timeout=-1"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"max_size": True}, TypeError, "max_size=True"),
        ({"max_size": 0}, ValueError, "max_size=0: an integer from 1 to 10000"),
        ({"max_idle": "10"}, TypeError, "max_idle='10'"),
        ({"lifetime_jitter": 0.9}, ValueError, "lifetime_jitter"),
        ({"max_sise": 3}, TypeError, "unknown pool option max_sise; allowed: min_size"),
        ({"turn_length": 2}, ValueError, "turn_length=2: a number of seconds from 0 to 1"),
        ({"turn_length": -0.5}, ValueError, "turn_length=-0.5"),
        ({"turn_length": None}, TypeError, "turn_length=None"),
    ],
)
def test_bad_options_name_the_option_and_what_is_allowed(pg, options, exc, text):
    with pytest.raises(exc) as e:
        Pool(connector(pg, "x"), **options)
    assert text in str(e.value)


def test_stats_names(make_pool):
    pool = make_pool(max_size=2)
    pool.putconn(pool.getconn())
    s = pool.stats()
    for key in (
        "pool_min",
        "pool_max",
        "pool_size",
        "pool_available",
        "requests_waiting",
        "requests_num",
        "requests_wait_ms",
        "usage_ms",
        "connections_num",
        "connections_ms",
        "connections_errors",
        "connections_lost",
        "returns_bad",
        "idle",
        "in_use",
        "closes_lifetime",
        "acquire_wait",
        "usage",
        "connection_open",
    ):
        assert key in s, key
    assert s["connection_open"]["count"] == 1
    assert s["usage"]["count"] == 1
    assert s["acquire_wait"]["count"] == 1


def test_connection_type_without_weakrefs_is_refused_clearly():
    import sqlite3

    pool = Pool(lambda: sqlite3.connect(":memory:"), max_size=1, name="lite")
    with pytest.raises(TypeError, match=r"sqlite3\.Connection cannot be weakly referenced"):
        pool.getconn()
    assert pool.stats()["pool_size"] == 0  # the slot was given back
    pool.close()


def test_opening_a_connection_is_not_counted_as_waiting(make_pool):
    # The first checkout opens the connection without queueing: that time is
    # connection_open, not acquire wait (which is zero for checkouts that did not queue).
    pool = make_pool(max_size=1)
    pool.putconn(pool.getconn())
    s = pool.stats()
    assert s["connection_open"]["count"] == 1
    assert s["connection_open"]["max_ms"] > 0
    assert s["requests_queued"] == 0
    assert s["requests_wait_ms"] == 0
    assert s["acquire_wait"]["max_ms"] == 0


def test_maintenance_counts_one_error_per_failed_attempt(pg):
    attempts = []

    def refuse():
        attempts.append(1)
        raise psycopg.OperationalError("refused")

    pool = Pool(refuse, min_size=3, max_size=3, name="refusing")
    try:
        eventually(lambda: pool.stats()["connections_errors"] >= 1, "a failed attempt")
    finally:
        pool.close()  # stops maintenance: the counts below no longer move
    # Each round tries one connection and gives the other two slots back untried.
    assert pool.stats()["connections_errors"] == len(attempts) >= 1
