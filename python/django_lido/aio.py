"""``AsyncPool``: the pool for asyncio and async drivers (psycopg's ``AsyncConnection``), on
the same engine as ``Pool``.

A checkout that has to wait awaits an asyncio future, which the engine resolves from
whichever thread gave the connection back (``loop.call_soon_threadsafe``, or directly on
the loop's own thread). The driver calls (connect, the round-trip check, rollback, reset,
close) are awaited: ``getconn`` here is a coroutine that drives the binding's small steps
(``_lido.AsyncCheckout``), each of which says what to await next. Whatever a step holds
(a place in the queue, an open permit, a connection being checked or cleaned) is given
back if the awaiting task is cancelled. See docs/async.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from django_lido import lifecycle, reports
from django_lido._lido import (
    AsyncCheckout,
    AsyncClose,
    AsyncPermit,
    AsyncReturn,
    Maintainer,
    PoolCore,
    _aio_checkout,
    _aio_close,
    _aio_drain,
    _aio_maintain,
    _aio_next_round,
    _aio_putconn,
)
from django_lido.drivers import Conn, Driver, driver_for
from django_lido.errors import PoolClosed
from django_lido.options import PoolOptions
from django_lido.pool import (
    _check_hooks,
    _error_logger,
    _pool_name,
    _pool_options,
    _reporting,
    _takes_timeout,
    maintenance_loop,
)

logger = logging.getLogger("django_lido.pool")

# The steps AsyncCheckout asks to await (crates/lido-python/src/aio_checkout.rs).
_DONE, _CHECK, _CONNECT, _WAIT, _CLOSE = range(5)

AsyncConnect = Callable[[float], Awaitable[Conn]]


_running_loop = asyncio.get_running_loop


def _wake(fut: asyncio.Future[None]) -> None:
    """What the engine's wake runs on the loop: the waiting task goes on."""
    if not fut.done():
        fut.set_result(None)


async def _awaited(result: object) -> object:
    """``result``, awaited if the hook returned an awaitable (hooks may be sync or async)."""
    if inspect.isawaitable(result):
        return await result
    return result


@dataclass(frozen=True)
class AsyncDriver:
    """The awaited driver calls of an async driver."""

    rollback: Callable[[Conn], Awaitable[object]]
    check: Callable[[Conn], Awaitable[object]]
    close: Callable[[Conn], Awaitable[object]]


async def _psycopg_check(conn: Conn) -> None:
    # The cheapest round trip, outside a transaction (the connection is idle here).
    if conn.autocommit:
        await conn.execute("")
        return
    await conn.set_autocommit(True)
    try:
        await conn.execute("")
    finally:
        await conn.set_autocommit(False)


async def _rollback(conn: Conn) -> None:
    await _awaited(conn.rollback())


async def _close(conn: Conn) -> None:
    await _awaited(conn.close())


PSYCOPG_ASYNC = AsyncDriver(rollback=_rollback, check=_psycopg_check, close=_close)
# Another async DB-API-like driver: a rollback is its round trip.
GENERIC_ASYNC = AsyncDriver(rollback=_rollback, check=_rollback, close=_close)


def async_driver(conn: Conn) -> AsyncDriver:
    root = (type(conn).__module__ or "").partition(".")[0]
    return PSYCOPG_ASYNC if root == "psycopg" else GENERIC_ASYNC


def _close_now(conn: Conn) -> None:
    """The engine's sync close, for the paths where nothing can be awaited (a task
    cancelled mid-step, the pool garbage-collected): psycopg's ``AsyncConnection.close()``
    is ``PQfinish``, which does not block. Another driver's coroutine cannot run here, so
    the connection closes when it is freed."""
    pgconn = getattr(conn, "pgconn", None)
    if pgconn is not None:
        pgconn.finish()
        return
    result = conn.close()
    if inspect.iscoroutine(result):
        result.close()


def _not_here(conn: Conn) -> None:
    raise RuntimeError("an AsyncPool awaits this driver call; the engine never makes it")


def sync_side(conn: Conn) -> Driver:
    """What the engine is given as the driver of an async connection: the status and
    fileno hooks as for sync connections, and a close it can call without awaiting."""
    return replace(driver_for(conn), rollback=_not_here, check=_not_here, close=_close_now)


def _no_sync_connect(time_left: float) -> Conn:
    raise RuntimeError("an AsyncPool opens its connections on its event loop")


