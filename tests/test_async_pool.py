"""AsyncPool against a real PostgreSQL: psycopg AsyncConnections, waits on the event loop,
cancellation at every awaited step, maintenance on the pool's loop, one loop per pool.

Each test runs its body with ``asyncio.run`` under a watchdog (``asyncio.wait_for``) that
fails a hang; waits on background work are bounded by ``eventually``."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from django_lido import AsyncPool, Pool, PoolClosed, PoolTimeout, TooManyWaiters
from helpers import app_name, connector, server_pids

WATCHDOG = 60.0


def run(body: Callable[[], Awaitable[Any]], watchdog: float = WATCHDOG) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(body(), watchdog)

    return asyncio.run(guarded())


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Waits on the loop for background work (the timeout only bounds a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


def make(pg: Any, **options: Any) -> AsyncPool:
    app = options.pop("app", None) or app_name("lido-aio")
    pool = AsyncPool(pg.conninfo(application_name=app), name=app, **options)
    pool.app = app  # type: ignore[attr-defined]
    return pool


async def pid(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def settled(pool: AsyncPool, pg: Any) -> None:
    """Nothing in use or waiting, and no more server connections than max_size (once the
    backends of closed connections have exited)."""
    s = pool.stats()
    assert s["in_use"] == 0, s
    assert s["requests_waiting"] == 0, s
    assert s["pool_size"] <= s["pool_max"], s
    app = pool.app  # type: ignore[attr-defined]
    await eventually(lambda: pg.backend_count(app) <= s["pool_max"], "within max_size")


def test_checkout_runs_queries_and_reuses_the_connection(pg):
    async def body():
        async with make(pg, max_size=2) as pool:
            async with pool.connection() as conn:
                assert isinstance(conn, psycopg.AsyncConnection)
                first = await pid(conn)
            async with pool.connection() as conn:
                assert await pid(conn) == first
            await settled(pool, pg)

    run(body)


def test_statistics_have_the_sync_pools_keys(pg):
    async def body():
        pool = make(pg)
        async with pool.connection():
            pass
        sync = Pool(connector(pg, app_name()))
        try:
            assert set(pool.stats()) == set(sync.stats())
        finally:
            sync.close()
        await pool.close()

    run(body)


def test_open_transaction_is_rolled_back_on_return_and_reset_is_awaited(pg):
    resets: list[int] = []

    async def reset(conn):
        await conn.execute("RESET ALL")
        await conn.commit()
        resets.append(1)

    async def body():
        pool = AsyncPool(pg.conninfo(application_name=app_name()), reset=reset, max_size=1)
        conn = await pool.getconn()
        await conn.execute("CREATE TEMP TABLE t (x int)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        await pool.putconn(conn)
        conn = await pool.getconn()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        await pool.putconn(conn)
        assert pool.stats()["returns_rolled_back"] == 1
        assert resets == [1, 1]
        await pool.close()

    run(body)


def test_connection_block_commits_or_rolls_back(pg):
    async def body():
        async with make(pg) as pool:
            async with pool.connection() as conn:
                await conn.execute("CREATE TABLE IF NOT EXISTS aio_commit (x int)")
                await conn.execute("DELETE FROM aio_commit")
                await conn.execute("INSERT INTO aio_commit VALUES (1)")
            with pytest.raises(ZeroDivisionError):
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO aio_commit VALUES (2)")
                    1 / 0  # noqa: B018
            async with pool.connection() as conn:
                cur = await conn.execute("SELECT x FROM aio_commit")
                assert await cur.fetchall() == [(1,)]

    run(body)


def test_callable_connect_configure_and_check_may_be_sync_or_async(pg):
    conninfo = pg.conninfo(application_name=app_name())
    seen: list[str] = []

    async def connect(timeout: float) -> psycopg.AsyncConnection[Any]:
        seen.append(f"connect {timeout > 0}")
        return await psycopg.AsyncConnection.connect(conninfo)

    def configure(conn):
        seen.append("configure")

    async def check(conn):
        seen.append("check")
        await conn.execute("SELECT 1")
        await conn.rollback()

    async def body():
        pool = AsyncPool(connect, configure=configure, check=check, check_after_idle=0)
        async with pool.connection():
            pass
        async with pool.connection():
            pass
        await pool.close()

    run(body)
    assert seen == ["connect True", "configure", "check"]


def test_timeout_while_the_loop_keeps_running(pg):
    async def body():
        pool = make(pg, max_size=1, timeout=5)
        held = await pool.getconn()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.create_task(ticker())
        # The waiter must give up by its own timeout: the watchdog is the bound.
        async with asyncio.timeout(3.0):
            with pytest.raises(PoolTimeout, match=r"no connection within 0\.30 s"):
                await pool.getconn(timeout=0.3)
        t.cancel()
        assert ticks > 5  # the loop ran while the checkout waited
        assert pool.stats()["requests_timeouts"] == 1
        await pool.putconn(held)
        await settled(pool, pg)
        await pool.close()

    run(body)


def test_max_waiting_rejects_and_close_wakes_waiters(pg):
    async def body():
        pool = make(pg, max_size=1, max_waiting=2, timeout=20)
        held = await pool.getconn()
        waiters = [asyncio.create_task(pool.getconn()) for _ in range(2)]
        await eventually(lambda: pool.stats()["requests_waiting"] == 2, "two waiting")
        with pytest.raises(TooManyWaiters):
            await pool.getconn()
        await pool.close()
        for w in waiters:
            with pytest.raises(PoolClosed):
                await w
        await pool.putconn(held)  # closed on its return
        assert pool.stats()["pool_size"] == 0
        with pytest.raises(PoolClosed):
            await pool.getconn()

    run(body)


def test_waiters_are_served_in_order(pg):
    async def body():
        pool = make(pg, max_size=1)
        held = await pool.getconn()
        order: list[int] = []

        async def take(i: int) -> None:
            conn = await pool.getconn()
            order.append(i)
            await asyncio.sleep(0.001)
            await pool.putconn(conn)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(take(i)))
            await eventually(lambda n=i + 1: pool.stats()["requests_waiting"] == n, "queued")
        await pool.putconn(held)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        await settled(pool, pg)
        await pool.close()

    run(body)


def test_a_grant_given_just_before_the_cancel_is_handed_on(pg):
    async def body():
        pool = make(pg, max_size=1)
        held = await pool.getconn()
        first = asyncio.create_task(pool.getconn())
        second = asyncio.create_task(pool.getconn())
        await eventually(lambda: pool.stats()["requests_waiting"] == 2, "two waiting")
        # The return hands the connection to the first waiter (its future is resolved);
        # it is cancelled before it runs again: the grant goes on to the second.
        await pool.putconn(held)
        first.cancel()
        conn = await second
        with pytest.raises(asyncio.CancelledError):
            await first
        await pool.putconn(conn)
        await settled(pool, pg)
        assert pool.stats()["pool_size"] == 1
        await pool.close()

    run(body)


def test_cancelled_at_each_awaited_step_gives_the_slot_back(pg):
    conninfo = pg.conninfo(application_name=app_name())
    gate = asyncio.Event()

    async def slow_connect() -> psycopg.AsyncConnection[Any]:
        await gate.wait()
        return await psycopg.AsyncConnection.connect(conninfo)

    async def slow_check(conn):
        await gate.wait()

    async def slow_reset(conn):
        await gate.wait()

    async def body():
        nonlocal gate
        gate = asyncio.Event()
        pool = AsyncPool(
            slow_connect, check=slow_check, reset=slow_reset, check_after_idle=0, max_size=1
        )
        # In the connect: it goes on, and its connection goes idle.
        t = asyncio.create_task(pool.getconn())
        await eventually(lambda: pool.stats()["opening"] == 1, "connecting")
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        assert pool.stats()["opening"] == 1
        gate.set()
        await eventually(lambda: pool.stats()["idle"] == 1, "opened for the pool")
        # In the reset of a return.
        conn = await pool.getconn()
        gate.clear()
        t = asyncio.create_task(pool.putconn(conn))
        await asyncio.sleep(0.05)
        assert not t.done()
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        s = pool.stats()
        assert (s["in_use"], s["pool_size"]) == (0, 0)  # closed: its reset was cut short
        # In the check of an idle connection.
        gate.set()
        conn = await pool.getconn()
        pool._io.reset = None  # return it without the slow reset
        await pool.putconn(conn)
        gate.clear()
        t = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.05)
        assert not t.done()
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        s = pool.stats()
        assert (s["in_use"], s["pool_size"]) == (0, 0)  # closed: its check was cut short
        gate.set()
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        await pool.close()

    run(body)


@pytest.mark.parametrize(("seed", "timeout"), [(1, 2.0), (2, 2.0), (3, 0.02)])
def test_cancelling_many_waiters_at_random_never_loses_or_leaks_a_slot(pg, seed, timeout):
    """Under load (SELECTs with short sleeps), tasks are cancelled at random moments:
    while queued, just after a grant, inside a query, while returning. At the end nothing
    is in use, the pool never exceeded max_size on the server, and no waiter waited past
    its timeout (asyncio.timeout around each checkout is the watchdog); with the short
    timeout, waiters also time out among the cancellations."""
    rng = random.Random(seed)
    max_size, tasks_n = 4, 300

    async def body():
        pool = make(pg, max_size=max_size, timeout=timeout)
        peak = 0
        outcomes: dict[str, int] = {}

        async def worker() -> None:
            async with asyncio.timeout(timeout + 1.0):  # past its own timeout: a failure
                try:
                    async with pool.connection() as conn:
                        await conn.execute("SELECT pg_sleep(%s)", (rng.random() * 0.01,))
                except PoolTimeout:
                    outcomes["timeout"] = outcomes.get("timeout", 0) + 1

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, pool.stats()["pool_size"])
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        running: list[asyncio.Task[None]] = []
        for _ in range(tasks_n):
            running.append(asyncio.create_task(worker()))
            if rng.random() < 0.5:
                await asyncio.sleep(rng.random() * 0.002)
            for t in rng.sample(running, k=min(len(running), 2)):
                if rng.random() < 0.3:
                    t.cancel()
        results = await asyncio.gather(*running, return_exceptions=True)
        watcher.cancel()
        unexpected = [r for r in results if isinstance(r, BaseException) and not _cancelled(r)]
        assert not unexpected, unexpected[:3]
        cancelled = sum(1 for r in results if _cancelled(r))
        assert 0 < cancelled < tasks_n
        if timeout < 0.1:
            assert outcomes.get("timeout", 0) > 0, outcomes
        await eventually(lambda: pool.stats()["in_use"] == 0, "all returned")
        await settled(pool, pg)
        assert peak <= max_size
        async with pool.connection() as conn:  # still serves
            await conn.execute("SELECT 1")
        await pool.close()

    run(body)


def _cancelled(r: object) -> bool:
    return isinstance(r, asyncio.CancelledError)


def test_a_wake_from_another_thread_resolves_the_future_on_the_loop(pg):
    async def body():
        pool = make(pg, max_size=1, timeout=10)
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn())
        await eventually(lambda: pool.stats()["requests_waiting"] == 1, "queued")
        # Growing the pool from another thread grants the waiter a permit there.
        t = threading.Thread(target=pool.resize, args=(0, 2))
        t.start()
        conn = await waiter
        t.join()
        await pool.putconn(conn)
        await pool.putconn(held)
        await settled(pool, pg)
        await pool.close()

    run(body)


def test_maintenance_runs_on_the_pools_loop(pg):
    async def body():
        pool = make(pg, min_size=2, max_size=3, max_lifetime=0.3, lifetime_jitter=0)
        await eventually(lambda: pool.stats()["idle"] == 2, "min_size opened")
        assert pool.stats()["requests_num"] == 0  # opened by maintenance, not a checkout
        await asyncio.sleep(0.4)
        # The checkout closes the expired ones (an awaited close step) and opens anew.
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        assert pool.stats()["closes_lifetime"] >= 1
        await eventually(lambda: pool.stats()["idle"] >= 2, "refilled to min_size")
        await eventually(lambda: pg.backend_count(pool.app) == pool.stats()["pool_size"], "same")
        await pool.close()
        await eventually(lambda: not pool._maintenance.is_alive(), "maintenance ended")
        assert pg.backend_count(pool.app) == 0

    run(body)


def test_a_pool_is_bound_to_one_event_loop(pg):
    pool = make(pg)

    async def use():
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")

    run(use)
    with pytest.raises(RuntimeError, match="bound to another event loop"):
        run(use)
    with pytest.raises(RuntimeError, match="no running event loop"):
        pool.getconn().send(None)


def test_a_broken_connection_is_replaced(pg):
    async def body():
        pool = make(pg, max_size=1)
        async with pool.connection() as conn:
            first = await pid(conn)
        pg.execute("SELECT pg_terminate_backend(%s)", (first,))
        await eventually(lambda: pg.backend_count(pool.app) == 0, "backend gone")
        async with pool.connection() as conn:  # the socket probe finds it dead
            assert await pid(conn) != first
        await settled(pool, pg)
        await pool.close()

    run(body)


@pytest.mark.fault
def test_while_the_server_is_down_checkouts_wait_on_the_loop_and_time_out_with_the_cause(
    pg_throwaway,
):
    """Connect failures that may pass are retried within the timeout, one probe at a time
    for the pool; the PoolTimeout carries the last one; once the server is back, the waiting
    checkouts get connections."""
    app = app_name("lido-aio-down")

    async def body():
        pool = AsyncPool(pg_throwaway.conninfo(tcp=True, application_name=app), max_size=2)
        pg_throwaway.stop("fast")
        results = await asyncio.gather(
            *(pool.getconn(timeout=0.8) for _ in range(4)), return_exceptions=True
        )
        assert all(isinstance(r, PoolTimeout) for r in results), results
        assert all(isinstance(r.__cause__, psycopg.OperationalError) for r in results)
        assert pool.stats()["connections_errors"] < 40  # paced probes, not a connect storm
        waiting = [asyncio.create_task(pool.getconn(timeout=20)) for _ in range(3)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(pg_throwaway.start)
        first = await waiting[0]
        second = await waiting[1]
        await pool.putconn(first)
        await pool.putconn(await waiting[2])
        await pool.putconn(second)
        s = pool.stats()
        assert (s["in_use"], s["requests_waiting"]) == (0, 0)
        assert s["pool_size"] <= 2
        await pool.close()

    run(body)


def test_a_step_that_fails_or_is_dropped_leaves_the_queue(pg):
    """The binding's steps on their own: a queued checkout whose future cannot be made
    (a loop without create_future), or whose step object is dropped unfinished (a
    coroutine never resumed), gives up its place; the connection returned later goes
    idle instead of to a waiter nobody serves."""
    from django_lido._lido import AsyncCheckout, _aio_checkout

    async def body():
        pool = make(pg, max_size=1)
        held = await pool.getconn()
        with pytest.raises(AttributeError, match="create_future"):
            _aio_checkout(pool, 5.0, object())
        assert pool.stats()["requests_waiting"] == 0
        co = _aio_checkout(pool, 5.0, asyncio.get_running_loop())
        assert type(co) is AsyncCheckout
        assert pool.stats()["requests_waiting"] == 1
        del co
        assert pool.stats()["requests_waiting"] == 0
        await pool.putconn(held)
        s = pool.stats()
        assert (s["idle"], s["in_use"]) == (1, 0)
        await pool.close()

    run(body)


EXIT_CHILD = """
import asyncio, sys, threading, time
from django_lido import AsyncPool
conninfo, mode, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])

