"""Issue 15, point 6: the pooled connections of a Django thread that ends without
``close_old_connections()`` go back to the pool at once, without waiting for a garbage
collection, whatever reference cycles its wrappers are in; against a real PostgreSQL.

The garbage collector is off in these tests: without the thread-end reclaim, the slot
would never come free.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django_helpers import configure, database, global_alias, handler, unique
from helpers import eventually


@pytest.fixture(scope="module")
def dj(pg: Any) -> Any:
    configure(pg, default=database(pg, pool={"max_size": 4}))
    return pg


@pytest.fixture(autouse=True)
def not_a_test_run() -> Iterator[None]:
    """Another module's test database marks the process as in a test run; not these tests."""
    from django_lido.backends import pool_options

    was, pool_options.test_run = pool_options.test_run, False
    try:
        yield
    finally:
        pool_options.test_run = was


@pytest.fixture(autouse=True)
def no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def in_a_thread_that_ends(body: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, name=unique("lido-ends"))
    t.start()
    t.join()
    assert not errors, errors


def test_a_thread_that_ends_holding_a_connection_gives_it_back(dj: Any) -> None:
    h = handler(default=database(dj, pool={"max_size": 1, "timeout": 5}))
    pools = []

    def take() -> None:
        w = h["default"]
        with w.cursor() as cur:
            cur.execute("SELECT 1")
        pools.append(w.pool)

    in_a_thread_that_ends(take)
    pool = pools[0]
    # Given back before join() returned: no wait at all.
    assert pool.stats()["in_use"] == 0
    s = pool.stats()
    assert (s["connections_leaked"], s["idle"]) == (0, 1)
    pool.close()


def test_also_when_the_threads_objects_keep_the_wrapper_in_a_cycle(dj: Any) -> None:
    table = unique("lido_reclaim")
    dj.execute(f"CREATE TABLE {table} (n int)")
    h = handler(default=database(dj, pool={"max_size": 1, "timeout": 5}))
    pools = []
    kept: list[Any] = []

    class Request:
        pass

    def take() -> None:
        w = h["default"]
        w.set_autocommit(False)
        with w.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        r = Request()
        r.me = r  # type: ignore[attr-defined]
        r.wrapper = w  # type: ignore[attr-defined]
        kept.append(weakref.ref(r))
        pools.append(w.pool)

    in_a_thread_that_ends(take)
    pool = pools[0]
    eventually(lambda: pool.stats()["in_use"] == 0, "the dead thread's slot is free", 5)
    assert kept[0]() is not None, "the cycle is still there: no collection happened"
    # Its transaction was rolled back; the next holder gets the same connection, clean.
    w = h["default"]
    with w.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone() == (0,)
    assert pool.stats()["returns_rolled_back"] == 1
    w.close()
    pool.close()


def test_djangos_own_per_thread_connections_are_given_back(dj: Any) -> None:
    from django.db import connections

    alias = unique("reclaim")
    global_alias(alias, database(dj, pool={"max_size": 2, "timeout": 5}))
    pools = []

    def take() -> None:
        w = connections[alias]
        with w.cursor() as cur:
            cur.execute("SELECT 1")
        pools.append(w.pool)

    for _ in range(3):  # more threads than slots: each gave its connection back
        in_a_thread_that_ends(take)
    pool = pools[0]
    s = pool.stats()
    assert (s["in_use"], s["connections_num"], s["connections_leaked"]) == (0, 1, 0)
    # The main thread's wrapper is not touched by other threads' ends.
    main = connections[alias]
    main.ensure_connection()
    in_a_thread_that_ends(take)
    assert main.connection is not None and pool.stats()["in_use"] == 1
    main.close()
    pool.close()


def test_the_sync_thread_of_an_asgi_request_gives_its_connection_back(dj: Any) -> None:
    from asgiref.sync import ThreadSensitiveContext, sync_to_async
    from django.db import connections

    alias = unique("asgi")
    global_alias(alias, database(dj, pool={"max_size": 1, "timeout": 5}, CONN_MAX_AGE=None))
    pools = []
    threads = []

    def view() -> None:
        # A persistent connection (CONN_MAX_AGE=None): Django keeps it after the request.
        w = connections[alias]
        with w.cursor() as cur:
            cur.execute("SELECT 1")
        pools.append(w.pool)
        threads.append(threading.current_thread())

    async def request() -> None:
        async with ThreadSensitiveContext():
            await sync_to_async(view, thread_sensitive=True)()

    for _ in range(2):  # the second request waits on max_size 1 unless the first gave back
        asyncio.run(request())
    assert threads[0] is not threads[1]
    pool = pools[0]
    eventually(lambda: not threads[1].is_alive(), "the request's sync thread ended", 5)
    eventually(lambda: pool.stats()["in_use"] == 0, "its slot is free", 5)
    assert pool.stats()["connections_leaked"] == 0
    pool.close()