class _Io:
    """An AsyncPool's awaited driver calls, shared with its maintenance rounds (which must
    not keep the pool alive)."""

    def __init__(
        self,
        connect: AsyncConnect,
        check: Callable[[Conn], object] | None,
        reset: Callable[[Conn], object] | None,
        name: str,
    ) -> None:
        self.connect_hook = connect
        self.check_hook = check
        self.reset = reset
        self.report = _error_logger(name)

    async def connect(self, seconds: float) -> Conn:
        # Bounded like the whole checkout, also for a connect that takes no timeout.
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                return await self.connect_hook(seconds)
        except TimeoutError:
            pass
        # Raised outside the handler, with no context: the pool keeps the last connect
        # error, and the cancelled connect's frames (its half-open connection with them)
        # must not be kept alive by it.
        raise TimeoutError(f"connection timeout expired ({seconds:.3f} s)")

    async def check(self, conn: Conn, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                if self.check_hook is not None:
                    await _awaited(self.check_hook(conn))
                else:
                    await async_driver(conn).check(conn)
        except Exception:
            return False
        return True

    async def clean(self, r: AsyncReturn, conn: Conn) -> None:
        """Rolls back what the holder left open and runs the reset hook, then gives the
        connection back to the engine."""
        ok = False
        try:
            rollback = r.rollback
            if rollback is not None:
                if rollback:
                    await async_driver(conn).rollback(conn)
                ok = True
                if self.reset is not None:
                    try:
                        await _awaited(self.reset(conn))
                    except Exception as e:
                        self.report("resetting a returned connection", e)
                        ok = False
        except Exception:
            ok = False
        except BaseException:
            r.abandon()
            raise
        closing = r.cleaned(ok)
        if closing is not None:
            await self.close(closing)

    def open_in_background(
        self, connecting: asyncio.Task[Conn], permit: AsyncPermit, t0: float
    ) -> None:
        """A connect whose task was cancelled ends here: its connection goes to the pool
        (the first waiter, or idle) and its slot stays taken until then."""

        def opened(task: asyncio.Task[Conn]) -> None:
            if task.cancelled():
                return  # the permit is given back unused as it is dropped
            failure = task.exception()
            if failure is not None:
                permit.failed(failure)
                self.report("opening a connection for a cancelled checkout", failure)
                return
            try:
                h = permit.opened(task.result(), time.monotonic() - t0)
            except Exception as e:
                self.report("registering a new connection", e)
                return
            if h is not None:
                _background(self.close(h))

        connecting.add_done_callback(opened)

    async def close(self, h: AsyncClose) -> None:
        conn = h.conn
        try:
            await async_driver(conn).close(conn)
        except Exception as e:
            self.report("closing a connection", e)
        except BaseException:
            h.abandon()
            raise
        finally:
            h.done()


# Tasks started for the pool's own work, kept here until done (the loop keeps only weak
# references to tasks).
_tasks: set[asyncio.Task[None]] = set()


def _background(work: Awaitable[None]) -> None:
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class AsyncPool(PoolCore):
    """A pool of async connections (psycopg's ``AsyncConnection``), used from one event
    loop.

    ``connect`` is a libpq connection string (psycopg opens ``AsyncConnection``s, with the
    same network settings as ``Pool``) or a callable returning a connection or an
    awaitable of one; it is given ``timeout=`` (the seconds left) if it takes it. The
    options, errors and statistics are ``Pool``'s; ``check``, ``configure`` and ``reset``
    may be sync or async.

    The pool belongs to the event loop it is first used on (or created in): using it from
    another loop raises ``RuntimeError``, since its waiters' futures and its connections
    belong to that loop.
    """

    _loop: asyncio.AbstractEventLoop | None
    _io: _Io
    _reports: reports.Ring
    _timeout: float
    _maintenance: threading.Thread | None
    _at_exit: _AtExit

    def __new__(
        cls,
        connect: Callable[..., Any] | str,
        *,
        name: str | None = None,
        check: Callable[[Conn], object] | None = None,
        configure: Callable[[Conn], object] | None = None,
        reset: Callable[[Conn], object] | None = None,
        options: PoolOptions | None = None,
        **kwargs: Any,
    ) -> AsyncPool:
        options = _pool_options(options, kwargs)
        _check_hooks(connect, check=check, configure=configure, reset=reset)
        opener = _psycopg_connect(connect) if isinstance(connect, str) else _timed(connect)
        name = _pool_name(name)
        if configure is not None:
            opener = _configured(opener, configure)
        self = super().__new__(
            cls,
            _no_sync_connect,
            sync_side,
            name=name,
            options=options,
            **_reporting(ring := reports.Ring(name, options)),
        )
        self._reports = ring
        self._io = _Io(opener, check, reset, name)
        self._timeout = float(options["timeout"])
        self._loop = None
        self._maintenance = None
        self._at_exit = _AtExit(self)
        # Published as Pools are (lifecycle.py holds its proxy, not the pool).
        from django_lido.observe import publish

        publish.publish_pool(self)
        lifecycle.register(self._at_exit)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self  # bound at the first use
        self._bind(loop)
        return self

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        m = self._maintainer()
        t = threading.Thread(
            target=_maintain_forever,
            args=(m, loop, _Rounds(m, self._io, self._timeout), self.name),
            name=f"lido-{self.name}-maintenance",
            daemon=True,
        )
        t.start()
        self._maintenance = t

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        loop = _running_loop()
        if loop is not self._loop:
            self._bind_to(loop)
        return loop

    def _bind_to(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            raise RuntimeError(
                f"AsyncPool {self.name!r} is bound to another event loop: its waiters and "
                f"connections belong to the loop it was first used on; make one pool per "
                f"loop (e.g. inside each asyncio.run()) and close it before its loop ends"
            )
        self._bind(loop)

    async def getconn(self, timeout: float | None = None) -> Conn:
        """Takes a connection, waiting up to ``timeout`` seconds (default: the pool's) on
        the event loop."""
        loop = _running_loop()  # the hot path: _loop_now() inlined
        if loop is not self._loop:
            self._bind_to(loop)
        co = _aio_checkout(self, timeout, loop)
        if type(co) is not AsyncCheckout:
            return co
        return await self._drive(co, loop)

    async def _drive(self, co: AsyncCheckout, loop: asyncio.AbstractEventLoop) -> Conn:
        io = self._io
        step, arg = co.pending
        try:
            while step != _DONE:
                if step == _WAIT:
                    fut, seconds = arg
                    timer = loop.call_later(seconds, _wake, fut)
                    try:
                        await fut
                    finally:
                        timer.cancel()
                    step, arg = co.woke()
                elif step == _CONNECT:
                    t0 = time.monotonic()
                    connecting = loop.create_task(io.connect(arg))
                    try:
                        conn = await asyncio.shield(connecting)
                    except Exception as e:
                        step, arg = co.connect_error(e)
                    except BaseException:
                        permit = co.detach_permit()
                        if permit is not None:
                            io.open_in_background(connecting, permit, t0)
                        raise
                    else:
                        step, arg = co.connected(conn, time.monotonic() - t0)
                elif step == _CHECK:
                    conn, seconds = arg
                    step, arg = co.checked(await io.check(conn, seconds))
                else:
                    await io.close(arg)
                    step, arg = co.resume()
        except BaseException:
            co.abandon()
            raise
        return arg

    async def putconn(self, conn: Conn) -> None:  # type: ignore[override]
        """Gives a connection back: rolled back, reset, then kept, handed on, or closed."""
        if _running_loop() is not self._loop:
            self._bind_to(_running_loop())
        r = _aio_putconn(self, conn, self._io.reset is not None)
        if r is None:
            return
        if type(r) is AsyncClose:
            await self._io.close(r)
        else:
            await self._io.clean(r, conn)

    def reports(self) -> list[dict[str, Any]]:
        """The last reports this pool made (long holds, leaks, idle transactions), oldest
        first, at most ``reports.KEPT``."""
        return self._reports.list()

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Conn]:
        """A connection for the block: committed at a normal exit, rolled back (by the
        return) if the block raises, and returned to the pool either way."""
        conn = await self.getconn(timeout)
        try:
            yield conn
            await _awaited(conn.commit())
        finally:
            await self.putconn(conn)

    async def close(self, timeout: float = 1.0) -> None:  # type: ignore[override]
        """Closes the pool: waiters get ``PoolClosed``, idle connections close now and
        those in use when they come back. Waits up to ``timeout`` for the maintenance
        thread to end, without blocking the loop."""
        for h in _aio_close(self):
            await self._io.close(h)
        t = self._maintenance
        deadline = time.monotonic() + timeout
        while t is not None and t.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def drain(self) -> None:  # type: ignore[override]
        """Replaces every connection without closing the pool, as ``Pool.drain()`` does:
        the idle connections are closed now, awaited on the loop; those in use close when
        they come back."""
        self._loop_now()
        for h in _aio_drain(self):
            await self._io.close(h)

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """For code written for psycopg_pool: binds the pool to the running loop and, with
        ``wait``, opens ``min_size`` connections now."""
        self._loop_now()
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} is closed and cannot be reopened")
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float | None = None) -> None:
        """Opens connections now until ``min_size`` are open (they then sit idle)."""
        held = []
        try:
            while (s := self.stats())["pool_size"] < s["pool_min"]:
                held.append(await self.getconn(timeout))
        finally:
            for conn in held:
                await self.putconn(conn)

    async def __aenter__(self) -> AsyncPool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _AtExit:
    """An AsyncPool as lifecycle.py sees it: closed at interpreter exit with the engine's
    sync close (no loop is left to await on then; psycopg's close is a ``PQfinish``), as
    ``Pool``s are. In a forked child it stays empty: its loop and maintenance thread are
    the parent's. In the parent it keeps no idle connections, as ``Pool``s do, closed
    with the same sync close."""

    def __init__(self, pool: AsyncPool) -> None:
        self._pool = weakref.ref(pool)

    def _after_fork_in_child(self) -> None:
        pass

    def _after_fork_in_parent(self) -> None:
        pool = self._pool()
        if pool is not None:
            PoolCore._after_fork_in_parent(pool)

    def close(self, timeout: float = 1.0) -> None:
        pool = self._pool()
        if pool is None:
            return
        PoolCore.close(pool)
        # At exit (timeout 0) its maintenance thread, woken by the close, parks for good
        # instead of taking the GIL back (the binding's exit.rs).
        t = pool._maintenance
        if t is not None and t is not threading.current_thread():
            t.join(timeout)