async def busy(ready):
    pool = AsyncPool(conninfo, min_size=2, max_size=3, timeout=5)
    async def worker():
        while True:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
    tasks = [asyncio.create_task(worker()) for _ in range(20)]
    await asyncio.sleep(0.05)
    ready.set()
    await asyncio.gather(*tasks)

async def left_open():
    pool = AsyncPool(conninfo, min_size=2, max_size=3)
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")

if mode == "busy":
    ready = threading.Event()
    threading.Thread(target=lambda: asyncio.run(busy(ready)), daemon=True).start()
    assert ready.wait(10)
    time.sleep(delay)
else:
    asyncio.run(left_open())
print("exiting", flush=True)
"""


@pytest.mark.fault
@pytest.mark.parametrize("mode", ["busy", "left_open"])
def test_exit_with_the_pool_busy_on_a_loop_thread_or_left_open(pg, mode):
    """Interpreter exit while a loop thread is inside the pool's steps (the exit handler's
    gate applies to them as to threads), or with a pool nobody closed (closed at exit
    through the engine's sync close): a clean exit every time."""
    import subprocess
    import sys

    for i in range(6):
        p = subprocess.run(
            [sys.executable, "-c", EXIT_CHILD, pg.conninfo(), mode, str(0.02 * i)],
            capture_output=True,
            text=True,
            timeout=30,  # the watchdog
            cwd="/",
        )
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-2000:]
        assert "exiting" in p.stdout
        assert "Traceback" not in out and "Exception ignored" not in out, out[-2000:]