def test_an_asgi_request_gives_its_connection_back_at_its_end_whatever_conn_max_age(
    dj: Any,
) -> None:
    from asgiref.sync import ThreadSensitiveContext, sync_to_async
    from django.db import close_old_connections, connections

    alias = unique("asgi_end")
    global_alias(alias, database(dj, pool={"max_size": 1, "timeout": 5}, CONN_MAX_AGE=60))
    seen: list[Any] = []

    def view() -> None:
        w = connections[alias]
        with w.cursor() as cur:
            cur.execute("SELECT 1")
        seen.append((w.pool, w.pool.stats()["in_use"], threading.current_thread()))

    def request_finished() -> None:
        # Django's handler runs close_old_connections in the request's own thread.
        close_old_connections()
        w = connections[alias]
        seen.append((w.connection, w.pool.stats()["in_use"], threading.current_thread()))

    async def request() -> None:
        async with ThreadSensitiveContext():
            await sync_to_async(view)()
            await sync_to_async(request_finished)()

    asyncio.run(request())
    pool, held, view_thread = seen[0]
    conn, in_use, end_thread = seen[1]
    assert held == 1 and end_thread is view_thread
    # Back at the request's end, in the request's thread, before that thread ended.
    assert conn is None and in_use == 0
    pool.close()


def test_a_thread_outside_asgi_keeps_its_connection_for_conn_max_age(dj: Any) -> None:
    from django.db import close_old_connections, connections

    alias = unique("wsgi_keep")
    global_alias(alias, database(dj, pool={"max_size": 2, "timeout": 5}, CONN_MAX_AGE=60))
    seen: list[Any] = []

    def two_requests() -> None:
        w = connections[alias]
        for _ in range(2):
            close_old_connections()  # request_started
            with w.cursor() as cur:
                cur.execute("SELECT 1")
            close_old_connections()  # request_finished
            seen.append(w.connection)
        seen.append(w.pool.stats()["in_use"])
        w.close()
        seen.append(w.pool)

    in_a_thread_that_ends(two_requests)
    first, second, in_use, pool = seen
    assert first is not None and second is first and in_use == 1
    assert pool.stats()["in_use"] == 0
    pool.close()


def test_a_wrapper_shared_with_other_threads_is_left_alone(dj: Any) -> None:
    h = handler(default=database(dj, pool={"max_size": 1, "timeout": 5}))
    made: list[Any] = []

    def make_and_share() -> None:
        w = h["default"]
        w.inc_thread_sharing()
        w.ensure_connection()
        made.append(w)

    in_a_thread_that_ends(make_and_share)
    w = made[0]
    assert w.connection is not None and w.pool.stats()["in_use"] == 1
    pool = w.pool
    w.close()
    w.dec_thread_sharing()
    assert pool.stats()["in_use"] == 0
    pool.close()


def test_long_holds_are_not_reported_by_default_with_persistent_connections(dj: Any) -> None:
    """A thread keeps its connection between requests when CONN_MAX_AGE is not 0."""
    cases = [
        ({}, 0, 60.0),
        ({}, 300, None),
        ({}, None, None),
        ({"leak_threshold": 900}, 300, 900.0),
    ]
    for pool_options, max_age, expected in cases:
        w = handler(default=database(dj, pool=pool_options, CONN_MAX_AGE=max_age))["default"]
        w.ensure_connection()
        assert w.pool.stats()["in_use"] == 1
        assert w._lido_settings().options["leak_threshold"] == expected, (pool_options, max_age)
        pool = w.pool
        w.close()
        pool.close()