class _Rounds:
    """One maintenance round, run on the pool's loop: expired and stale idle connections
    closed, connections opened up to ``min_size``, long holds reported."""

    def __init__(self, m: Maintainer, io: _Io, timeout: float) -> None:
        self.m, self.io, self.timeout = m, io, timeout

    async def __call__(self) -> tuple[float, bool] | None:
        plan = _aio_maintain(self.m)
        if plan is None:
            return None
        closes, permits, due = plan
        for h in closes:
            await self.io.close(h)
        failed = False
        permits.reverse()
        while permits and not failed:
            failed = not await self._open(permits.pop())
        permits.clear()  # untried after a failure: given back
        return _aio_next_round(self.m, failed, due), failed

    async def _open(self, permit: AsyncPermit) -> bool:
        t0 = time.monotonic()
        try:
            conn = await self.io.connect(self.timeout)
        except Exception as e:
            permit.failed(e)
            self.io.report("opening a connection to keep min_size", e)
            return False
        try:
            h = permit.opened(conn, time.monotonic() - t0)
        except Exception as e:
            self.io.report("registering a new connection", e)
            return False
        if h is not None:
            await self.io.close(h)
        return True


def _maintain_forever(
    m: Maintainer, loop: asyncio.AbstractEventLoop, rounds: _Rounds, name: str
) -> None:
    """The maintenance thread of an AsyncPool: it waits on the engine as ``Pool``'s does,
    and runs each round as a coroutine on the pool's loop, where the driver calls are
    awaited. It ends when the pool closes or its loop does."""

    def one_round() -> tuple[float, bool] | None:
        work = rounds()
        try:
            fut = asyncio.run_coroutine_threadsafe(work, loop)
        except RuntimeError:
            work.close()
            return None  # the loop is closed
        return _round_result(fut, loop)

    maintenance_loop(m, one_round, name)