def test_a_dropped_connection_frees_its_slot_for_a_waiter(pg, caplog):
    import gc

    async def body():
        pool = make(pg, max_size=1)
        conn = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn())
        await eventually(lambda: pool.stats()["requests_waiting"] == 1, "queued")
        del conn
        gc.collect()
        await pool.putconn(await waiter)  # the slot went to the waiter, who connected
        s = pool.stats()
        assert s["connections_leaked"] == 1
        assert (s["in_use"], s["pool_size"]) == (0, 1)
        await pool.close()

    run(body)
    assert "dropped by its holder" in caplog.text


def test_the_holder_is_the_task_that_took_the_connection(pg: Any) -> None:
    """``connections()`` and reports name the asyncio task holding a connection, since
    every task of the loop shares one thread."""

    async def take(pool: AsyncPool, taken: asyncio.Event, done: asyncio.Event) -> None:
        async with pool.connection():
            taken.set()
            await done.wait()

    async def body() -> None:
        pool = make(pg, max_size=2, leak_threshold=0.2)
        taken, done = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(take(pool, taken, done), name="report-builder")
        await taken.wait()
        (row,) = pool.connections()
        assert row["holder"]["task"] == "report-builder"
        assert row["holder"]["thread"] == threading.current_thread().name
        assert row["holder"]["greenlet"] is None
        assert row["stack"][-1].endswith(".<locals>.take")
        await eventually(lambda: bool(pool.reports()), "a long-hold report")
        assert pool.reports()[0]["holder"]["task"] == "report-builder"
        done.set()
        await holder
        assert pool.connections() == []
        await pool.close()

    run(body)