def test_a_fork_child_leaves_the_connections_of_the_parents_threads_alone(dj: Any) -> None:
    """In a fork child, CPython frees the other threads' locals before the pools' fork
    hooks run: nothing may be given back then (the connections are the parent's)."""
    h = handler(default=database(dj, pool={"max_size": 2, "timeout": 5}))
    taken, done = threading.Event(), threading.Event()
    seen: list[Any] = []

    def hold() -> None:
        w = h["default"]
        w.ensure_connection()
        seen.append(w.pool)
        taken.set()
        done.wait(20)
        with w.cursor() as cur:  # still this thread's, after the fork
            cur.execute("SELECT 1")
            seen.append(cur.fetchone())

    t = threading.Thread(target=hold)
    t.start()
    assert taken.wait(10)
    pool = seen[0]
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            s = pool.stats()
            code = 0 if (s["in_use"], s["pool_size"]) == (0, 0) else 2
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
    done.set()
    t.join()
    assert seen[1] == (1,)
    s = pool.stats()
    assert (s["in_use"], s["connections_leaked"], s["connections_num"]) == (0, 0, 1)
    pool.close()


def test_long_holds_are_not_reported_by_default_in_a_test_run(dj: Any) -> None:
    """Django's TestCase keeps its connections from the start of a run to its end."""
    from django_lido.backends import pool_options

    alias = unique("testrun")
    w = global_alias(alias, database(dj, pool={"max_size": 2}, TEST={"NAME": unique("lido_tr")}))
    assert w._lido_settings().options["leak_threshold"] == 60.0
    old_name = w.settings_dict["NAME"]
    test_name = w.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        assert pool_options.test_run
        assert w._lido_settings().options["leak_threshold"] is None
        assert w.pool.name.endswith(test_name)
    finally:
        w.close()
        w.creation.destroy_test_db(old_name, verbosity=0)


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_system_checks_explain_what_cannot_work_under_asgi(
    dj: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.test import override_settings
    from django_lido.backends.checks import check_pool_settings

    databases = {
        "default": database(dj, pool={"max_size": 2}),
        "aged": database(dj, pool={"max_size": 2}, CONN_MAX_AGE=60),
        "kept": database(dj, pool={"max_size": 2}, CONN_MAX_AGE=None),
        "unpooled": database(dj, pool=False, CONN_MAX_AGE=60),
    }
    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
    for name in ("uvicorn", "daphne", "hypercorn", "granian"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    def found() -> list[tuple[str, str]]:
        return [(m.id, m.msg) for m in check_pool_settings() if m.id in ASGI_IDS]

    with override_settings(DATABASES=databases):
        assert found() == []  # WSGI: CONN_MAX_AGE keeps its meaning, nothing to say
        with override_settings(ASGI_APPLICATION="proj.asgi.application"):
            w5 = found()
        assert [(i, m.split("]")[0]) for i, m in w5] == [
            ("django_lido.W005", "DATABASES['aged'"),
            ("django_lido.W005", "DATABASES['kept'"),
        ]
        assert "is 60 under ASGI (ASGI_APPLICATION is set)" in w5[0][1]
        monkeypatch.setitem(sys.modules, "uvicorn", types.ModuleType("uvicorn"))
        monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        ids = [i for i, m in found()]
        assert ids == ["django_lido.W005"] * 2 + ["django_lido.W006"]
        assert "(uvicorn is loaded)" in found()[-1][1]


ASGI_IDS = {"django_lido.W005", "django_lido.W006"}


def test_async_unsafe_orm_calls_on_the_event_loop_strand_their_connection(
    dj: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What W006 says: with DJANGO_ALLOW_ASYNC_UNSAFE, a connection taken on the event
    loop's thread is not given back at the request's end (close_old_connections runs in the
    request's own thread); only when its wrapper is freed."""
    from asgiref.sync import ThreadSensitiveContext, sync_to_async
    from django.db import close_old_connections, connections

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    alias = unique("unsafe")
    global_alias(alias, database(dj, pool={"max_size": 2, "timeout": 5}, CONN_MAX_AGE=0))
    pools: list[Any] = []

    async def view() -> None:
        w = connections[alias]  # on the loop's thread, in this task's context
        with w.cursor() as cur:
            cur.execute("SELECT 1")
        pools.append(w.pool)

    async def request() -> None:
        async with ThreadSensitiveContext():
            await asyncio.create_task(view())  # Django runs the view in a task
            await sync_to_async(close_old_connections)()  # request_finished

    asyncio.run(request())  # gc is off (no_gc)
    pool = pools[0]
    assert pool.stats()["in_use"] == 1
    gc.collect()
    eventually(lambda: pool.stats()["in_use"] == 0, "reclaimed once freed", 5)
    assert pool.stats()["connections_leaked"] == 1
    pool.close()