def _round_result(
    fut: concurrent.futures.Future[tuple[float, bool] | None], loop: asyncio.AbstractEventLoop
) -> tuple[float, bool] | None:
    while True:
        try:
            return fut.result(timeout=1.0)
        except concurrent.futures.TimeoutError:
            if loop.is_closed():
                fut.cancel()
                return None
        except concurrent.futures.CancelledError:
            return None if loop.is_closed() else (1.0, True)


def _timed(connect: Callable[..., Any]) -> AsyncConnect:
    """The awaited connect (seconds left -> connection) for a user's callable."""
    takes_timeout = _takes_timeout(connect)

    async def timed(time_left: float) -> Conn:
        if takes_timeout:
            return await _awaited(connect(timeout=time_left))
        return await _awaited(connect())

    return timed


def _configured(connect: AsyncConnect, configure: Callable[[Conn], object]) -> AsyncConnect:
    async def open_and_configure(time_left: float) -> Conn:
        conn = await connect(time_left)
        try:
            await _awaited(configure(conn))
        except BaseException:
            _close_now(conn)
            raise
        return conn

    return open_and_configure


def _psycopg_connect(conninfo: str) -> AsyncConnect:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from django_lido.drivers.postgres import libpq_connect_params, restore_user_timeout

    given = conninfo_to_dict(conninfo)

    async def connect(time_left: float) -> Conn:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, **libpq_connect_params(given, time_left)
        )
        try:
            restore_user_timeout(conn, given)
        except BaseException:
            await conn.close()
            raise
        return conn

    return connect