def test_drain_replaces_every_connection_and_a_waiter_gets_a_fresh_one(pg):
    """As for ``Pool`` (test_pool_drain.py): the idle connections' closes are awaited now,
    the held one closes when it comes back, new checkouts get new server connections."""

    async def body():
        pool = make(pg, min_size=2, max_size=4)
        app = pool.app
        async with pool:
            await eventually(lambda: pool.stats()["idle"] == 2, "min_size opened")
            conns = [await pool.getconn() for _ in range(3)]
            held, held_pid = conns[0], await pid(conns[0])
            idle_pids = {await pid(c) for c in conns[1:]}
            for c in conns[1:]:
                await pool.putconn(c)
            old = idle_pids | {held_pid}
            assert server_pids(pg, app) == old

            await pool.drain()
            s = pool.stats()
            assert (s["closes_drained"], s["in_use"], s["pool_min"], s["pool_max"]) == (2, 1, 2, 4)
            await eventually(lambda: not server_pids(pg, app) & idle_pids, "idle ones gone")
            assert await pid(held) == held_pid, "the held one is not disturbed"
            await pool.putconn(held)
            assert pool.stats()["closes_drained"] == 3
            await eventually(lambda: held_pid not in server_pids(pg, app), "closed on return")
            await eventually(lambda: pool.stats()["idle"] == 2, "min_size refilled")
            fresh = [await pool.getconn() for _ in range(3)]
            assert not {await pid(c) for c in fresh} & old, "new connections"
            for c in fresh:
                await pool.putconn(c)
            await settled(pool, pg)

            # A waiter on a full pool gets a fresh connection when the drained one returns.
            pool.resize(0, 1)
            await eventually(lambda: pool.stats()["pool_size"] == 1, "shrunk")
            held = await pool.getconn()
            held_pid = await pid(held)
            await pool.drain()
            waiter = asyncio.create_task(pool.getconn(timeout=20))
            await eventually(lambda: pool.stats()["requests_waiting"] == 1, "queued")
            await pool.putconn(held)
            conn = await waiter
            assert await pid(conn) != held_pid
            await pool.putconn(conn)
            await settled(pool, pg)
            assert pool.stats()["closes_drained"] == 4

    run(body)


def test_a_task_cancelled_while_holding_a_connection_leaks_it_visibly(pg: Any) -> None:
    """The holder record names the task without keeping it: a cancelled task (its traceback
    keeps the frame that kept the connection) is collected, and the slot comes back as a
    leak rather than staying taken until the pool closes."""
    import gc

    async def body() -> None:
        pool = make(pg, max_size=1)
        taken = asyncio.Event()

        async def hold() -> None:
            conn = await pool.getconn()  # never given back
            taken.set()
            await asyncio.sleep(30)
            await pool.putconn(conn)

        task = asyncio.create_task(hold())
        await taken.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task
        gc.collect()
        await eventually(lambda: pool.stats()["in_use"] == 0, "the slot back")
        assert pool.stats()["connections_leaked"] == 1
        await pool.putconn(await pool.getconn(timeout=5))
        await pool.close()

    run(body)
