"""The glue between a Django ``DatabaseWrapper`` and a shared ``Pool``.

Django "connects" when a thread first needs the database and "closes" at the end of the
request (``close_old_connections``) or on an explicit ``close()``. With this mixin,
connecting takes a connection from the process's pool for these settings and closing gives
it back; nothing else in Django's connection handling changes.

A vendor backend mixes ``PooledDatabaseMixin`` in front of Django's stock
``DatabaseWrapper`` and implements the ``_lido_*`` hooks: how to open and set up a physical
connection, which parameters make two pools different, and its reset policy; and says with
``lido_stock_uses_pool`` whether Django's stock ``get_new_connection`` already takes from
``self.pool``.

This module is Django's long way to a connection; once a wrapper has gone it, its later
connects take the short path of ``fast_connect``, the mixin's base.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper

from django_lido.backends import holders, pool_options, registry, thread_end
from django_lido.backends.fast_connect import FastConnectMixin, timeout_class
from django_lido.backends.pool_options import PoolSettings, pool_settings
from django_lido.backends.session import hold_cursors_closed
from django_lido.backends.statements import HookedCursorWrapper, hooked
from django_lido.drivers import Conn
from django_lido.errors import PoolTimeout
from django_lido.pool import Pool


def asgi_request_context() -> object | None:
    """The ``asgiref`` thread-sensitive context this code runs in (Django's ASGI handler
    makes one per request; its sync code runs in that context's own thread), else None."""
    try:
        from asgiref.sync import SyncToAsync
    except ImportError:  # pragma: no cover - Django requires asgiref
        return None
    var = getattr(SyncToAsync, "thread_sensitive_context", None)
    return var.get(None) if var is not None else None


class Opener(NamedTuple):
    """How a pool opens a physical connection (``connect(timeout=seconds left)``), sets it
    up once (the pool closes it if that fails) and resets it on return: ``Pool``'s
    connect, configure and reset."""

    connect: Callable[..., Conn]
    configure: Callable[[Conn], object]
    reset: Callable[[Conn], object] | None


def freeze(params: Mapping[str, Any]) -> tuple[tuple[str, Hashable], ...]:
    """A hashable, order-independent form of connection parameters."""
    out = []
    for key, value in params.items():
        try:
            hash(value)
        except TypeError:
            value = repr(value)
        out.append((key, value))
    return tuple(sorted(out))


class PooledDatabaseMixin(FastConnectMixin):
    """Makes a stock Django ``DatabaseWrapper`` take its connections from a pool.

    ``connection.pool`` is the ``django_lido.Pool`` these settings use (None when pooling
    is off with ``OPTIONS["pool"] = False``, and for Django's no-database connection).
    """

    # While ``get_new_connection`` runs: the pool Django's stock code must take from.
    _lido_next_pool: Pool | None = None
    # Set while Django's health check runs: a connection it closes is discarded.
    _lido_discard = False
    # Server-side cursors declared WITH HOLD on the current connection (PostgreSQL's
    # chunked_cursor); checked on return.
    _lido_hold_cursors: tuple[Any, ...] | list[Any] = ()

    # --- vendor hooks --------------------------------------------------------------------
    lido_vendor: str = ""
    # Whether Django's stock ``get_new_connection`` takes its connection from ``self.pool``
    # (Django's native pool protocol, as in its PostgreSQL backend). If not (MySQL), the
    # mixin takes the connection from the pool itself and the stock code opens only
    # unpooled connections.
    lido_stock_uses_pool: bool = True

    def _lido_target(self, conn_params: dict[str, Any]) -> registry.Target:
        raise NotImplementedError

    def _lido_key(self, conn_params: dict[str, Any]) -> Hashable:
        """What, besides the pool settings, tells two pools apart."""
        raise NotImplementedError

    def _lido_opener(self, conn_params: dict[str, Any], settings: PoolSettings) -> Opener:
        """How the pool for these parameters opens, sets up and resets its connections."""
        raise NotImplementedError

    # --- settings and pool look-up --------------------------------------------------------
    def _lido_settings(self) -> PoolSettings | None:
        options = self.settings_dict["OPTIONS"]
        pool = options.get("pool", True)
        # A copy of a dict, so that a change made in place is seen too.
        conn_max_age, test_run = self.settings_dict["CONN_MAX_AGE"], pool_options.test_run
        raw = (dict(pool) if isinstance(pool, dict) else pool, options.get("MAX_CONNS"),
               options.get("MIN_CONNS"), conn_max_age, test_run)  # fmt: skip
        cache = self._lido_cache
        if cache.settings_given == raw:
            return cache.settings
        settings = pool_settings(self.alias, options, conn_max_age, test_run)
        cache.settings_given, cache.settings = raw, settings
        return settings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The thread that makes a wrapper is the one Django gives it to.
        thread_end.watch(self)
        holders.install()

    def _lido_registry_key(self, conn_params: dict[str, Any], settings: PoolSettings) -> Hashable:
        return (type(self).__module__, self._lido_key(conn_params), settings.pool_key())

    def _lido_pool_for(self, conn_params: dict[str, Any]) -> Pool | None:
        """The pool for these parameters (created on first use), or None if pooling is off."""
        cache = self._lido_cache
        # The parameters object is the cached one while the settings, pool settings
        # included, are unchanged (get_connection_params): then so is the pool.
        pool = cache.pool
        if pool is not None and cache.pool_params is conn_params and not pool.closed:
            return pool
        if self.alias == NO_DB_ALIAS:
            return None
        settings = self._lido_settings()
        if settings is None:
            return None
        target = self._lido_target(conn_params)

        def create() -> Pool:
            opener = self._lido_opener(dict(conn_params), settings)
            return Pool(
                opener.connect,
                configure=opener.configure,
                name=settings.name or f"{self.alias}:{target.database}",
                check=settings.check,
                reset=opener.reset,
                options=settings.options,
            )

        pool = registry.get_or_create(
            self._lido_registry_key(conn_params, settings), target, create
        )
        if settings.open:
            # Outside the registry's lock: opening min_size connections may take a while.
            # A no-op once they are open.
            pool.wait()
        cache.pool_params, cache.pool = conn_params, pool
        return pool

    @property
    def pool(self) -> Pool | None:
        if self._lido_next_pool is not None:
            return self._lido_next_pool
        if self.alias == NO_DB_ALIAS or self._lido_settings() is None:
            return None
        return self._lido_pool_for(self.get_connection_params())

    # --- Django's hook points -------------------------------------------------------------
    def get_new_connection(self, conn_params: dict[str, Any]) -> Conn:
        pool = self._lido_pool_for(conn_params)
        try:
            if pool is not None and not self.lido_stock_uses_pool:
                conn = pool.getconn()
            else:
                # Django's stock code takes the connection from ``self.pool`` (Django's
                # native pool protocol: open(), getconn()), then does its set-up.
                self._lido_next_pool = pool
                try:
                    conn = super().get_new_connection(conn_params)
                finally:
                    self._lido_next_pool = None
        except PoolTimeout as exc:
            # The cause, if any, is the last connect failure (the server is down).
            raise timeout_class(self._lido_timeout_bases())(*exc.args) from exc.__cause__
        self._lido_conn_pool = pool
        if pool is not None:
            self._lido_lease = pool._lease(conn, self.lido_vendor)
        return conn

    def _close(self) -> None:
        conn = self.connection
        if conn is None:
            return
        pool = self._lido_conn_pool
        if pool is None:
            with self.wrap_database_errors:
                conn.close()
            return
        if self._lido_hold_cursors:
            if all(cursor.closed for cursor in self._lido_hold_cursors):
                hold_cursors_closed(conn)
            self._lido_hold_cursors = ()
        if self._lido_discard:
            # Closed first, the connection comes back to the pool broken and is dropped.
            with contextlib.suppress(Exception):
                conn.close()
        # The connection is the pool's again: never usable through this wrapper. (putconn
        # raises only for a connection that is not the pool's; it handles driver errors.)
        self.connection = None
        self._lido_conn_pool = self._lido_lease = None
        pool.putconn(conn)

    def _lido_thread_ended(self) -> None:
        """The thread this wrapper was made in ended (``thread_end``): its connection goes
        back to the pool (rolled back if a transaction was open), unless other threads may
        still use this wrapper (``inc_thread_sharing()``)."""
        conn, pool = self.connection, self._lido_conn_pool
        if conn is None or pool is None or self.allow_thread_sharing:
            return
        self.connection = None
        self._lido_conn_pool = self._lido_lease = None
        pool.putconn(conn)

    def _set_autocommit(self, autocommit: bool) -> None:
        super()._set_autocommit(autocommit)
        # A transaction begins (an outermost atomic block) or ends: the pool keeps when and
        # where, for its idle-in-transaction report.
        lease = self._lido_lease
        if lease is not None:
            lease.transaction(not autocommit)

    def commit(self) -> None:
        super().commit()
        self._lido_transaction_over()

    def rollback(self) -> None:
        super().rollback()
        self._lido_transaction_over()

    def _lido_transaction_over(self) -> None:
        # With autocommit off, the driver opens the next transaction with the next
        # statement: the pool's transaction clock restarts there, not at this commit.
        lease = self._lido_lease
        if lease is not None and not self.autocommit:
            lease.transaction_over()

    def make_cursor(self, cursor: Any) -> Any:
        # The statement hook (backends/statements.py): Django's cursor wrapper that also
        # shows each statement to ``statement_seen``.
        return HookedCursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor: Any) -> Any:
        # The stock backend's choice (PostgreSQL's logs copy() too), with the hook.
        return hooked(super().make_debug_cursor(cursor))

    def close_pool(self) -> None:
        """Closes the pool of this alias's current settings, if one is open; the next
        connect makes a new one. Connections in use close when they come back."""
        # Celery's Django fixup calls this around every task in a prefork child (after
        # close(), which gave the connection back) because Django's own pool is not
        # fork-safe; ours is (a child starts with empty pools, lifecycle.py), so there the
        # call is a no-op and the worker process keeps one pool across its tasks.
        if sys._getframe(1).f_globals.get("__name__") == "celery.fixups.django":
            return
        self._lido_cache.forget_pool()
        if self.alias == NO_DB_ALIAS:
            return
        settings = self._lido_settings()
        if settings is not None:
            conn_params = self.get_connection_params()
            registry.close(self._lido_registry_key(conn_params, settings))

    def close_if_unusable_or_obsolete(self) -> None:
        # Django's request start and end (``close_old_connections``). Under ASGI each
        # request's sync code runs in a thread of its own (Django's per-request
        # ``ThreadSensitiveContext``) that serves no later request, so a connection kept
        # for CONN_MAX_AGE would only wait there for the thread's end: it goes back now,
        # whatever CONN_MAX_AGE. Elsewhere (WSGI, threads) CONN_MAX_AGE applies as usual.
        super().close_if_unusable_or_obsolete()
        if self.connection is not None and asgi_request_context() is not None:
            self.close()

    def close_if_health_check_failed(self) -> None:
        # Django's pooled PostgreSQL backend skips this ("the pool only returns healthy
        # connections"), but a thread may keep its pooled connection across requests
        # (CONN_MAX_AGE > 0): then CONN_HEALTH_CHECKS applies as without a pool, and a
        # connection Django finds unusable is discarded, not given back to the pool.
        self._lido_discard = True
        try:
            BaseDatabaseWrapper.close_if_health_check_failed(self)
        finally:
            self._lido_discard = False
