"""``Pool``: a connection pool for any DB-API driver, on the Rust engine.

Checkout and return (``getconn``/``putconn``) are inherited from the Rust core, so they run
no Python frame of ours; this module adds option handling, hooks, the maintenance thread
and conveniences.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django_lido import _green, lifecycle, reports
from django_lido._lido import Maintainer, PoolCore
from django_lido.drivers import Conn, driver_for, transient_error
from django_lido.errors import PoolClosed
from django_lido.options import PoolOptions

logger = logging.getLogger("django_lido.pool")


_names = iter(range(1, 1 << 62))


def _maintain_forever(m: Maintainer, name: str) -> None:
    """The maintenance thread: sleeps on the engine until work is due, then does it."""
    maintenance_loop(m, m.run, name)


def maintenance_loop(
    m: Maintainer, one_round: Callable[[], tuple[float, bool] | None], name: str
) -> None:
    """Waits on the engine until maintenance is due, then runs ``one_round``, which returns
    (seconds until the next, opens failed) or None once the pool (or its loop) is closed.
    Ends then, or quietly on the ``PoolClosed`` that interpreter exit raises in threads
    inside a pool call."""
    delay, pause = 0.0, False
    try:
        while m.wait(delay, pause):
            try:
                result = one_round()
            except PoolClosed:
                raise
            except Exception:
                logger.exception("pool %r: maintenance failed", name)
                result = (1.0, True)
            if result is None:
                return
            delay, pause = result
    except PoolClosed:
        return


class Pool(PoolCore):
    """A pool of DB-API connections.

    ``connect`` is a callable returning a new connection, or a libpq connection string
    (then psycopg 3 opens the connections, with TCP keepalives and a TCP user timeout
    unless the string sets them). A callable that takes a ``timeout`` keyword is given the
    seconds left to the checkout's deadline, and should not connect for longer; one that
    takes no argument is called without. A failed connect that the driver calls transient
    (the server down, restarting or unreachable) is retried within the checkout's
    ``timeout``, one connect at a time for the pool; others are raised at once.

    The pool options (sizes, times, ``probe``) are given as keywords or, checked ahead, as
    ``options=PoolOptions(...)``;
    ``check``, ``configure``, ``reset`` and ``name`` are hooks. Every option, its default
    and what it allows: the README's table, or ``django_lido.options``.

    Returned connections are rolled back if a transaction is open or failed. A connection
    dropped by its holder without ``putconn()`` frees its slot and is logged as leaked; one
    held longer than ``leak_threshold`` is logged once, with the thread and the stack that
    took it, and again when it comes back. ``connections()`` shows every connection lent
    out, ``reports()`` the last reports made (see ``django_lido.reports``).
    """

    _maintenance: threading.Thread | _green.RealThread | None
    _reports: reports.Ring

    def __new__(
        cls,
        connect: Callable[[], Conn] | str,
        *,
        name: str | None = None,
        check: Callable[[Conn], object] | None = None,
        configure: Callable[[Conn], object] | None = None,
        reset: Callable[[Conn], object] | None = None,
        options: PoolOptions | None = None,
        **kwargs: Any,
    ) -> Pool:
        options = _pool_options(options, kwargs)
        _check_hooks(connect, check=check, configure=configure, reset=reset)
        timed = _psycopg_connect(connect) if isinstance(connect, str) else _timed(connect)
        name = _pool_name(name)
        opener = timed if configure is None else _configured(timed, configure)
        self = super().__new__(
            cls,
            opener,
            driver_for,
            name=name,
            check=check,
            reset=reset,
            options=options,
            **_reporting(ring := reports.Ring(name, options)),
        )
        self._reports = ring
        self._maintenance = None
        self._start_maintenance()
        lifecycle.register(self)
        return self

    def _start_maintenance(self) -> None:
        if _green.eventlet_patched():
            # Its green thread would block the process in the engine's waits; the first
            # checkout raises, saying eventlet is not supported.
            self._maintenance = None
            return
        if _green.threading_patched():
            # Under gevent a threading.Thread is a greenlet: its waits in the engine would
            # block the hub. A real OS thread keeps the maintenance (its connects included,
            # even with a driver gevent cannot make cooperative) off the hub.
            self._maintenance = _green.real_thread(
                _maintain_forever,
                (self._maintainer(), self.name),
                f"lido-{self.name}-maintenance",
            )
            return
        t = threading.Thread(
            target=_maintain_forever,
            args=(self._maintainer(), self.name),
            name=f"lido-{self.name}-maintenance",
            daemon=True,
        )
        t.start()
        self._maintenance = t

    def close(self, timeout: float = 1.0) -> None:
        """Closes the pool: waiters get ``PoolClosed``, idle connections close now and
        those in use when they come back. Waits up to ``timeout`` for the maintenance
        thread to end."""
        super().close()
        t = self._maintenance
        if t is not None and t is not threading.current_thread() and not _in(t):
            t.join(timeout)

    def drain(self) -> None:
        """Replaces every connection without closing the pool (after a failover, a password
        rotation, a server setting changed): idle connections close now; those in use close
        when they come back, and their holders are not disturbed meanwhile; those being
        opened serve the checkout they were opened for, then close when they come back.
        Slots freed go to waiters, who open fresh connections, and the maintenance thread
        opens ``min_size`` anew. The sizes stay; each close counts as ``closes_drained``.
        A closed pool is left alone."""
        super().drain()

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """For code written for psycopg_pool (Django's stock backend calls it before each
        checkout): a pool is open from the start, so this only waits for ``min_size``
        connections when ``wait`` is true. A closed pool cannot be reopened."""
        if self.closed:
            raise PoolClosed(f"pool {self.name!r} is closed and cannot be reopened")
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float | None = None) -> None:
        """Opens connections now until ``min_size`` are open (they then sit idle)."""
        held = []
        try:
            while (s := self.stats())["pool_size"] < s["pool_min"]:
                held.append(self.getconn(timeout))
        finally:
            for conn in held:
                self.putconn(conn)

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Conn]:
        """A connection for the block: committed at a normal exit, rolled back (by the
        return) if the block raises, and returned to the pool either way."""
        conn = self.getconn(timeout)
        try:
            yield conn
            conn.commit()
        finally:
            self.putconn(conn)

    def reports(self) -> list[dict[str, Any]]:
        """The last reports this pool made (long holds, leaks, idle transactions), oldest
        first, at most ``reports.KEPT``."""
        return self._reports.list()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._start_maintenance()


def _pool_options(options: PoolOptions | None, kwargs: dict[str, Any]) -> PoolOptions:
    """The options given as keywords, or as ``options=PoolOptions(...)``."""
    if options is None:
        return PoolOptions(**kwargs)
    if kwargs:
        raise TypeError(
            f"give pool options as keywords or as options=PoolOptions(...), not both "
            f"(got options= and {', '.join(sorted(kwargs))})"
        )
    if not isinstance(options, PoolOptions):
        raise TypeError(f"options must be a PoolOptions, not {options!r}")
    return options


def _check_hooks(connect: object, **hooks: object) -> None:
    if not isinstance(connect, str) and not callable(connect):
        raise TypeError(f"connect must be a callable or a connection string, not {connect!r}")
    for hook_name, hook in hooks.items():
        if hook is not None and not callable(hook):
            raise TypeError(f"{hook_name} must be callable or None, not {hook!r}")


def _pool_name(name: str | None) -> str:
    return name if name is not None else f"pool-{next(_names)}"


def _reporting(ring: reports.Ring) -> dict[str, Any]:
    """The engine's hooks that report (leaks, long holds, idle transactions into ``ring``;
    errors with no caller) and tell a connect failure that may pass."""
    return {
        "on_report": ring.report,
        "on_error": _error_logger(ring.name),
        "transient": transient_error,
    }


def _in(t: threading.Thread | _green.RealThread) -> bool:
    """Whether the calling code runs in maintenance thread ``t``."""
    return isinstance(t, _green.RealThread) and t.is_current()


def _takes_timeout(connect: Callable[..., Conn]) -> bool:
    try:
        params = inspect.signature(connect).parameters.values()
    except (TypeError, ValueError):
        return False
    # Only a parameter named so: ``**kwargs`` often goes on to the driver, which would
    # take ``timeout`` for a connection parameter.
    return any(
        p.name == "timeout" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
    )


def _timed(connect: Callable[..., Conn]) -> Callable[[float], Conn]:
    """The engine's connect callback (seconds left -> connection) for a user's callable."""
    if _takes_timeout(connect):

        def connect_with_timeout(time_left: float) -> Conn:
            return connect(timeout=time_left)

        return connect_with_timeout

    def connect_without(time_left: float) -> Conn:
        return connect()

    return connect_without


def _configured(
    connect: Callable[[float], Conn], configure: Callable[[Conn], object]
) -> Callable[[float], Conn]:
    def open_and_configure(time_left: float) -> Conn:
        conn = connect(time_left)
        try:
            configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    return open_and_configure


def _psycopg_connect(conninfo: str) -> Callable[[float], Conn]:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from django_lido.drivers.postgres import libpq_connect_params, restore_user_timeout

    given = conninfo_to_dict(conninfo)

    def connect(time_left: float) -> Conn:
        conn = psycopg.connect(conninfo, **libpq_connect_params(given, time_left))
        try:
            restore_user_timeout(conn, given)
        except BaseException:
            conn.close()
            raise
        return conn

    return connect


def _error_logger(name: str) -> Callable[[str, BaseException], None]:
    def on_error(what: str, exc: BaseException) -> None:
        logger.warning("pool %r: error %s: %s", name, what, exc, exc_info=exc)

    return on_error
